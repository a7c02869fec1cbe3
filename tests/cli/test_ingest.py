"""`citycast ingest` as a user meets it: a missing file, a file that is not audio or a bad key is a clear error,
not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from citycast.cli import app

runner = CliRunner()


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "citycast", *args], capture_output=True, text=True, timeout=60)


def test_ingest_of_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    assert runner.invoke(app, ["keygen", "--out", str(tmp_path)]).exit_code == 0
    p = run("ingest", str(tmp_path / "nope.mp3"), "--key", str(tmp_path / "ingest.key"))
    assert p.returncode == 2
    assert "no such file" in p.stderr
    assert "Traceback" not in p.stderr


def test_ingest_of_a_file_that_is_not_audio_is_a_clear_error(tmp_path: Path) -> None:
    assert runner.invoke(app, ["keygen", "--out", str(tmp_path)]).exit_code == 0
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF....not really a wave file" * 10)
    p = run("ingest", str(junk), "--key", str(tmp_path / "ingest.key"))
    assert p.returncode == 2
    assert "cannot decode" in p.stderr
    assert "Traceback" not in p.stderr


def test_ingest_with_a_bad_key_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "ingest.key"
    bad.write_text("not a key")
    os.chmod(bad, 0o600)
    p = run("ingest", "marker", "--key", str(bad))
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
