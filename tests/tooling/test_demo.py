"""`citycast demo` runs to completion as a user runs it, and leaves the WAV files it promises."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console
from rich.table import Table

from citycast.bus.server import free_port
from citycast.media.sources import read_audio
from citycast.tooling.demo import print_whole
from citycast.tooling.markers import correlate_lag


@pytest.mark.slow
def test_demo_runs_to_completion(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "citycast",
            "demo",
            "--sites",
            "3",
            "--out",
            str(out),
            "--linger",
            "0",
            "--http",
            f"127.0.0.1:{free_port()}",
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    text = p.stdout + p.stderr
    assert "latency" in text
    assert "console at http://127.0.0.1:" in text and "password" in text
    # The output is a pipe, not a terminal: the result table is printed whole, not cut to 80 columns.
    for name in ("saddar-1", "clifton-1", "gulshan-iqbal-1"):
        assert str(out / f"{name}.wav") in text, text
    assert "…" not in text
    # The sites enrolled with one-time tokens and keep their own credentials, owner-only.
    creds = sorted((out / "sites").glob("*.json"))
    assert len(creds) == 3 and all(c.stat().st_mode & 0o077 == 0 for c in creds)
    clip = read_audio(Path(__file__).resolve().parents[2] / "src" / "citycast" / "assets" / "speech.opus")
    for name in ("saddar-1", "clifton-1", "gulshan-iqbal-1"):
        wav = out / f"{name}.wav"
        meta = json.loads((out / f"{name}.wav.json").read_text())
        assert meta["sample_rate"] == 48_000
        _, peak = correlate_lag(clip, read_audio(wav))
        assert peak > 0.5  # the site really played the clip, not just something


def test_result_table_is_printed_whole_when_the_output_is_not_a_terminal() -> None:
    sink = io.StringIO()
    console = Console(file=sink, width=80)  # what rich gives a pipe or a log file
    assert not console.is_terminal
    table = Table(title="what each loudspeaker played")
    for col in ("site", "clock offset", "clock rate", "DAC rate", "latency", "sync error", "match"):
        table.add_column(col, no_wrap=True)
    wav = "/var/tmp/a-rather-long-output-directory/for-the-demo/gulshan-iqbal-1.wav"
    table.add_row("gulshan-iqbal-1", "+312 ms", "-41.5 ppm", "+12.0 ppm", "81.2 ms", "+3.4 µs", "0.987", wav)
    print_whole(console, table)
    text = sink.getvalue()
    assert wav in text and "gulshan-iqbal-1 " in text and "+3.4 µs" in text and "0.987" in text
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) > 80
