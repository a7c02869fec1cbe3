"""`citycast demo` runs to completion as a user runs it, and leaves the WAV files it promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from citycast.media.markers import correlate_lag
from citycast.media.sources import read_audio


@pytest.mark.slow
def test_demo_runs_to_completion(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    p = subprocess.run(
        [sys.executable, "-m", "citycast", "demo", "--sites", "3", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "latency" in p.stdout + p.stderr
    clip = read_audio(Path(__file__).resolve().parents[1] / "src" / "citycast" / "assets" / "speech.opus")
    for i in (1, 2, 3):
        wav = out / f"site-{i}.wav"
        meta = json.loads((out / f"site-{i}.wav.json").read_text())
        assert meta["sample_rate"] == 48_000
        _, peak = correlate_lag(clip, read_audio(wav))
        assert peak > 0.5  # the site really played the clip, not just something
