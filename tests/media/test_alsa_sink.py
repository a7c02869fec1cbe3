"""AlsaSink against real ALSA PCMs: PulseAudio's ALSA plugin on a private PulseAudio, PipeWire's on a private
PipeWire. This box has no sound card (no kernel ALSA devices), so a plugin PCM is the only real device there is;
the calls are the ones a Raspberry Pi's card answers (`snd_pcm_status`: timestamp and delay).

The DAC time the sink hands the renderer must be where the server really played the block: markers are played
and the server's monitor recorded with its timing (`MonitorRecorder` of the pulse bench), as for PulseSink.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from tests.helpers import need_binary, wait_until
from tests.media.marked_playback import MARKED, play_marked_to_alsa, wait_recorded_past
from tests.media.sink_faults import Silence, pulse_server_pid, seconds_until_a_frozen_server_fails

from citycast.clock.local import SkewedClock
from citycast.media.alsa_pcm import PcmStatus, monotonic_ns
from citycast.media.alsa_sink import STALL_TIMEOUT_S, AlsaSink
from citycast.media.render import Samples
from citycast.media.sinks import SinkError, auto_sink_kind, open_sink, pipewire_alsa_present, pulse_server_present
from citycast.tooling.bench.alsa_plugins import alsa_env
from citycast.tooling.bench.pipewire_server import BINARIES, PipeWireServer
from citycast.tooling.bench.pulse_rig import CARD, MonitorRecorder, card_modules, sink_name
from citycast.tooling.markers import detect_markers

BLOCK = 480
NS_PER_SAMPLE = 1e9 / 48_000
# As tests/media/test_pulse_sink.py: the monitor dates a sample up to the sink's latency early (PulseAudio's null
# sink: 10 ms, seen -9.5 to -10.1 ms here), and the recorder's own dating wanders by a few ms in a stream's first
# seconds on a loaded box; through pipewire-pulse more (seen -0.7 to -6.7 ms, moving by 1 ms a second within one
# 4 s recording: its timing reports are noisier, docs/benchmarks.md "Through PipeWire"). The sites' skew, which
# cancels the recorder's dating, is the bench's to measure (tests/tooling/bench/test_pipewire_server.py).
TOLERANCE_MS = 10.0
PULSEAUDIO_EARLY_MS = 10.0
PIPEWIRE_EARLY_MS = 15.0
SPREAD_MS = 10.0


class Stalling(Silence):
    """Renders silence, but once takes `pause_s` over block `at`: longer than the queue, so the device runs dry."""

    def __init__(self, at: int, pause_s: float) -> None:
        self.calls, self.at, self.pause_s = 0, at, pause_s

    def render(self, n: int, dac_local_ns: int) -> Samples:
        self.calls += 1
        if self.calls == self.at:
            time.sleep(self.pause_s)
        return super().render(n, dac_local_ns)


def _check_markers(recorder: MonitorRecorder, dac_ns: dict[int, int], played: dict[str, Any], early_ms: float) -> None:
    """`early_ms`: how much earlier than it plays the server's monitor may date a sample (see TOLERANCE_MS)."""
    rec = recorder.recordings[0]
    start_ns, ns_per_sample = rec.line()
    heard = [start_ns + p * ns_per_sample for p in detect_markers(rec.audio())]
    assert len(heard) == len(MARKED), f"found {len(heard)} markers in the monitor, played {len(MARKED)}"
    said = [dac_ns[b] for b in MARKED]
    off_ms = [(h - s) / 1e6 for h, s in zip(heard, said, strict=True)]
    assert all(-early_ms - TOLERANCE_MS <= o <= TOLERANCE_MS for o in off_ms), (
        f"heard minus the sink's DAC time (ms): {off_ms}; the monitor dates a sample up to {early_ms} ms early"
    )
    assert max(off_ms) - min(off_ms) <= SPREAD_MS, f"{off_ms}; {played}"
    assert played["reports"] > MARKED[-1] // 2 and played["xruns"] == 0, played


CHILD = """
import json, sys
from tests.media.marked_playback import play_marked_to_alsa
dac_ns, played = play_marked_to_alsa(sys.argv[1])
print(json.dumps({"dac_ns": dac_ns, "played": played}))
"""


