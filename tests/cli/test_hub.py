"""`citycast serve` as a user meets it: taken ports, a bad database URL and malformed options are clear errors
before anything starts, and `serve --zone` still runs a city server, saying the command is now `citycast city`."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from citycast.bus.server import free_port
from citycast.cli import app

runner = CliRunner()


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "citycast", *args], capture_output=True, text=True, timeout=60)


def test_serve_on_a_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        p = run("serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "hub"))
    assert p.returncode == 2
    assert "already in use" in p.stderr


def test_serve_with_a_bad_database_url_or_a_taken_http_port_is_a_clear_error(tmp_path: Path) -> None:
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


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--listen", "4222"], "--listen wants HOST:PORT, got '4222'"),
        (["--http", "localhost"], "--http wants HOST:PORT, got 'localhost'"),
        (["--https", "0.0.0.0:x"], "--https wants HOST:PORT or off, got '0.0.0.0:x'"),
        (["--sip", ":5060"], "--sip wants HOST:PORT, got ':5060'"),
        (["--sip-register", "sip:a@trunk"], "--sip-register needs --sip HOST:PORT"),
        (["--sip", "127.0.0.1:5060", "--sip-register", "sip:a@trunk"], "needs --sip-password-file PATH"),
        (["--sip-trusted-trunk", "10.0.0.0/8", "--sip-trusted-trunk", "10.1.2.300"], "got '10.1.2.300'"),
        (["--sip-trusted-media", "trunk.example"], "--sip-trusted-media wants an IP address or CIDR"),
        (["--trusted-proxy", "::1/200"], "--trusted-proxy wants an IP address or CIDR, got '::1/200'"),
        (["--rtp-ports", "1000-2000"], "--rtp-ports wants LOW-HIGH within 1024-65535"),
        (["--allowed-origin", "console.example"], "--allowed-origin wants http(s)://HOST[:PORT]"),
    ],
)
def test_a_malformed_option_is_a_clear_error_before_anything_starts(tmp_path: Path, args: list[str], says: str) -> None:
    # Free ports and a short life, so that were a check missing the hub would start, stop and fail the test.
    safe = ["--listen", f"127.0.0.1:{free_port()}", "--http", f"127.0.0.1:{free_port()}", "--https", "off"]
    hub = ["serve", "--data-dir", str(tmp_path / "hub"), "--duration", "1", *safe]
    result = runner.invoke(app, [*hub, *args], env={"COLUMNS": "250"})
    assert result.exit_code == 2, result.output
    assert says in result.stderr
    assert not (tmp_path / "hub").exists()  # nothing started, nothing written


def test_a_bad_metrics_token_file_is_a_clear_error(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("short")
    safe = ["--listen", f"127.0.0.1:{free_port()}", "--http", f"127.0.0.1:{free_port()}", "--https", "off"]
    hub = ["serve", "--data-dir", str(tmp_path / "hub"), "--duration", "1", *safe, "--metrics-token-file"]
    result = runner.invoke(app, [*hub, str(token)], env={"COLUMNS": "250"})
    assert result.exit_code == 2 and "16 or more characters" in result.stderr
    result = runner.invoke(app, [*hub, str(tmp_path / "none")], env={"COLUMNS": "250"})
    assert result.exit_code == 2 and "cannot read" in result.stderr


def test_serve_zone_still_runs_the_city_server_and_points_to_citycast_city(tmp_path: Path) -> None:
    """The deprecated alias reaches the city server's own checks (here: a bundle that is not JSON)."""
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    bad.chmod(0o600)
    p = run("serve", "--zone", "north", "--city-bundle", str(bad), "--leaf-remote", "nats://127.0.0.1:1",
            "--listen", f"127.0.0.1:{free_port()}")  # fmt: skip
    assert p.returncode == 2, p.stderr
    assert "deprecated" in p.stderr and "citycast city --zone north" in p.stderr
    assert "bad.json" in p.stderr and "Traceback" not in p.stderr
