"""The command line as a user meets it: help, key generation, clear errors instead of tracebacks."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from citycast.cli import app

runner = CliRunner()


def test_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("serve", "ingest", "site", "simulate", "probe", "demo", "bench", "keygen"):
        assert command in result.output


def test_keygen_writes_a_private_key_only_root_can_read(tmp_path: Path) -> None:
    result = runner.invoke(app, ["keygen", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    mode = stat.S_IMODE(os.stat(tmp_path / "ingest.key").st_mode)
    assert mode == 0o600
    assert (tmp_path / "trusted.keys").read_text().startswith("ed25519:")


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


def test_site_with_no_trusted_keys_is_a_clear_error(tmp_path: Path) -> None:
    p = run("site", "--trust", str(tmp_path / "missing.keys"), "--sink", "timed")
    assert p.returncode == 2
    assert "missing.keys" in p.stderr
    assert "Traceback" not in p.stderr


def test_serve_on_a_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        p = run("serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "hub"))
    assert p.returncode == 2
    assert "already in use" in p.stderr


def test_serve_with_a_bad_database_url_or_a_taken_http_port_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    from citycast.bus.server import free_port

    p = run("serve", "--db", "foo://x", "--data-dir", str(tmp_path / "a"), "--listen", f"127.0.0.1:{free_port()}")
    assert p.returncode == 2 and "unsupported database" in p.stderr and "Traceback" not in p.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        p = run("serve", "--http", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "b"),
                "--listen", f"127.0.0.1:{free_port()}")  # fmt: skip
    assert p.returncode == 2 and "could not listen" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