def _play_marked(
    device: str, recorder: MonitorRecorder, env: dict[str, str] | None = None
) -> tuple[dict[int, int], dict[str, Any]]:
    """With `env`: play from a process of its own started with it, as a site is (alsa-lib reads its configuration
    once per process, so a plugin configured after this one first opened a PCM is not seen here)."""
    recorder.start()
    if env is None:
        dac_ns, played = play_marked_to_alsa(device)
    else:
        root = str(Path(__file__).resolve().parents[2])
        child = subprocess.run([sys.executable, "-c", CHILD, device], env={**env, "PYTHONPATH": root},
                               capture_output=True, text=True, timeout=60)  # fmt: skip
        assert child.returncode == 0, child.stderr[-3000:]
        out = json.loads(child.stdout.strip().splitlines()[-1])
        dac_ns, played = {int(k): v for k, v in out["dac_ns"].items()}, out["played"]
    wait_recorded_past(recorder, dac_ns[MARKED[-1]] + 300_000_000)
    return dac_ns, played


@pytest.mark.slow
def test_dac_time_is_where_pulseaudio_played_the_marker(
    pulse_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in ("PULSE_SERVER", "PULSE_RUNTIME_PATH", "XDG_RUNTIME_DIR"):
        monkeypatch.setenv(key, pulse_env[key]) if key in pulse_env else monkeypatch.delenv(key, raising=False)
    recorder = MonitorRecorder(pulse_env["PULSE_SERVER"], ["cc_null"], tmp_path)
    try:
        dac_ns, played = _play_marked("pulse:DEVICE=cc_null", recorder)
    finally:
        errors = recorder.stop()
    assert not errors
    _check_markers(recorder, dac_ns, played, PULSEAUDIO_EARLY_MS)
    assert played["granted"][2] == 1  # mono: the plugin takes it


@pytest.mark.slow
def test_dac_time_is_where_pipewire_played_the_marker(tmp_path: Path) -> None:
    """Through pipewire-alsa (as Raspberry Pi OS with a desktop has it), onto one channel of the bench's card."""
    for binary in (*BINARIES, "pactl"):
        need_binary(binary)
    with PipeWireServer(tmp_path / "pw", card_modules(1)) as server:
        env = {**server.env(), **alsa_env("pipewire", tmp_path)}
        recorder = MonitorRecorder(server.server, [sink_name(0)], tmp_path, card=CARD)
        try:
            dac_ns, played = _play_marked(f"pipewire:NODE={sink_name(0)}", recorder, env)
        finally:
            errors = recorder.stop()
    assert not errors
    _check_markers(recorder, dac_ns, played, PIPEWIRE_EARLY_MS)


def test_a_pcm_that_does_not_exist_is_a_clear_error() -> None:
    with pytest.raises(SinkError, match="no audio output device: ALSA cannot open 'citycast-no-such-pcm'"):
        asyncio.run(AlsaSink(device="citycast-no-such-pcm").run(Silence()))
    with pytest.raises(SinkError, match="no audio output device: ALSA cannot open 'hw:7'"):
        asyncio.run(open_sink("alsa:hw:7").run(Silence()))


def test_bad_settings_are_refused() -> None:
    with pytest.raises(SinkError, match="block must be positive"):
        AlsaSink(block=0)
    with pytest.raises(SinkError, match="buffer_ms must hold more than a block"):
        AlsaSink(block=4800, buffer_ms=50)


def test_the_device_timestamp_becomes_the_dac_time_on_the_sites_clock() -> None:
    """Sans device: a status says "the next frame plays `delay` frames after `stamp`" on CLOCK_MONOTONIC; the sink
    hands the renderer that instant on the site's own clock (here 3 s fast), through the DAC line."""
    clock = SkewedClock(offset_ns=3_000_000_000)
    sink = AlsaSink(clock, device="unused", block=BLOCK)
    # Before the device runs, only what is queued is known.
    queued = sink._dac_local(960, PcmStatus(state=2, stamp_ns=monotonic_ns(), delay=960))
    assert abs(queued - (clock.now_ns() + 960 * NS_PER_SAMPLE)) < 5e6
    t0 = monotonic_ns()
    answers = []
    for k in range(20):
        written = k * BLOCK
        # The device played on at the nominal rate; 1440 frames (30 ms) always queued ahead of the next one.
        status = PcmStatus(state=3, stamp_ns=t0 + round(written * NS_PER_SAMPLE), delay=1440)
        answers.append(sink._dac_local(written, status))
    offset = clock.now_ns() - monotonic_ns()
    expected = t0 + offset + round((19 * BLOCK + 1440) * NS_PER_SAMPLE)
    assert abs(answers[-1] - expected) < 1e6
    assert sink.reports == 20


def test_an_underrun_is_counted_and_playing_goes_on(pulse_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A render late by more than the queue empties the device: ALSA stops the stream. The sink prepares it again,
    counts the underrun, starts a new DAC line and plays on."""
    monkeypatch.setenv("PULSE_SERVER", pulse_env["PULSE_SERVER"])
    renderer = Stalling(at=150, pause_s=0.5)
    sink = AlsaSink(device="pulse:DEVICE=cc_null", block=BLOCK, duration_s=4.0)
    asyncio.run(asyncio.wait_for(sink.run(renderer), 30))
    assert sink.xruns >= 1
    assert sink.blocks == 400 and sink.reports > 100


def test_a_server_that_dies_ends_the_sink_with_an_error(
    pulse_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PULSE_SERVER", pulse_env["PULSE_SERVER"])
    sink = AlsaSink(device="pulse:DEVICE=cc_null", block=BLOCK)

    async def main() -> None:
        playing = asyncio.create_task(sink.run(Silence()))
        await wait_until(lambda: sink.reports >= 20, "20 device timestamps", timeout=10, every=0.05)
        os.kill(pulse_server_pid(pulse_env), signal.SIGKILL)
        with pytest.raises(SinkError, match="ALSA device 'pulse:DEVICE=cc_null'"):
            await asyncio.wait_for(playing, STALL_TIMEOUT_S + 10)

    asyncio.run(main())


def test_a_server_that_stops_answering_ends_the_sink_with_an_error(
    pulse_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A frozen server (SIGSTOP, let go afterwards) takes no audio: the sink fails after the stall timeout instead
    of leaving the loudspeaker silent with nobody told."""
    monkeypatch.setenv("PULSE_SERVER", pulse_env["PULSE_SERVER"])
    sink = AlsaSink(device="pulse:DEVICE=cc_null", block=BLOCK, buffer_ms=200)
    waited = seconds_until_a_frozen_server_fails(
        sink, pulse_server_pid(pulse_env), lambda: sink.reports >= 20, "20 device timestamps", STALL_TIMEOUT_S + 10
    )
    assert STALL_TIMEOUT_S <= waited < STALL_TIMEOUT_S + 5


def test_a_cancelled_sink_stops_its_writer_at_once(pulse_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULSE_SERVER", pulse_env["PULSE_SERVER"])
    sink = AlsaSink(device="pulse:DEVICE=cc_null", block=BLOCK, buffer_ms=200)

    async def main() -> float:
        playing = asyncio.create_task(sink.run(Silence()))
        await wait_until(lambda: sink.reports >= 5, "5 device timestamps", timeout=10, every=0.05)
        t0 = time.monotonic()
        playing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await playing
        return time.monotonic() - t0

    assert asyncio.run(main()) < 1.0


def _listening_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen()
    return sock


def test_auto_plays_through_pipewires_alsa_plugin_where_both_are_there(tmp_path: Path) -> None:
    """`--sink auto`: PipeWire with pipewire-alsa → `alsa:pipewire` (the graph's own timing); PipeWire without
    the plugin, or the plugin without PipeWire, → what a pulse server or the card offers, as before."""
    plugins = tmp_path / "alsa-lib"
    plugins.mkdir()
    runtime = tmp_path / "run"
    runtime.mkdir()
    pulse = tmp_path / "pulse-native"
    with _listening_socket(runtime / "pipewire-0"), _listening_socket(pulse):
        env = {"XDG_RUNTIME_DIR": str(runtime), "PULSE_SERVER": f"unix:{pulse}"}
        assert auto_sink_kind(env, (plugins,)) == "pulse"  # no plugin: pipewire-pulse, as before
        (plugins / "libasound_module_pcm_pipewire.so").write_bytes(b"")
        assert auto_sink_kind(env, (plugins,)) == "alsa:pipewire"
        assert auto_sink_kind({"PIPEWIRE_RUNTIME_DIR": str(runtime)}, (plugins,)) == "alsa:pipewire"
        assert auto_sink_kind({"PIPEWIRE_REMOTE": str(runtime / "pipewire-0")}, (plugins,)) == "alsa:pipewire"
        # The plugin installed but no PipeWire running (a box with PulseAudio, or none).
        assert auto_sink_kind({"XDG_RUNTIME_DIR": str(tmp_path), "PULSE_SERVER": f"unix:{pulse}"}, (plugins,)) == (
            "pulse"
        )
    no_server = {"XDG_RUNTIME_DIR": str(tmp_path / "none"), "PULSE_RUNTIME_PATH": str(tmp_path / "none")}
    if not pulse_server_present(no_server) and not pipewire_alsa_present(no_server):
        assert auto_sink_kind(no_server, (plugins,)) == "device"
