"""Sinks: where rendered audio goes, and who owns the DAC's pace.

Every sink runs the same playout contract (`Renderer.render(n, dac_local_ns)`, see `render.py`); sinks
differ only in where the samples go and how the DAC instant is known:

- `TimedSink`: no sound card. Consumes samples at a real-time rate on the true (system) clock, optionally
  with a simulated DAC rate error, and knows exactly when each block "reaches the DAC" (true time). Tests and
  benchmarks measure latency and skew with it. Optionally writes a WAV file plus a JSON sidecar that dates
  every sample.
- `WavSink`: a `TimedSink` that writes a WAV file (`citycast site --sink wav:PATH`). Paced in real time by
  default, because the renderer behind it plays live frames that arrive in real time; `paced=False` renders as
  fast as asked (offline rendering of a file source), the DAC instants still advancing at the nominal rate.
- `SoundDeviceSink`: the real sound card through PortAudio (`sounddevice`). The DAC instant comes from
  PortAudio's output timing, filtered by `DacClock`, so drift correction sees where the card really is.
- `PulseSink` (`citycast.media.pulse_sink`): PulseAudio/PipeWire through the server's own timing reports.
- `AlsaSink` (`citycast.media.alsa_sink`): ALSA directly (or PipeWire through its ALSA plugin), dated by the
  device's status timestamps.

`open_sink("timed" | "timed:PPM" | "wav:PATH" | "device[:NAME]" | "alsa[:PCM]" | "pulse[:SINK]" | "auto", clock)`
builds one from a CLI spec. `auto` (a site's default) is `alsa:pipewire` where PipeWire runs with its ALSA plugin,
else `pulse` where a pulse server is there to play to, else `device`: each the sink that dates samples best on such
a box (docs/benchmarks.md, "Through a real sound stack").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import time
import wave
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from citycast.clock.local import Clock, SystemClock
from citycast.media.audio import MIN_LEAD_NS, SAMPLE_RATE, samples_to_ns
from citycast.media.dac_clock import DacClock
from citycast.media.render import Renderer, Samples

BlockCallback = Callable[[int, Samples], None]
"""`on_block(dac_ns, samples)`: called once per block with the DAC instant of its first sample (true time for
a timed sink, local time for a sound-card sink) and the samples as rendered."""


class SinkError(RuntimeError):
    """A sink cannot be built or run (no device, bad spec, renderer broke the contract)."""


class Sink(Protocol):
    sample_rate: int
    xruns: int  # times the sink needed audio and render() came too late (the sink starved)

    async def run(self, renderer: Renderer) -> None:
        """Play until cancelled (or, for a bounded sink, until done). Cancellation stops promptly and releases
        the sink's resources."""
        ...


def _checked(samples: Samples, n: int) -> Samples:
    out = np.asarray(samples, dtype=np.float32)
    if out.shape != (n,):
        raise SinkError(f"renderer returned shape {out.shape}, expected ({n},)")
    return out


checked_block = _checked  # for the sinks in their own modules (pulse_sink)


