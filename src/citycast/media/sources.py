"""Where ingest audio comes from: files and URLs, line-in, a marker signal, a test tone.

Every source yields 20 ms blocks of 48 kHz mono float32 (FRAME_SAMPLES each) as fast as it is asked: sources
are not paced, the ingest paces them (line-in is the exception, paced by its sound card). Trouble opening a
source is a `SourceError` with a message an operator can act on, raised when the source is built, not a
traceback.
"""

from __future__ import annotations

import math
import queue
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import av
import av.error
import numpy as np

from citycast.media.audio import FRAME_SAMPLES, SAMPLE_RATE
from citycast.media.chirp import chirp
from citycast.media.convert import AudioConverter
from citycast.media.render import Samples


class SourceError(Exception):
    """A source cannot be opened or read; the message says which and why."""


class Source(Protocol):
    description: str

    def blocks(self) -> Iterator[Samples]:
        """FRAME_SAMPLES float32 samples per block; finite for files, endless for live sources."""
        ...


def _reblock(chunks: Iterator[Samples], *, pad_last: bool = True) -> Iterator[Samples]:
    """Cut a stream of arbitrary-length chunks into FRAME_SAMPLES blocks (last one zero-padded)."""
    pending: list[Samples] = []
    held = 0
    for chunk in chunks:
        if chunk.size == 0:
            continue
        pending.append(chunk)
        held += chunk.size
        if held < FRAME_SAMPLES:
            continue
        joined = np.concatenate(pending) if len(pending) > 1 else pending[0]
        whole = (held // FRAME_SAMPLES) * FRAME_SAMPLES
        for start in range(0, whole, FRAME_SAMPLES):
            yield joined[start : start + FRAME_SAMPLES].copy()
        rest = joined[whole:]
        pending = [rest] if rest.size else []
        held = rest.size
    if held and pad_last:
        block = np.zeros(FRAME_SAMPLES, dtype=np.float32)
        block[:held] = np.concatenate(pending)
        yield block


def _describe_av_error(exc: BaseException) -> str:
    if isinstance(exc, av.error.FFmpegError) and exc.strerror:
        return str(exc.strerror)
    return str(exc) or type(exc).__name__


class FileSource:
    """Anything FFmpeg decodes (a path or a URL), as 48 kHz mono float32; the last block is zero-padded.

    With `loop`, the file restarts seamlessly when it ends (no padding between passes) and never ends.
    The file is probed (opened and its first audio decoded) at construction.
    """

    def __init__(self, location: str | Path, *, loop: bool = False) -> None:
        self.location = str(location)
        self.loop = loop
        self.description = f"file {self.location}" + (" (loop)" if loop else "")
        self.duration_s: float | None = None
        is_url = "://" in self.location
        if not is_url and not Path(self.location).exists():
            raise SourceError(f"no such file: {self.location!r}")
        container = self._open()
        try:
            stream = container.streams.audio[0]
            if stream.duration is not None and stream.time_base is not None:
                self.duration_s = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                self.duration_s = container.duration / 1_000_000
            self.input_rate: int = stream.rate
            self.input_channels: int = stream.channels
            try:
                next(iter(container.decode(stream)))
            except StopIteration:
                raise SourceError(f"cannot decode {self.location!r}: no audio in the stream") from None
            except (av.error.FFmpegError, ValueError) as exc:
                raise SourceError(f"cannot decode {self.location!r}: {_describe_av_error(exc)}") from exc
        finally:
            container.close()

    def _open(self) -> Any:
        try:
            container: Any = av.open(self.location, "r")
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            if isinstance(exc, FileNotFoundError):
                raise SourceError(f"no such file: {self.location!r}") from exc
            raise SourceError(f"cannot decode {self.location!r}: {_describe_av_error(exc)}") from exc
        if not container.streams.audio:
            container.close()
            raise SourceError(f"cannot decode {self.location!r}: it has no audio stream")
        return container

    def _decode_pass(self) -> Iterator[Samples]:
        container = self._open()
        resampler = AudioConverter(format="flt", layout="mono", rate=SAMPLE_RATE)
        try:
            stream = container.streams.audio[0]
            try:
                for frame in container.decode(stream):
                    frame.pts = None  # we want every sample in order; timestamp gaps are not our business
                    for out in resampler.convert(frame):
                        yield np.asarray(out.to_ndarray(), dtype=np.float32).reshape(-1)
                for out in resampler.convert(None):
                    yield np.asarray(out.to_ndarray(), dtype=np.float32).reshape(-1)
            except (av.error.FFmpegError, ValueError) as exc:
                raise SourceError(f"cannot decode {self.location!r}: {_describe_av_error(exc)}") from exc
        finally:
            container.close()

    def _all_passes(self) -> Iterator[Samples]:
        while True:
            produced = 0
            for chunk in self._decode_pass():
                produced += chunk.size
                yield chunk
            if not self.loop:
                return
            if produced == 0:
                raise SourceError(f"cannot loop {self.location!r}: it decodes to no audio")

    def blocks(self) -> Iterator[Samples]:
        return _reblock(self._all_passes())


def read_audio(location: str | Path) -> Samples:
    """The whole of a file as 48 kHz mono float32 (no padding): for analysis of recordings and sink WAVs."""
    source = FileSource(location)
    return np.concatenate([np.zeros(0, np.float32), *source._decode_pass()])


class MarkerSource:
    """Silence with a marker chirp (`markers.chirp()`) starting every `period_s`.

    Marker k starts at sample k * period_samples exactly (period_samples = round(period_s * 48000)).
    Endless, or `count` markers (the last period is completed, then zero-padded to a whole block).
    """

    def __init__(self, period_s: float = 1.0, *, count: int | None = None, amplitude: float = 0.5) -> None:
        self.period_samples = round(period_s * SAMPLE_RATE)
        self.marker = chirp() * np.float32(amplitude / 0.5)
        if self.period_samples < self.marker.size:
            raise SourceError(f"marker period {period_s} s is shorter than the marker ({self.marker.size} samples)")
        if count is not None and count < 0:
            raise SourceError("marker count must be ≥ 0")
        self.count = count
        self.description = f"marker every {period_s:g} s" + (f" × {count}" if count is not None else "")

    def marker_start(self, k: int) -> int:
        return k * self.period_samples

    def blocks(self) -> Iterator[Samples]:
        total = None if self.count is None else self.count * self.period_samples
        position = 0
        n = self.marker.size
        while total is None or position < total:
            block = np.zeros(FRAME_SAMPLES, dtype=np.float32)
            end = position + FRAME_SAMPLES
            # markers that overlap [position, end): those starting in (position - n, end)
            first = max(0, -(-(position - n + 1) // self.period_samples))
            k = first
            while k * self.period_samples < end and (self.count is None or k < self.count):
                start = k * self.period_samples
                lo, hi = max(start, position), min(start + n, end)
                block[lo - position : hi - position] = self.marker[lo - start : hi - start]
                k += 1
            yield block
            position = end


class ToneSource:
    """A sine at `frequency` Hz (phase-continuous across blocks); endless unless `duration_s` is given."""

    def __init__(self, frequency: float = 440.0, *, amplitude: float = 0.5, duration_s: float | None = None) -> None:
        if not 0 < frequency < SAMPLE_RATE / 2:
            raise SourceError(f"tone frequency must be between 0 and {SAMPLE_RATE // 2} Hz, not {frequency:g}")
        self.frequency = frequency
        self.amplitude = amplitude
        self.duration_s = duration_s
        self.description = f"tone {frequency:g} Hz"

    def blocks(self) -> Iterator[Samples]:
        total = None if self.duration_s is None else math.ceil(self.duration_s * SAMPLE_RATE / FRAME_SAMPLES)
        step = 2 * math.pi * self.frequency / SAMPLE_RATE
        index = np.arange(FRAME_SAMPLES, dtype=np.float64)
        b = 0
        while total is None or b < total:
            # phase from the absolute sample index, reduced mod 2π so hours of tone stay exact
            phase0 = math.fmod(b * FRAME_SAMPLES * step, 2 * math.pi)
            yield (self.amplitude * np.sin(phase0 + step * index)).astype(np.float32)
            b += 1


class LineInSource:
    """The sound card's input (sounddevice/PortAudio), 48 kHz mono; paced by the card itself.

    Checks at construction that an input device exists. `overflows` counts blocks the card dropped.

    `last_capture_ns` is when the first sample of the block last yielded reached the ADC, on `clock` (the
    broadcast clock on the hub): PortAudio's `inputBufferAdcTime` seen from the callback's own reading of the
    clock, so the host's capture buffering is measured, not guessed. Where the host gives no ADC time,
    `adc_time_fallbacks` counts the blocks stamped at the callback's time minus one block instead.
    """

    def __init__(
        self,
        device: int | str | None = None,
        *,
        queue_blocks: int = 50,
        clock: Callable[[], int] = time.time_ns,
        stall_s: float = 5.0,
    ) -> None:
        try:
            import sounddevice as sd
        except (OSError, ImportError) as exc:  # PortAudio library missing
            raise SourceError(f"line-in unavailable: cannot load PortAudio ({exc})") from exc
        try:
            info: Any = sd.query_devices(device, kind="input")
        except (ValueError, sd.PortAudioError) as exc:
            which = "no default input device" if device is None else f"no input device {device!r}"
            raise SourceError(f"line-in unavailable: {which} (PortAudio: {exc})") from exc
        if int(info["max_input_channels"]) < 1:
            raise SourceError(f"line-in unavailable: device {info['name']!r} has no input channels")
        self._sd = sd
        self.device = device
        self.queue_blocks = queue_blocks
        self.clock = clock
        # A card that delivers nothing for this long is gone (unplugged, its server dead): say so rather than
        # wait forever. PulseAudio's input takes ≈ 1.3 s to deliver its first block; a loaded box, longer.
        self.stall_s = stall_s
        self.overflows = 0
        self.adc_time_fallbacks = 0
        self.last_capture_ns: int | None = None
        self.description = f"line-in {info['name']}"

    def capture_ns(self) -> int | None:
        """When the first sample of the block last yielded was captured (None before the first block)."""
        return self.last_capture_ns

    def blocks(self) -> Iterator[Samples]:
        sd = self._sd
        pending: queue.Queue[tuple[Samples, int]] = queue.Queue(maxsize=self.queue_blocks)

        def callback(indata: Any, frames: int, time_info: Any, status: Any) -> None:
            now = self.clock()
            if status.input_overflow:
                self.overflows += 1
            age = float(time_info.currentTime) - float(time_info.inputBufferAdcTime)
            if time_info.inputBufferAdcTime > 0 and 0.0 <= age < 1.0:
                captured = now - round(age * 1e9)
            else:  # no ADC time from this host API: the block's first sample is at least a block old
                self.adc_time_fallbacks += 1
                captured = now - frames * 1_000_000_000 // SAMPLE_RATE
            try:
                pending.put_nowait((np.array(indata[:, 0], dtype=np.float32), captured))
            except queue.Full:
                self.overflows += 1

        try:
            stream = sd.InputStream(
                samplerate=SAMPLE_RATE,
                blocksize=FRAME_SAMPLES,
                channels=1,
                dtype="float32",
                device=self.device,
                callback=callback,
            )
            stream.start()
        except sd.PortAudioError as exc:
            raise SourceError(f"line-in unavailable: {exc}") from exc
        try:
            while True:
                try:  # blocksize=FRAME_SAMPLES: PortAudio hands us whole blocks
                    block, self.last_capture_ns = pending.get(timeout=self.stall_s)
                except queue.Empty:
                    raise SourceError(
                        f"line-in stalled: no audio from {self.description!r} for {self.stall_s:g} s"
                    ) from None
                yield block
        finally:
            # abort, not stop: nothing captured is wanted any more, and a stalled host can take tens of
            # seconds to drain (a suspended PulseAudio source: ≈ 40 s in stop())
            stream.abort()
            stream.close()


def open_source(spec: str, *, loop: bool = False) -> Source:
    """A source from a spec: "marker", "marker:0.5" (period, s), "line-in", "tone:440", or a path/URL."""
    kind, _, arg = spec.partition(":")
    if kind == "marker":
        return MarkerSource(_number(spec, arg, 1.0))
    if kind == "tone":
        return ToneSource(_number(spec, arg, 440.0))
    if spec in ("line-in", "linein"):
        return LineInSource()
    if kind == "line-in":
        return LineInSource(int(arg) if arg.isdigit() else arg)
    return FileSource(spec, loop=loop)


def _number(spec: str, arg: str, default: float) -> float:
    if not arg:
        return default
    try:
        return float(arg)
    except ValueError:
        raise SourceError(f"bad source {spec!r}: {arg!r} is not a number") from None
