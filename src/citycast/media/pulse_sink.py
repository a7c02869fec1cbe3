"""`PulseSink`: PulseAudio (or PipeWire's pulse server) through its own latency reporting.

PortAudio through ALSA's pulse plugin dates a block from the plugin's coarse view of the stream; PulseAudio itself
knows better. Its simple API (`pasimple`, a ctypes wrapper of libpulse-simple) opens a playback stream with timing
interpolation and automatic timing updates, and `pa_simple_get_latency` answers "the next sample written plays in
L µs", computed from the server's timing info (sink latency, what is queued, the read index, interpolated to now).
So block k, written after W samples, reaches the DAC at `now + L` on the local clock (`now`: midway between the
clock readings either side of the question; an answer that took longer than `MAX_QUERY_NS` is left out). Those
reports still jitter with the server's timing updates, so they go through `DacClock`, and the renderer gets the
line it fits. Until the queue has filled once, playback has not started and the raw report stands.

The stream is written from a thread: `pa_simple_write` blocks until the server wants more, which paces the loop at
the DAC's rate with `buffer_ms` of audio queued (render() is thread-safe). The stream never waits to prebuffer
(prebuf 0): after an underrun the server has played silence and drops what arrives for instants already past,
so every sample keeps its place on the DAC's timeline and the fitted line stays valid. `xruns` counts reports
of an empty queue (latency 0 once playing); `dac_steps` counts times the fitted line started again because the
device's timing moved.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from types import ModuleType
from typing import Any

from citycast.clock.local import Clock, SystemClock
from citycast.media.audio import SAMPLE_RATE
from citycast.media.dac_clock import DacClock
from citycast.media.render import Renderer
from citycast.media.sinks import BlockCallback, SinkError, checked_block

MAX_QUERY_NS = 500_000  # asking PulseAudio for its latency takes ~20 µs; longer: the thread was preempted


def _pasimple() -> ModuleType:
    """Import pasimple lazily: libpulse-simple is only needed by a site that plays through PulseAudio."""
    try:
        import pasimple  # type: ignore[import-untyped]
    except (ImportError, OSError) as exc:
        raise SinkError(f"no PulseAudio client library: {exc}") from exc
    module: ModuleType = pasimple
    return module


class PulseSink:
    """A PulseAudio playback stream (48 kHz float32 mono) on `device` (a sink name; None: the server's default) of
    `server` (None: $PULSE_SERVER or the user's). `block`: samples rendered and written at a time; `buffer_ms`:
    how much PulseAudio keeps queued (its tlength), the headroom against a late render. With `duration_s`, `run()`
    returns once that much has been written. Opening fails with `SinkError` when no server or sink answers."""

    def __init__(
        self,
        clock: Clock | None = None,
        *,
        device: str | None = None,
        server: str | None = None,
        block: int = 480,
        buffer_ms: float = 40.0,
        on_block: BlockCallback | None = None,
        duration_s: float | None = None,
        dac_clock: DacClock | None = None,
        stream_name: str = "citycast",
    ) -> None:
        if block <= 0:
            raise SinkError(f"block must be positive, got {block}")
        if not 0 < buffer_ms <= 2000:
            raise SinkError(f"buffer_ms must be in (0, 2000], got {buffer_ms}")
        self._pa = _pasimple()
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.sample_rate = SAMPLE_RATE
        self.device = device
        self.server = server
        self.block = block
        self.buffer_ms = buffer_ms
        self.on_block = on_block
        self.duration_s = duration_s
        self.dac_clock = dac_clock if dac_clock is not None else DacClock(sample_rate=SAMPLE_RATE)
        self.stream_name = stream_name
        self.xruns = 0
        self.blocks = 0
        self.frames = 0
        self.last_latency_us: int | None = None  # what PulseAudio reported before the last block
        self.late_queries = 0  # latency answers left out because asking took longer than MAX_QUERY_NS

    @property
    def dac_steps(self) -> int:
        return self.dac_clock.stats.steps

    def _open(self) -> Any:
        pa = self._pa
        tlength = round(self.buffer_ms * self.sample_rate / 1000) * 4
        try:
            return pa.PaSimple(
                pa.PA_STREAM_PLAYBACK,
                pa.PA_SAMPLE_FLOAT32LE,
                1,
                self.sample_rate,
                app_name="citycast",
                stream_name=self.stream_name,
                server_name=self.server,
                device_name=self.device,
                tlength=tlength,
                minreq=self.block * 4,
                # Playback starts at the first write and never stops for an underrun: the server plays silence and
                # keeps its read index running, so a late block's samples keep their place on the DAC's timeline.
                prebuf=0,
            )
        except pa.PaSimpleError as exc:
            which = "the default sink" if self.device is None else repr(self.device)
            raise SinkError(f"no audio output device: PulseAudio has no {which} to play to ({exc})") from exc

    def _play(self, stream: Any, renderer: Renderer, stop: threading.Event) -> None:
        total = None if self.duration_s is None else round(self.duration_s * self.sample_rate)
        pa = self._pa
        primed = self.frames + round(self.buffer_ms * self.sample_rate / 1000) + self.block
        while not stop.is_set() and (total is None or self.frames < total):
            before = self.clock.now_ns()
            try:
                latency_us = int(stream.get_latency())
            except pa.PaSimpleError as exc:
                raise SinkError(f"PulseAudio stream failed: {exc}") from exc
            after = self.clock.now_ns()
            playing = self.frames >= primed
            self.last_latency_us = latency_us
            raw = (before + after) // 2 + latency_us * 1000
            if not playing:
                # The queue is still filling: the latency grows with it and dates nothing yet.
                dac_local = raw
            elif latency_us == 0:
                # An underrun: the server played silence and its read index ran on past what was written (the
                # latency, negative, reads as 0). The blocks until it is caught up are skipped by the server; their
                # place on the DAC's line is unchanged.
                self.xruns += 1
                dac_local = self.dac_clock.at(self.frames)
            elif after - before > MAX_QUERY_NS:
                # The thread was preempted while asking: the answer's instant is unknown, so it is not used.
                self.late_queries += 1
                dac_local = self.dac_clock.at(self.frames)
            else:
                dac_local = self.dac_clock.report(self.frames, raw)
            samples = checked_block(renderer.render(self.block, dac_local), self.block)
            try:
                stream.write(samples.astype("<f4", copy=False).tobytes())
            except pa.PaSimpleError as exc:
                raise SinkError(f"PulseAudio stream failed: {exc}") from exc
            if self.on_block is not None:
                self.on_block(dac_local, samples)
            self.blocks += 1
            self.frames += self.block
        if total is not None and not stop.is_set():
            # What is queued plays out before run() returns. Not pa_simple_drain: with prebuf 0 it waits for an
            # underrun that never comes and times out after 30 s.
            with contextlib.suppress(pa.PaSimpleError):
                stop.wait(int(stream.get_latency()) / 1e6)

    def _serve(self, renderer: Renderer, stop: threading.Event) -> None:
        stream = self._open()
        if self.frames:
            # Run again after a failure: a new stream, whose samples map to the DAC's time afresh.
            self.dac_clock = DacClock(sample_rate=SAMPLE_RATE)
        try:
            self._play(stream, renderer, stop)
        finally:
            stream.close()

    async def run(self, renderer: Renderer) -> None:
        stop = threading.Event()
        # Connecting and writing block: both stay off the event loop. Shielded, so a cancellation stops the
        # thread (after its current write, at most one block plus the queue) instead of abandoning the stream.
        playing = asyncio.ensure_future(asyncio.to_thread(self._serve, renderer, stop))
        try:
            await asyncio.shield(playing)
        finally:
            stop.set()
            if not playing.done():
                with contextlib.suppress(BaseException):
                    await playing
