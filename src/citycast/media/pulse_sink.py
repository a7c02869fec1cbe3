"""`PulseSink`: PulseAudio (or PipeWire's pulse server) through its own timing reports.

PortAudio through ALSA's pulse plugin dates a block from the plugin's coarse view of the stream; PulseAudio itself
knows better. `PlaybackStream` (libpulse's asynchronous API) asks the server for the stream's timing every 50 ms;
each answer says "frame `read_index` reaches the DAC at `timestamp + sink latency`" on the system clock, exact to
tens of µs. Those points go through `DacClock`, a least-squares line, and block k (written after W frames) is
handed to the renderer with the line's time of frame W. Until the server plays the stream, the DAC time of the
next frame is the server's sink latency plus what is queued ahead of it.

(Until 2026-12-04 this sink read `pa_simple_get_latency` through libpulse-simple: libpulse's interpolated stream
time, whose smoother wandered by ±0.5–1 ms over 10–30 s and set the sites' skew through PulseAudio at 1.4–1.9 ms
p99; `docs/benchmarks.md` has both.)

The stream is written from a thread: it waits until the server wants `block` more frames, which paces the loop at
the DAC's rate with `buffer_ms` of audio queued (render() is thread-safe). The stream never waits to prebuffer
(prebuf 0): after an underrun the server has played silence and drops what arrives for instants already past,
so every sample keeps its place on the DAC's timeline and the fitted line stays valid. `xruns` counts the
server's underflow notices; `dac_steps` counts times the fitted line started again because the device's timing
moved. A server that dies fails the stream at once; one that hangs with its socket open (it takes no audio for
`pulse_stream.STALL_TIMEOUT_S` plus the queue) fails it too: `SinkError`, and the site opens a new stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

from citycast.clock.local import Clock, SystemClock
from citycast.media.audio import SAMPLE_RATE
from citycast.media.dac_clock import NOMINAL_NS_PER_SAMPLE, DacClock
from citycast.media.pulse_stream import PlaybackStream, PulseStreamError, TimingReport
from citycast.media.render import Renderer
from citycast.media.sinks import BlockCallback, SinkError, checked_block

# PulseAudio splits a stream's queue (tlength) into two requests (2 minreq; minreq is our block) and twice the
# latency it asks of the sink. A queue of 40 ms at 50 ms blocks left the sink none: it ran at its least latency,
# rendering in slivers, and with ten sites on a busy box its timing reports jumped by over a millisecond a few
# times a minute; each jump restarted the site's DAC line and the sites played up to 10 ms apart
# (docs/benchmarks.md, "The sink's latency"). The sink keeps this much whatever the block.
SINK_LATENCY_MS = 10.0


class PulseSink:
    """A PulseAudio playback stream (48 kHz float32 mono) on `device` (a sink name; None: the server's default) of
    `server` (None: $PULSE_SERVER or the user's). `block`: samples rendered and written at a time; `buffer_ms`:
    how much PulseAudio keeps queued (its tlength), the headroom against a late render; by default two blocks plus
    twice `SINK_LATENCY_MS` (40 ms at 10 ms blocks). With `duration_s`, `run()` returns once that much has been
    written. Opening fails with `SinkError` when no server or sink answers."""

    def __init__(
        self,
        clock: Clock | None = None,
        *,
        device: str | None = None,
        server: str | None = None,
        block: int = 480,
        buffer_ms: float | None = None,
        on_block: BlockCallback | None = None,
        duration_s: float | None = None,
        dac_clock: DacClock | None = None,
        stream_name: str = "citycast",
    ) -> None:
        if block <= 0:
            raise SinkError(f"block must be positive, got {block}")
        if buffer_ms is None:
            buffer_ms = 2 * (block * 1000 / SAMPLE_RATE + SINK_LATENCY_MS)
        if not 0 < buffer_ms <= 2000:
            raise SinkError(f"buffer_ms must be in (0, 2000], got {buffer_ms}")
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
        self.blocks = 0
        self.frames = 0
        self.reports = 0  # the server's timing answers taken into the line
        self.xruns = 0  # the server's underflow notices, over every stream this sink opened
        self._xruns_before = 0  # those of streams closed before the current one
        self._stream: PlaybackStream | None = None

    @property
    def dac_steps(self) -> int:
        return self.dac_clock.stats.steps

    def _open(self) -> PlaybackStream:
        try:
            return PlaybackStream(
                server=self.server,
                device=self.device,
                rate=self.sample_rate,
                tlength_frames=round(self.buffer_ms * self.sample_rate / 1000),
                minreq_frames=self.block,
                name=self.stream_name,
            )
        except PulseStreamError as exc:
            which = "the default sink" if self.device is None else repr(self.device)
            raise SinkError(f"no audio output device: PulseAudio has no {which} to play to ({exc})") from exc

    def _dac_local(self, frame: int, report: TimingReport | None, last_seq: int) -> int:
        """The local time at which the stream's `frame` reaches the DAC, from the server's latest report."""
        if report is not None and report.playing and report.seq != last_seq:
            # The server stamps its answer with the system clock; the renderer wants the site's local clock.
            offset = self.clock.now_ns() - time.time_ns()
            self.dac_clock.report(report.read_frame, report.dac_ns + offset)
            self.reports += 1
        if self.reports:
            # Also while an underrun holds the server's "playing" off: the read index runs on along the line.
            return self.dac_clock.at(frame)
        # Not played yet: what is queued ahead of `frame` plays first, then the sink's own latency.
        now = self.clock.now_ns()
        if report is None:
            return now
        queued = max(0, frame - report.read_frame)
        return now + (report.dac_ns - report.stamp_ns) + round(queued * NOMINAL_NS_PER_SAMPLE)

    def _play(self, stream: PlaybackStream, renderer: Renderer, stop: threading.Event) -> None:
        total = None if self.duration_s is None else round(self.duration_s * self.sample_rate)
        written = 0  # frames written to this stream: its own index
        last_seq = 0
        while not stop.is_set() and (total is None or self.frames < total):
            try:
                report = stream.wait_writable(self.block, stop)
            except PulseStreamError as exc:
                raise SinkError(f"PulseAudio stream failed: {exc}") from exc
            if stop.is_set():
                break
            dac_local = self._dac_local(written, report, last_seq)
            last_seq = report.seq if report is not None else 0
            samples = checked_block(renderer.render(self.block, dac_local), self.block)
            try:
                stream.write(samples.astype("<f4", copy=False).tobytes())
            except PulseStreamError as exc:
                raise SinkError(f"PulseAudio stream failed: {exc}") from exc
            if self.on_block is not None:
                self.on_block(dac_local, samples)
            self.blocks += 1
            self.frames += self.block
            written += self.block
            self.xruns = self._xruns_before + stream.underflows
        if total is not None and not stop.is_set():
            # What is queued plays out before run() returns (the line says when its last frame plays).
            end = self.dac_clock.at(written) if self.reports else self.clock.now_ns() + round(self.buffer_ms * 1e6)
            stop.wait(max(0.0, (end - self.clock.now_ns()) / 1e9))

    def _serve(self, renderer: Renderer, stop: threading.Event) -> None:
        stream = self._open()
        if self.frames:
            # Run again after a failure: a new stream, whose samples map to the DAC's time afresh.
            self.dac_clock = DacClock(sample_rate=SAMPLE_RATE)
            self.reports = 0
        self._stream = stream
        try:
            self._play(stream, renderer, stop)
        finally:
            self._xruns_before += stream.underflows
            self.xruns = self._xruns_before
            self._stream = None
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
            if (stream := self._stream) is not None:
                with contextlib.suppress(PulseStreamError):
                    stream.wake()
            if not playing.done():
                with contextlib.suppress(BaseException):
                    await playing
