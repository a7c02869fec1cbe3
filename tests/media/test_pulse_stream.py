"""`PlaybackStream` against a real PulseAudio: the server's timing reports, and a server that goes away."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from tests.helpers import wait_until
from tests.media.sink_faults import Silence, pulse_server_pid, seconds_until_a_frozen_server_fails

from citycast.media.pulse_sink import PulseSink
from citycast.media.pulse_stream import (
    CONNECT_TIMEOUT_S,
    STALL_TIMEOUT_S,
    PlaybackStream,
    PulseStreamError,
    TimingReport,
)
from citycast.media.sinks import SinkError, open_sink, pulse_server_present

RATE = 48_000
BLOCK = 480


def _play(stream: PlaybackStream, seconds: float) -> list[TimingReport]:
    """Writes silence for `seconds`; returns every distinct report the writer saw."""
    stop = threading.Event()
    reports: list[TimingReport] = []
    silence = np.zeros(BLOCK, "<f4").tobytes()
    for _ in range(round(seconds * RATE / BLOCK)):
        report = stream.wait_writable(BLOCK, stop)
        if report is not None and (not reports or report.seq != reports[-1].seq):
            reports.append(report)
        stream.write(silence)
    return reports


def test_reports_date_the_read_index_on_the_system_clock(pulse_env: dict[str, str]) -> None:
    stream = PlaybackStream(server=pulse_env["PULSE_SERVER"], device="cc_null", rate=RATE, tlength_frames=1920,
                            minreq_frames=BLOCK)  # fmt: skip
    try:
        reports = _play(stream, 3.0)
    finally:
        stream.close()
    playing = [r for r in reports if r.playing]
    # One answer every 50 ms is asked for; a loaded box answers some late, never most.
    assert len(playing) >= 20, reports[:5]
    reads = np.array([r.read_frame for r in playing], np.float64)
    dacs = np.array([r.dac_ns for r in playing], np.float64)
    assert np.all(np.diff(reads) >= 0) and reads[-1] - reads[0] > RATE  # the server played over a second of it
    # Frames and nanoseconds on one line at the nominal rate (a misread structure gives nonsense here).
    slope = np.polyfit(reads, dacs, 1)[0]
    assert slope == pytest.approx(1e9 / RATE, rel=0.01)
    # The DAC time is ahead of the answer by the sink's latency, which is positive and below a second.
    now = time.time_ns()
    assert all(0 <= r.dac_ns - r.stamp_ns < 1_000_000_000 for r in playing)
    assert abs(playing[-1].stamp_ns - now) < 5_000_000_000
    assert all(r.written_frame >= r.read_frame - RATE for r in playing)


def test_an_unknown_sink_or_server_is_a_clear_error(pulse_env: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(PulseStreamError, match="cannot play to nowhere"):
        PlaybackStream(server=pulse_env["PULSE_SERVER"], device="nowhere", rate=RATE, tlength_frames=1920,
                       minreq_frames=BLOCK)  # fmt: skip
    with pytest.raises(PulseStreamError, match="cannot connect to PulseAudio"):
        PlaybackStream(server=f"unix:{tmp_path / 'none'}", device=None, rate=RATE, tlength_frames=1920,
                       minreq_frames=BLOCK)  # fmt: skip


def test_a_server_that_dies_ends_the_sink_with_an_error(pulse_env: dict[str, str]) -> None:
    """The writer must not wait forever for a server that is gone: the site restarts its sink on `SinkError`."""
    sink = PulseSink(server=pulse_env["PULSE_SERVER"], device="cc_null", block=BLOCK)

    async def main() -> None:
        playing = asyncio.create_task(sink.run(Silence()))
        await wait_until(lambda: sink.blocks >= 50, "the sink to play 50 blocks", timeout=10, every=0.05)
        os.kill(pulse_server_pid(pulse_env), signal.SIGKILL)
        with pytest.raises(SinkError, match="PulseAudio stream failed"):
            await asyncio.wait_for(playing, 10)

    asyncio.run(main())


def test_a_server_that_stops_answering_ends_the_sink_with_an_error(pulse_env: dict[str, str]) -> None:
    """A hung server keeps its socket open and never asks for audio again: libpulse reports nothing, and a writer
    that only waits for the server's request would wait forever while the loudspeaker is silent. The sink ends
    with `SinkError` (the site reports it and opens a new stream) once the server has taken nothing for the stall
    timeout. The server is frozen for real (SIGSTOP), and let go afterwards."""
    sink = PulseSink(server=pulse_env["PULSE_SERVER"], device="cc_null", block=BLOCK, buffer_ms=200)
    waited = seconds_until_a_frozen_server_fails(
        sink, pulse_server_pid(pulse_env), lambda: sink.reports >= 5, "5 timing reports", STALL_TIMEOUT_S + 10
    )
    assert STALL_TIMEOUT_S <= waited < STALL_TIMEOUT_S + 5


def test_connecting_to_a_server_that_never_answers_fails_in_bounded_time(pulse_env: dict[str, str]) -> None:
    pid = pulse_server_pid(pulse_env)
    os.kill(pid, signal.SIGSTOP)
    result: list[BaseException | None] = []

    def connect() -> None:
        try:
            PlaybackStream(server=pulse_env["PULSE_SERVER"], device="cc_null", rate=RATE, tlength_frames=1920,
                           minreq_frames=BLOCK).close()  # fmt: skip
            result.append(None)
        except BaseException as exc:  # what it raised is the point
            result.append(exc)

    t0 = time.monotonic()
    worker = threading.Thread(target=connect, daemon=True)
    worker.start()
    try:
        worker.join(CONNECT_TIMEOUT_S + 10)
    finally:
        os.kill(pid, signal.SIGCONT)
    worker.join(10)
    assert result, "connecting to a frozen server never returned"
    assert isinstance(result[0], PulseStreamError), result
    assert "no answer" in str(result[0])
    assert time.monotonic() - t0 < CONNECT_TIMEOUT_S + 10


def test_a_cancelled_sink_stops_its_writer_at_once(pulse_env: dict[str, str]) -> None:
    sink = PulseSink(server=pulse_env["PULSE_SERVER"], device="cc_null", block=BLOCK, buffer_ms=200)

    async def main() -> float:
        playing = asyncio.create_task(sink.run(Silence()))
        # An idle null sink first wakes up to ~2 s after a stream joins (its default latency): until then the
        # stream is not played and no report dates it.
        deadline = time.monotonic() + 10
        while sink.reports < 5 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        t0 = time.monotonic()
        playing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await playing
        return time.monotonic() - t0

    assert asyncio.run(main()) < 2.0
    assert sink.blocks > 0 and sink.reports > 0


def test_auto_plays_through_a_sound_server_where_there_is_one(
    pulse_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--sink auto` (a site's default): a running PulseAudio is found by its socket, as libpulse finds it."""
    for var in ("PULSE_SERVER", "PULSE_RUNTIME_PATH", "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(var, raising=False)
    runtime = Path(pulse_env["PULSE_RUNTIME_PATH"])
    (runtime / "native").unlink(missing_ok=True)
    (runtime / "native").symlink_to(pulse_env["PULSE_SERVER"].removeprefix("unix:"))
    assert pulse_server_present({"PULSE_RUNTIME_PATH": str(runtime)})
    assert pulse_server_present({"PULSE_SERVER": pulse_env["PULSE_SERVER"]})
    assert not pulse_server_present({"XDG_RUNTIME_DIR": str(tmp_path / "empty")}) or Path("/run/pulse/native").exists()
    monkeypatch.setenv("PULSE_SERVER", pulse_env["PULSE_SERVER"])
    assert isinstance(open_sink("auto"), PulseSink)
    with pytest.raises(SinkError, match="auto takes no name"):
        open_sink("auto:cc_null")
