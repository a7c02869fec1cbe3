"""`citycast site` runs its agent in the same process re-executed without the command line's libraries."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from tests.helpers import fresh_interpreter, wait_until_sync

from citycast.bus.server import EmbeddedNats
from citycast.media.keys import generate_private_key, public_key_text
from citycast.media.pulse_sink import PulseSink
from citycast.site.main import decode, encode
from citycast.site.run import SiteOptions, build_site

# Mapped by the command line (Typer's coercion) or by PyAV: a running site must have neither.
NOT_MAPPED = ("pydantic_core", "libavcodec", "libavformat")


def _trust(tmp_path: Path) -> Path:
    path = tmp_path / "trusted.keys"
    path.write_text(public_key_text(generate_private_key().public_key()) + "\n")
    return path


def _maps(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return ""


def test_the_running_site_is_the_same_process_without_the_command_lines_libraries(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    argv = [sys.executable, "-m", "citycast", "site", "--name", "lean", "--nats", nats_server.url,
            "--trust", str(_trust(tmp_path)), "--sink", "timed", "--clock", "system",
            "--clock-memory", str(tmp_path / "clock.json")]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "NO_COLOR": "1"})
    try:
        # Re-executed in place: the pid stays, the command line becomes the site's runner, and the runner gets as
        # far as its event loop (numpy and uvloop mapped) before anything is checked.
        wait_until_sync(
            lambda: (
                b"citycast.site.main" in Path(f"/proc/{proc.pid}/cmdline").read_bytes()
                and all(lib in _maps(proc.pid) for lib in ("_multiarray_umath", "uvloop"))
            ),
            "the site to re-execute and start",
            timeout=30,
            detail=lambda: proc.poll(),
        )
        maps = _maps(proc.pid)
        assert not [lib for lib in NOT_MAPPED if lib in maps]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_bad_option_found_after_the_re_execution_is_the_same_clear_error(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "citycast", "site", "--trust", str(_trust(tmp_path)), "--sink", "loud:speaker",
            "--clock-memory", str(tmp_path / "clock.json")]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env={**os.environ, "NO_COLOR": "1"})
    assert done.returncode == 2
    said = " ".join(done.stderr.split())
    assert "error:" in said and "unknown sink spec 'loud:speaker'" in said
    assert "Traceback" not in done.stderr


def test_options_cross_as_json_and_credentials_are_read_again_from_their_file(tmp_path: Path) -> None:
    opts = SiteOptions(name="s", nats_url="nats://a:1", trust=tmp_path / "t.keys", wav=tmp_path / "out.wav",
                       nats_urls=["nats://a:1", "nats://b:2"], uplink_binds=["10.0.0.1"], duration=3.5)  # fmt: skip
    back, level = decode(encode(opts, 10))
    assert back == opts and level == 10
    assert isinstance(back.trust, Path) and isinstance(back.wav, Path) and back.fallback is None
    text = encode(opts).replace('"read_credentials": false', '"read_credentials": true')
    with pytest.raises(ValueError, match="names no file"):
        decode(text)
    for junk in ("", "[]", '{"log_level": 10}', '{"log_level": 10, "read_credentials": false, "bogus": 1}'):
        with pytest.raises(ValueError, match="not a site's options"):
            decode(junk)


def test_the_command_line_re_executes_before_loading_the_agents_libraries() -> None:
    """What `citycast site` imports before it re-executes itself is paid again at every start of a box (a power
    cut): the options, the uplinks' parsing, the credentials and the exec itself load neither numpy nor the bus."""
    code = (
        "import sys, citycast.cli.site\n"
        "from citycast.clock.memory import default_memory_path\n"
        "from citycast.site.enrol import SiteCredentials, default_path\n"
        "from citycast.site.main import exec_site\n"
        "from citycast.site.options import SiteOptions\n"
        "from citycast.site.uplink_spec import parse_uplinks\n"
        "print(sorted(m for m in ('numpy', 'nats', 'citycast.site.agent', 'av') if m in sys.modules))\n"
    )
    out = fresh_interpreter(code)
    assert out.strip() == "[]", out


def test_the_period_sets_how_much_audio_the_sink_takes_per_wake_up(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    wav = tmp_path / "played.wav"
    argv = [sys.executable, "-m", "citycast", "site", "--trust", str(_trust(tmp_path)), "--sink", "timed",
            "--wav", str(wav), "--period", "50", "--duration", "2", "--nats", nats_server.url, "--clock", "system",
            "--clock-memory", str(tmp_path / "clock.json")]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    meta = json.loads(wav.with_name(wav.name + ".json").read_text())
    assert meta["block"] == 2400  # 50 ms at 48 kHz
    assert meta["blocks"] >= 30  # it played (silence: no bus) for its two seconds, 20 blocks a second
    too_long = subprocess.run([*argv[:8], "--period", "500"], capture_output=True, text=True, timeout=60)
    assert too_long.returncode == 2 and "--period" in too_long.stderr and "Traceback" not in too_long.stderr


def test_the_period_reaches_a_pulse_sink_with_a_queue_to_match(tmp_path: Path) -> None:
    """`--period 50` through PulseAudio: 2400-sample blocks, and a queue of two blocks plus the sink's own 20 ms
    (with the old 40 ms queue ten such sites played up to 10 ms apart: tests/media/test_pulse_sink.py)."""
    opts = SiteOptions(name="s", nats_url="nats://127.0.0.1:9", trust=_trust(tmp_path), sink="pulse", period_ms=50)
    sink = build_site(opts).sink
    assert isinstance(sink, PulseSink) and sink.block == 2400 and sink.buffer_ms == 120
    sink = build_site(dataclasses.replace(opts, period_ms=10)).sink
    assert isinstance(sink, PulseSink) and sink.block == 480 and sink.buffer_ms == 40
