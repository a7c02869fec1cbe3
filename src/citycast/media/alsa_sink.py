"""`AlsaSink`: ALSA directly, dated by the device's own status timestamps.

The box without a sound server (Raspberry Pi OS Lite, a HAT or a USB DAC) has only ALSA, and ALSA knows when a
sample plays: each `snd_pcm_status()` gives a CLOCK_MONOTONIC timestamp and the delay, the frames written that the
DAC plays before the next one (`citycast.media.alsa_pcm`). Before every block the sink reads it, so "frame
`written` reaches the DAC at stamp + delay" is a point on the DAC's clock; the points go through `DacClock`, the
least-squares line the PulseAudio sink uses, and the block is rendered for the line's time of its first frame.
The same API reaches PipeWire through `pipewire-alsa` (`--sink alsa:pipewire`), whose answers come from the
graph's own clock rather than from pipewire-pulse's reports.

The PCM is written from a thread that waits until the device has room for a block, which paces it at the DAC's
rate with `buffer_ms` queued. After an underrun ALSA stops the stream; it is prepared again and starts a new
timeline, so the line starts afresh (`xruns` counts them). A device that goes away fails the sink with `SinkError`
(the site reports it and opens it again with back-off), and so does one that takes no audio for
`STALL_TIMEOUT_S` plus its queue: the writer notices between its waits, and the event loop notices when the writer
is stuck inside a call that does not return (PulseAudio's plugin waits without end on a frozen server).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import threading
import time

import numpy as np

from citycast.clock.local import Clock, SystemClock
from citycast.media.alsa_pcm import AlsaError, PcmStatus, PlaybackPcm, monotonic_ns
from citycast.media.audio import SAMPLE_RATE
from citycast.media.dac_clock import NOMINAL_NS_PER_SAMPLE, DacClock
from citycast.media.render import Renderer, Samples
from citycast.media.sinks import BlockCallback, SinkError, checked_block

STALL_TIMEOUT_S = 5.0  # as the PulseAudio sink's: a device taking no audio this long (plus its queue) has failed
WAIT_MS = 100  # how long a wait for room may last before the writer looks at its stop flag
# As the PulseAudio sink: its queue is two blocks plus twice this, so a late render has headroom whatever the block.
SINK_LATENCY_MS = 10.0
_UNDERRUN = (-errno.EPIPE, -errno.ESTRPIPE)


class AlsaSink:
    """ALSA playback (48 kHz; mono where the device takes it) on PCM `device` (`default`, `hw:0`, `plughw:1`,
    `pipewire:NODE=…`). `block`: frames rendered and written at a time; `buffer_ms`: the ring the device keeps
    queued, by default two blocks plus twice `SINK_LATENCY_MS`. With `duration_s`, `run()` returns once that
    much has been written and played. Opening fails with `SinkError` when the device cannot be opened."""

    def __init__(
        self,
        clock: Clock | None = None,
        *,
        device: str = "default",
        block: int = 480,
        buffer_ms: float | None = None,
        on_block: BlockCallback | None = None,
        duration_s: float | None = None,
        dac_clock: DacClock | None = None,
    ) -> None:
        if block <= 0:
            raise SinkError(f"block must be positive, got {block}")
        if buffer_ms is None:
            buffer_ms = 2 * (block * 1000 / SAMPLE_RATE + SINK_LATENCY_MS)
        if not block * 1000 / SAMPLE_RATE < buffer_ms <= 2000:
            raise SinkError(f"buffer_ms must hold more than a block and at most 2000 ms, got {buffer_ms}")
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.sample_rate = SAMPLE_RATE
        self.device = device
        self.block = block
        self.buffer_ms = buffer_ms
        self.on_block = on_block
        self.duration_s = duration_s
        self.dac_clock = dac_clock if dac_clock is not None else DacClock(sample_rate=SAMPLE_RATE)
        self.blocks = 0
        self.frames = 0
        self.reports = 0  # device timestamps taken into the line
        self.xruns = 0  # underruns: the device needed audio and had none
        self.granted: tuple[int, int, int] | None = None  # (period, buffer, channels) the device gave
        self._last_taken = 0.0  # time.monotonic() when the device last took a block (or the sink started)

    @property
    def stall_s(self) -> float:
        """How long the device may take no audio before the sink fails."""
        return STALL_TIMEOUT_S + self.buffer_ms / 1000

    @property
    def dac_steps(self) -> int:
        return self.dac_clock.stats.steps

    def _open(self) -> PlaybackPcm:
        ring = round(self.buffer_ms * self.sample_rate / 1000)
        try:
            pcm = PlaybackPcm(self.device, rate=self.sample_rate, period=self.block, buffer=ring, start_at=ring)
        except AlsaError as exc:
            raise SinkError(f"no audio output device: ALSA cannot open {self.device!r} ({exc})") from exc
        if pcm.buffer < self.block:
            pcm.close()
            raise SinkError(f"ALSA device {self.device!r} holds {pcm.buffer} frames, less than a block ({self.block})")
        self.granted = (pcm.period, pcm.buffer, pcm.channels)
        return pcm

    def _dac_local(self, written: int, status: PcmStatus) -> int:
        """The local time at which frame `written` of this stream reaches the DAC."""
        now = self.clock.now_ns()
        if status.running:
            offset = now - monotonic_ns()
            self.dac_clock.report(written, status.stamp_ns + round(status.delay * NOMINAL_NS_PER_SAMPLE) + offset)
            self.reports += 1
        if self.reports:
            return self.dac_clock.at(written)
        # Not started yet: what is queued ahead plays first (the device's own latency is not known until it runs).
        return now + round(max(0, status.delay) * NOMINAL_NS_PER_SAMPLE)

    def _encode(self, samples: Samples, pcm: PlaybackPcm) -> bytes:
        out = np.asarray(samples, dtype=np.float32)
        if pcm.dtype == "<i2":
            out = (np.clip(out, -1.0, 1.0) * 32767.0).round().astype("<i2")
        else:
            out = out.astype("<f4", copy=False)
        if pcm.channels > 1:  # the same signal on every channel of a card that takes no mono
            out = np.repeat(out[:, None], pcm.channels, axis=1)
        return out.tobytes()

    def _restart(self, pcm: PlaybackPcm, exc: AlsaError) -> None:
        self.xruns += 1
        try:
            pcm.recover(exc)
        except AlsaError as again:
            raise SinkError(f"ALSA device {self.device!r} failed: {again}") from again
        # The stream starts again from empty: a new timeline, a new line.
        self.dac_clock = DacClock(sample_rate=SAMPLE_RATE)
        self.reports = 0

    def _play(self, pcm: PlaybackPcm, renderer: Renderer, stop: threading.Event) -> None:
        total = None if self.duration_s is None else round(self.duration_s * self.sample_rate)
        stall_s = self.stall_s
        written = 0  # frames written since the stream last (re)started: its own index
        self._last_taken = time.monotonic()
        while not stop.is_set() and (total is None or self.frames < total):
            try:
                if not pcm.wait(WAIT_MS) or pcm.avail() < self.block:
                    if time.monotonic() - self._last_taken > stall_s:
                        raise SinkError(f"ALSA device {self.device!r} took no audio for {stall_s:.1f} s")
                    continue
                status = pcm.status()
                dac_local = self._dac_local(written, status)
                samples = checked_block(renderer.render(self.block, dac_local), self.block)
                taken = pcm.write(self._encode(samples, pcm), self.block)
            except AlsaError as exc:
                if exc.code not in _UNDERRUN:
                    raise SinkError(f"ALSA device {self.device!r} failed: {exc}") from exc
                self._restart(pcm, exc)
                written = 0
                continue
            if taken != self.block:
                # A short write leaves the stream's index off the line's: start both again.
                self._restart(pcm, AlsaError("short write", -errno.EPIPE))
                written = 0
                continue
            self._last_taken = time.monotonic()
            if self.on_block is not None:
                self.on_block(dac_local, samples)
            self.blocks += 1
            self.frames += self.block
            written += self.block
        if total is not None and not stop.is_set():
            # What is queued plays out before run() returns (the line says when its last frame plays).
            end = self.dac_clock.at(written) if self.reports else self.clock.now_ns() + round(self.buffer_ms * 1e6)
            stop.wait(max(0.0, (end - self.clock.now_ns()) / 1e9))

    def _serve(self, renderer: Renderer, stop: threading.Event) -> None:
        pcm = self._open()
        if self.frames:
            # Run again after a failure: a new stream, whose frames map to the DAC's time afresh.
            self.dac_clock = DacClock(sample_rate=SAMPLE_RATE)
            self.reports = 0
        try:
            self._play(pcm, renderer, stop)
        finally:
            pcm.close()

    async def run(self, renderer: Renderer) -> None:
        stop = threading.Event()
        loop = asyncio.get_running_loop()
        finished: asyncio.Future[None] = loop.create_future()

        def serve() -> None:
            outcome: BaseException | None = None
            try:
                self._serve(renderer, stop)
            except BaseException as exc:  # handed to the awaiting task, whatever it is
                outcome = exc
            with contextlib.suppress(RuntimeError):  # the loop may be gone by the time a stuck call returns
                loop.call_soon_threadsafe(_settle, finished, outcome)

        # Opening and writing block, so they run on a thread of their own, not the event loop's. Not the loop's
        # executor either: a call stuck in a plugin (PulseAudio's waits for a frozen server's timing without end)
        # would hold one of its few workers for as long as the server stays frozen.
        self._last_taken = time.monotonic()
        threading.Thread(target=serve, name=f"alsa-sink:{self.device}", daemon=True).start()
        stall_s = self.stall_s
        try:
            while True:
                left = self._last_taken + stall_s + 0.5 - time.monotonic()
                done, _ = await asyncio.wait({finished}, timeout=max(0.1, left))
                if done:
                    return finished.result()
                if time.monotonic() - self._last_taken > stall_s + 0.5:
                    # The writer is inside a call that does not come back: say so, and leave it to return when
                    # the device answers (it then sees `stop` and closes the PCM).
                    raise SinkError(f"ALSA device {self.device!r} took no audio for {stall_s:.1f} s (a call into it "
                                    "did not return)")  # fmt: skip
        finally:
            stop.set()
            if not finished.done():
                # Cancelled: the writer stops within WAIT_MS and a block, unless stuck in a call (see above).
                await asyncio.wait({finished}, timeout=2 * WAIT_MS / 1000 + 0.5)


def _settle(future: asyncio.Future[None], outcome: BaseException | None) -> None:
    if future.done():
        return
    if outcome is None:
        future.set_result(None)
    else:
        future.set_exception(outcome)