def _pcm16(samples: Samples) -> bytes:
    return (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


class TimedSink:
    """A DAC simulated on the true system clock (`time.time_ns`).

    Block k of `block` samples reaches the DAC at true time
    `start_true_ns + k * block * 1e9 / (48000 * (1 + dac_ppm * 1e-6))` (a positive `dac_ppm` is a DAC that
    runs fast). The sink calls `renderer.render(block, clock.at(dac_true_ns))` — the DAC instant on the site's
    *local* clock — `lead_ns` before that instant (like a sound card's buffer), sleeping in asyncio in
    between. By default the lead is 20 ms or one block, whichever is longer: a card of two periods wakes its writer
    when one has played, so the block written then has the other period's length to spare, never less. A block
    whose samples are only ready after its DAC instant (woke too late, or render() too slow) counts one xrun; it
    is still logged and written, on the DAC's fixed schedule, as the DAC would have consumed it.

    Outputs, all optional: `wav_path` (16-bit mono WAV at 48 kHz, written and its header made valid every half
    second) with a JSON sidecar `<wav_path>.json` = {start_true_ns, block, dac_ppm, sample_rate, blocks, xruns} so
    that sample i of the WAV reached the DAC at `true_time_of_sample(i)`; `on_block(dac_true_ns, samples)` for in-
    process analysis. `start_true_ns` defaults to "now + lead" when `run()` starts. With `duration_s`, `run()`
    returns once the last sample of ceil(duration_s * 48000 / block) blocks has reached the DAC.

    `paced=False` drops the real-time pacing (no sleeps, no xruns): the DAC instants still follow the formula
    above, but blocks are rendered as fast as the renderer answers (offline rendering).
    """

    def __init__(
        self,
        clock: Clock | None = None,
        *,
        dac_ppm: float = 0.0,
        block: int = 960,
        lead_ns: int | None = None,
        wav_path: Path | None = None,
        on_block: BlockCallback | None = None,
        duration_s: float | None = None,
        start_true_ns: int | None = None,
        paced: bool = True,
    ) -> None:
        if block <= 0:
            raise SinkError(f"block must be positive, got {block}")
        if lead_ns is not None and lead_ns < 0:
            raise SinkError(f"lead_ns must be >= 0, got {lead_ns}")
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.sample_rate = SAMPLE_RATE
        self.dac_ppm = dac_ppm
        self.block = block
        self.lead_ns = lead_ns if lead_ns is not None else max(MIN_LEAD_NS, samples_to_ns(block))
        self.wav_path = Path(wav_path) if wav_path is not None else None
        self.on_block = on_block
        self.duration_s = duration_s
        self.start_true_ns = start_true_ns
        self.paced = paced
        self.xruns = 0
        self.blocks = 0  # blocks rendered so far
        self._ns_per_sample = 1e9 / (SAMPLE_RATE * (1.0 + dac_ppm * 1e-6))

    @property
    def sidecar_path(self) -> Path | None:
        return None if self.wav_path is None else self.wav_path.with_name(self.wav_path.name + ".json")

    def true_time_of_sample(self, i: float) -> float:
        """True time (ns) at which sample `i` (counted from the first rendered sample) reaches the DAC."""
        if self.start_true_ns is None:
            raise SinkError("start time not known yet: pass start_true_ns or call run() first")
        return self.start_true_ns + i * self._ns_per_sample

    def _dac_true_ns(self, k: int) -> int:
        return round(self.true_time_of_sample(k * self.block))

    def _write_sidecar(self) -> None:
        path = self.sidecar_path
        if path is None:
            return
        meta = {
            "start_true_ns": self.start_true_ns,
            "block": self.block,
            "dac_ppm": self.dac_ppm,
            "sample_rate": self.sample_rate,
            "blocks": self.blocks,
            "xruns": self.xruns,
        }
        path.write_text(json.dumps(meta, indent=2) + "\n")

    async def run(self, renderer: Renderer) -> None:
        if self.start_true_ns is None:
            self.start_true_ns = time.time_ns() + self.lead_ns
        total = None
        if self.duration_s is not None:
            total = math.ceil(self.duration_s * self.sample_rate / self.block - 1e-9)
        wav: wave.Wave_write | None = None
        # Writing (and re-patching the header) per block costs more than rendering a block; batch it.
        pending = bytearray()
        flush_bytes = self.sample_rate  # half a second of 16-bit mono
        try:
            if self.wav_path is not None:
                wav = wave.open(str(self.wav_path), "wb")  # noqa: SIM115 (closed in finally)
                wav.setnchannels(1)
                wav.setsampwidth(2)
                wav.setframerate(self.sample_rate)
                self._write_sidecar()
            k = self.blocks
            while total is None or k < total:
                dac_true = self._dac_true_ns(k)
                if self.paced:
                    delay = dac_true - self.lead_ns - time.time_ns()
                    if delay > 0:
                        await asyncio.sleep(delay / 1e9)
                samples = _checked(renderer.render(self.block, self.clock.at(dac_true)), self.block)
                if self.paced and time.time_ns() > dac_true:
                    self.xruns += 1
                if wav is not None:
                    pending += _pcm16(samples)
                    if len(pending) >= flush_bytes:
                        wav.writeframes(pending)
                        pending.clear()
                if self.on_block is not None:
                    self.on_block(dac_true, samples)
                k += 1
                self.blocks = k
                if not self.paced:
                    await asyncio.sleep(0)  # stay cancellable
            if self.paced:
                end = self._dac_true_ns(k)
                delay = end - time.time_ns()
                if delay > 0:
                    await asyncio.sleep(delay / 1e9)
        finally:
            if wav is not None:
                if pending:
                    wav.writeframes(pending)
                wav.close()
                self._write_sidecar()


class WavSink(TimedSink):
    """A `TimedSink` whose output is a WAV file (plus its JSON sidecar): `citycast site --sink wav:PATH`.

    Paced in real time at the nominal rate (dac_ppm=0) by default, because live playout needs frames that
    arrive in real time; pass `paced=False` to render a file source offline as fast as the renderer answers.
    """

    def __init__(
        self,
        wav_path: Path,
        clock: Clock | None = None,
        *,
        block: int = 960,
        lead_ns: int = 20_000_000,
        on_block: BlockCallback | None = None,
        duration_s: float | None = None,
        start_true_ns: int | None = None,
        paced: bool = True,
    ) -> None:
        super().__init__(
            clock,
            block=block,
            lead_ns=lead_ns,
            wav_path=wav_path,
            on_block=on_block,
            duration_s=duration_s,
            start_true_ns=start_true_ns,
            paced=paced,
        )


# --- the sound card ----------------------------------------------------------------------------------------


def _sounddevice() -> ModuleType:
    """Import sounddevice lazily: importing it initialises PortAudio (and caches the device list)."""
    try:
        import sounddevice
    except (ImportError, OSError) as exc:  # OSError: libportaudio2 missing
        raise SinkError(f"no audio output device: PortAudio unavailable ({exc})") from exc
    module: ModuleType = sounddevice
    return module


@dataclass(frozen=True)
class OutputDevice:
    index: int
    name: str
    hostapi: str
    max_output_channels: int
    default_samplerate: float
    default_low_output_latency: float


def list_devices() -> list[OutputDevice]:
    """Output-capable PortAudio devices, as `SoundDeviceSink(device=...)` accepts them (index or name)."""
    sd = _sounddevice()
    hostapis = sd.query_hostapis()
    out = []
    for dev in sd.query_devices():
        if dev["max_output_channels"] > 0:
            out.append(
                OutputDevice(
                    index=int(dev["index"]),
                    name=str(dev["name"]),
                    hostapi=str(hostapis[dev["hostapi"]]["name"]),
                    max_output_channels=int(dev["max_output_channels"]),
                    default_samplerate=float(dev["default_samplerate"]),
                    default_low_output_latency=float(dev["default_low_output_latency"]),
                )
            )
    return out


class SoundDeviceSink:
    """The sound card, through PortAudio (`sounddevice.OutputStream`, 48 kHz float32).

    In PortAudio's callback, the first sample of the buffer reaches the DAC at local time
    `clock.now_ns() + (outputBufferDacTime - currentTime) * 1e9` (both PortAudio stream time); when the host
    API reports 0 for them, `now + stream.latency` stands in (counted in `dac_time_fallbacks`). The callback
    calls `renderer.render(frames, dac_local_ns)` from PortAudio's thread (renderers are thread-safe) and
    duplicates the mono samples to every output channel. `status.output_underflow` counts as an xrun.

    Seen through the ALSA 'pulse' plugin (PulseAudio null sink): PortAudio primes the buffer with three
    callbacks whose audio never plays, then 0.4–2 s pass before the callbacks (and DAC instants) run steadily
    (about stream latency + one block ahead, spaced to within ~0.1 ms). A timestamp-driven renderer copes:
    it renders what is due at the instant it is asked for.

    `device`: index or (sub)name as sounddevice accepts it, None for the default output. `channels`: None
    picks min(2, device's maximum). `latency`: "low", "high" or seconds. Building the sink raises
    `SinkError("no audio output device: …")` when there is no such output device.
    """

    def __init__(
        self,
        clock: Clock | None = None,
        *,
        device: int | str | None = None,
        blocksize: int = 960,
        latency: str | float = "low",
        channels: int | None = None,
        on_block: BlockCallback | None = None,
        duration_s: float | None = None,
        filter_dac_time: bool = True,
    ) -> None:
        self._sd = _sounddevice()
        try:
            info: dict[str, Any] = self._sd.query_devices(device, kind="output")
        except (ValueError, self._sd.PortAudioError) as exc:
            which = "default" if device is None else repr(device)
            raise SinkError(f"no audio output device: {which} ({exc})") from exc
        max_ch = int(info["max_output_channels"])
        if max_ch < 1:
            raise SinkError(f"no audio output device: {info['name']!r} has no output channels")
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.sample_rate = SAMPLE_RATE
        self.device = int(info["index"])
        self.device_name = str(info["name"])
        self.channels = channels if channels is not None else min(2, max_ch)
        if not 1 <= self.channels <= max_ch:
            raise SinkError(f"{self.device_name!r} has {max_ch} output channels, asked for {self.channels}")
        self.blocksize = blocksize
        self.latency = latency
        self.on_block = on_block
        self.duration_s = duration_s
        self.xruns = 0
        self.blocks = 0
        self.frames = 0
        self.dac_time_fallbacks = 0
        # PortAudio's DAC times jitter (by up to a ms through the ALSA pulse plugin): the renderer gets the
        # line DacClock fits through them instead; None passes them through raw.
        self.dac_clock: DacClock | None = DacClock(sample_rate=SAMPLE_RATE) if filter_dac_time else None
        # outputBufferDacTime - currentTime in the last callback
        self.last_output_delay_s: float | None = None
        self.stream_latency_s: float | None = None  # what PortAudio reported when the stream opened

    async def run(self, renderer: Renderer) -> None:
        sd = self._sd
        loop = asyncio.get_running_loop()
        finished = asyncio.Event()
        failure: list[BaseException] = []
        total = None if self.duration_s is None else round(self.duration_s * self.sample_rate)
        latency_box: list[float] = []

        def on_finished() -> None:
            with contextlib.suppress(RuntimeError):  # the loop may already be closed
                loop.call_soon_threadsafe(finished.set)

        def callback(outdata: Any, frames: int, time_info: Any, status: Any) -> None:
            now = self.clock.now_ns()
            try:
                if status.output_underflow:
                    self.xruns += 1
                dac_time = float(time_info.outputBufferDacTime)
                current = float(time_info.currentTime)
                if dac_time > 0.0 and current > 0.0:
                    delay = dac_time - current
                else:
                    delay = latency_box[0] if latency_box else 0.0
                    self.dac_time_fallbacks += 1
                self.last_output_delay_s = delay
                dac_local = now + round(delay * 1e9)
                if self.dac_clock is not None:
                    dac_local = self.dac_clock.report(self.frames, dac_local)
                samples = _checked(renderer.render(frames, dac_local), frames)
                outdata[:] = samples[:, np.newaxis]
                if self.on_block is not None:
                    self.on_block(dac_local, samples)
                self.blocks += 1
                self.frames += frames
                if total is not None and self.frames >= total:
                    raise sd.CallbackStop
            except sd.CallbackStop:
                raise
            except BaseException as exc:
                failure.append(exc)
                outdata.fill(0)
                raise sd.CallbackAbort from exc

        try:
            stream = sd.OutputStream(
                samplerate=self.sample_rate,
                blocksize=self.blocksize,
                device=self.device,
                channels=self.channels,
                dtype="float32",
                latency=self.latency,
                callback=callback,
                finished_callback=on_finished,
            )
        except sd.PortAudioError as exc:
            raise SinkError(f"cannot open {self.device_name!r}: {exc}") from exc
        self.stream_latency_s = float(stream.latency)
        latency_box.append(self.stream_latency_s)
        # Pa_StartStream can block for most of a second (seen with the ALSA pulse plugin): keep it off the
        # event loop. Shielded, so that a cancellation never closes the stream while start() still runs.
        starting = asyncio.ensure_future(asyncio.to_thread(stream.start))
        try:
            await asyncio.shield(starting)
            await finished.wait()
        finally:
            if not starting.done():
                with contextlib.suppress(BaseException):
                    await starting
            # abort() drops what is queued instead of draining it: cancellation must be prompt.
            with contextlib.suppress(sd.PortAudioError):
                stream.abort()
            stream.close()
        if failure:
            raise SinkError(f"sound-card callback failed: {failure[0]!r}") from failure[0]


# --- from a CLI spec ---------------------------------------------------------------------------------------


def pulse_server_present(env: Mapping[str, str] | None = None) -> bool:
    """Whether a PulseAudio (or pipewire-pulse) server is there to play to, found as libpulse finds it: by
    $PULSE_SERVER, or by the native socket of the user's session or of a system-wide server."""
    env = os.environ if env is None else env
    if env.get("PULSE_SERVER"):
        return True
    places = [Path("/run/user") / str(os.getuid()) / "pulse", Path("/run/pulse"), Path("/var/run/pulse")]
    if env.get("XDG_RUNTIME_DIR"):
        places.insert(0, Path(env["XDG_RUNTIME_DIR"]) / "pulse")
    if env.get("PULSE_RUNTIME_PATH"):
        places.insert(0, Path(env["PULSE_RUNTIME_PATH"]))
    return any((place / "native").is_socket() for place in places)


# Where Debian, Raspberry Pi OS and Ubuntu put alsa-lib's plugins (pipewire-alsa's among them).
PIPEWIRE_ALSA_PLUGIN = "libasound_module_pcm_pipewire.so"
ALSA_PLUGIN_DIRS = tuple(
    Path(d, "alsa-lib")
    for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib/arm-linux-gnueabihf", "/usr/lib")
)


def pipewire_alsa_present(
    env: Mapping[str, str] | None = None, plugin_dirs: tuple[Path, ...] = ALSA_PLUGIN_DIRS
) -> bool:
    """Whether PipeWire runs (its socket, found as its clients find it) and its ALSA plugin (pipewire-alsa) is
    installed: then ALSA's `pipewire` PCM plays through the graph and dates samples by the graph's clock."""
    env = os.environ if env is None else env
    if not any((d / PIPEWIRE_ALSA_PLUGIN).is_file() for d in plugin_dirs):
        return False
    remote = env.get("PIPEWIRE_REMOTE", "pipewire-0")
    if remote.startswith("/"):
        return Path(remote).is_socket()
    places = [Path(env[var]) for var in ("PIPEWIRE_RUNTIME_DIR", "XDG_RUNTIME_DIR") if env.get(var)]
    places.append(Path("/run/user") / str(os.getuid()))
    return any((place / remote).is_socket() for place in places)


def auto_sink_kind(env: Mapping[str, str] | None = None, plugin_dirs: tuple[Path, ...] = ALSA_PLUGIN_DIRS) -> str:
    """What `--sink auto` plays through: PipeWire through its ALSA plugin where both are there (it dates samples
    to a few µs; through pipewire-pulse to 0.5-0.8 ms), else a pulse server through its own reports, else the
    card through PortAudio."""
    if pipewire_alsa_present(env, plugin_dirs):
        return "alsa:pipewire"
    return "pulse" if pulse_server_present(env) else "device"


def open_sink(
    spec: str,
    clock: Clock | None = None,
    *,
    block: int = 960,
    duration_s: float | None = None,
    on_block: BlockCallback | None = None,
) -> Sink:
    """Build a sink from `timed`, `timed:PPM`, `wav:PATH`, `device`, `device:NAME` (NAME: name or index),
    `device-raw[:NAME]` (PortAudio's DAC times unfiltered, to compare), `alsa[:PCM]` (an ALSA PCM, `default` if none
    is named: `hw:0`, `pipewire:NODE=…`), `pulse` or `pulse:SINK`, or `auto` (`auto_sink_kind()`)."""
    kind, _, arg = spec.partition(":")
    if kind == "auto":
        if arg:
            raise SinkError(f"bad sink spec {spec!r}: auto takes no name (pulse:SINK or device:NAME do)")
        kind, _, arg = auto_sink_kind().partition(":")
    if kind == "timed":
        try:
            ppm = float(arg) if arg else 0.0
        except ValueError as exc:
            raise SinkError(f"bad sink spec {spec!r}: PPM must be a number") from exc
        return TimedSink(clock, dac_ppm=ppm, block=block, on_block=on_block, duration_s=duration_s)
    if kind == "wav":
        if not arg:
            raise SinkError(f"bad sink spec {spec!r}: expected wav:PATH")
        return WavSink(Path(arg), clock, block=block, on_block=on_block, duration_s=duration_s)
    if kind in ("device", "device-raw"):
        device: int | str | None = None
        if arg:
            device = int(arg) if arg.isdigit() else arg
        return SoundDeviceSink(
            clock,
            device=device,
            blocksize=block,
            on_block=on_block,
            duration_s=duration_s,
            filter_dac_time=kind == "device",
        )
    if kind == "alsa":
        from citycast.media.alsa_sink import AlsaSink

        return AlsaSink(clock, device=arg or "default", block=block, on_block=on_block, duration_s=duration_s)
    if kind == "pulse":
        from citycast.media.pulse_sink import PulseSink

        return PulseSink(clock, device=arg or None, block=block, on_block=on_block, duration_s=duration_s)
    raise SinkError(
        f"unknown sink spec {spec!r}: expected auto, timed[:PPM], wav:PATH, device[:NAME], alsa[:PCM] or pulse[:SINK]"
    )
