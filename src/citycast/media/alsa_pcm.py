"""An ALSA playback PCM through alsa-lib (ctypes), with the device's own status timestamps.

`snd_pcm_status()` answers, in one call, the stream's state, a timestamp (CLOCK_MONOTONIC, set below) and the delay:
how many frames already written will reach the DAC before the next one written. So the next frame plays at
`timestamp + delay / rate`: what a Raspberry Pi's card (or a USB DAC) says about itself, with nothing in between.
Plugins answer the same call their own way: PipeWire's (`pipewire-alsa`) from the graph's clock at its last cycle,
moved on by the time since; PulseAudio's (`pulse`) from libpulse's interpolated latency.

PortAudio sits on this same API but hands its writer only a DAC time per callback, computed in its own thread; and
pyalsaaudio, the one PyPI binding, exposes neither `snd_pcm_status` nor its delay (only `htimestamp` and `avail`,
which through a plugin move a whole graph cycle at a time). Hence this small binding of the dozen calls needed.
"""

from __future__ import annotations

import ctypes
import errno
import time
from dataclasses import dataclass
from typing import Any

from citycast.media.clib import bind

SND_PCM_STREAM_PLAYBACK = 0
SND_PCM_ACCESS_RW_INTERLEAVED = 3
SND_PCM_FORMAT_S16_LE = 2
SND_PCM_FORMAT_FLOAT_LE = 14
SND_PCM_TSTAMP_ENABLE = 1
SND_PCM_TSTAMP_TYPE_MONOTONIC = 1
STATE_NAMES = ("open", "setup", "prepared", "running", "xrun", "draining", "paused", "suspended", "disconnected")
STATE_RUNNING = 3
FORMATS = {SND_PCM_FORMAT_FLOAT_LE: "<f4", SND_PCM_FORMAT_S16_LE: "<i2"}  # tried in this order

_p = ctypes.c_void_p
_pp = ctypes.POINTER(ctypes.c_void_p)
_uint_p = ctypes.POINTER(ctypes.c_uint)
_int_p = ctypes.POINTER(ctypes.c_int)
_ulong_p = ctypes.POINTER(ctypes.c_ulong)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_c_int, _c_long, _c_ulong, _c_uint = ctypes.c_int, ctypes.c_long, ctypes.c_ulong, ctypes.c_uint
_SIGNATURES: list[tuple[str, Any, list[Any]]] = [
    ("snd_strerror", ctypes.c_char_p, [_c_int]),
    ("snd_pcm_open", _c_int, [_pp, ctypes.c_char_p, _c_int, _c_int]),
    ("snd_pcm_close", _c_int, [_p]),
    ("snd_pcm_hw_params_malloc", _c_int, [_pp]),
    ("snd_pcm_hw_params_free", None, [_p]),
    ("snd_pcm_hw_params_any", _c_int, [_p, _p]),
    ("snd_pcm_hw_params_set_rate_resample", _c_int, [_p, _p, _c_uint]),
    ("snd_pcm_hw_params_set_access", _c_int, [_p, _p, _c_int]),
    ("snd_pcm_hw_params_test_format", _c_int, [_p, _p, _c_int]),
    ("snd_pcm_hw_params_set_format", _c_int, [_p, _p, _c_int]),
    ("snd_pcm_hw_params_set_channels_near", _c_int, [_p, _p, _uint_p]),
    ("snd_pcm_hw_params_set_rate_near", _c_int, [_p, _p, _uint_p, _int_p]),
    ("snd_pcm_hw_params_set_period_size_near", _c_int, [_p, _p, _ulong_p, _int_p]),
    ("snd_pcm_hw_params_set_buffer_size_near", _c_int, [_p, _p, _ulong_p]),
    ("snd_pcm_hw_params", _c_int, [_p, _p]),
    ("snd_pcm_get_params", _c_int, [_p, _ulong_p, _ulong_p]),
    ("snd_pcm_sw_params_malloc", _c_int, [_pp]),
    ("snd_pcm_sw_params_free", None, [_p]),
    ("snd_pcm_sw_params_current", _c_int, [_p, _p]),
    ("snd_pcm_sw_params_set_tstamp_mode", _c_int, [_p, _p, _c_int]),
    ("snd_pcm_sw_params_set_tstamp_type", _c_int, [_p, _p, _c_int]),
    ("snd_pcm_sw_params_set_start_threshold", _c_int, [_p, _p, _c_ulong]),
    ("snd_pcm_sw_params_set_avail_min", _c_int, [_p, _p, _c_ulong]),
    ("snd_pcm_sw_params", _c_int, [_p, _p]),
    ("snd_pcm_wait", _c_int, [_p, _c_int]),
    ("snd_pcm_avail_update", _c_long, [_p]),
    ("snd_pcm_writei", _c_long, [_p, _p, _c_ulong]),
    ("snd_pcm_recover", _c_int, [_p, _c_int, _c_int]),
    ("snd_pcm_drop", _c_int, [_p]),
    ("snd_pcm_status_malloc", _c_int, [_pp]),
    ("snd_pcm_status_free", None, [_p]),
    ("snd_pcm_status", _c_int, [_p, _p]),
    ("snd_pcm_status_get_state", _c_int, [_p]),
    ("snd_pcm_status_get_htstamp", None, [_p, ctypes.POINTER(_Timespec)]),
    ("snd_pcm_status_get_delay", _c_long, [_p]),
]


class AlsaError(RuntimeError):
    """An ALSA call failed; `code` is its negative errno."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


_lib: Any = None


def _libasound() -> Any:
    global _lib
    if _lib is None:
        try:
            _lib = bind("libasound.so.2", _SIGNATURES)
        except OSError as exc:
            raise AlsaError(f"no ALSA library (libasound2): {exc}") from exc
    return _lib


def _strerror(code: int) -> str:
    text: bytes | None = _libasound().snd_strerror(code)
    return text.decode(errors="replace") if text else f"error {code}"


def _check(code: int, what: str) -> int:
    if code < 0:
        raise AlsaError(f"{what}: {_strerror(code)}", code)
    return code


@dataclass(frozen=True)
class PcmStatus:
    state: int
    stamp_ns: int  # CLOCK_MONOTONIC when the device was read
    delay: int  # frames written that reach the DAC before the next one written

    @property
    def running(self) -> bool:
        return self.state == STATE_RUNNING

    @property
    def state_name(self) -> str:
        return STATE_NAMES[self.state] if 0 <= self.state < len(STATE_NAMES) else str(self.state)


class PlaybackPcm:
    """`name` (an ALSA PCM: `default`, `hw:0`, `plughw:1,0`, `pipewire:NODE=x`, …) opened for interleaved playback
    at `rate`, one channel if the device takes it (else the fewest it takes: the same samples on each), float32 or
    else 16-bit. The device is asked for periods of `period` frames and a ring of `buffer` frames, and starts once
    `start_at` frames are queued; `period`, `buffer` and `channels` say what it granted."""

    def __init__(self, name: str, *, rate: int, period: int, buffer: int, start_at: int) -> None:
        lib = _libasound()
        self.name = name
        handle = ctypes.c_void_p()
        _check(lib.snd_pcm_open(ctypes.byref(handle), name.encode(), SND_PCM_STREAM_PLAYBACK, 0), f"open {name!r}")
        self._pcm: ctypes.c_void_p | None = handle
        self._status = ctypes.c_void_p()
        try:
            self._configure(rate, period, buffer, start_at)
            _check(lib.snd_pcm_status_malloc(ctypes.byref(self._status)), "status")
        except BaseException:
            self.close()
            raise

    def _configure(self, rate: int, period: int, buffer: int, start_at: int) -> None:
        lib, pcm = _lib, self._pcm
        hw = ctypes.c_void_p()
        _check(lib.snd_pcm_hw_params_malloc(ctypes.byref(hw)), "hw params")
        try:
            _check(lib.snd_pcm_hw_params_any(pcm, hw), "hw params")
            _check(lib.snd_pcm_hw_params_set_rate_resample(pcm, hw, 1), "resampling")
            _check(lib.snd_pcm_hw_params_set_access(pcm, hw, SND_PCM_ACCESS_RW_INTERLEAVED), "interleaved access")
            fmt = next((f for f in FORMATS if lib.snd_pcm_hw_params_test_format(pcm, hw, f) == 0), None)
            if fmt is None:
                raise AlsaError(f"{self.name!r} takes neither float32 nor 16-bit samples")
            _check(lib.snd_pcm_hw_params_set_format(pcm, hw, fmt), "sample format")
            channels, got_rate, direction = ctypes.c_uint(1), ctypes.c_uint(rate), ctypes.c_int(0)
            _check(lib.snd_pcm_hw_params_set_channels_near(pcm, hw, ctypes.byref(channels)), "channels")
            _check(lib.snd_pcm_hw_params_set_rate_near(pcm, hw, ctypes.byref(got_rate), ctypes.byref(direction)),
                   "rate")  # fmt: skip
            if got_rate.value != rate:
                raise AlsaError(f"{self.name!r} cannot play {rate} Hz (nearest: {got_rate.value})")
            frames, direction = ctypes.c_ulong(period), ctypes.c_int(0)
            _check(lib.snd_pcm_hw_params_set_period_size_near(pcm, hw, ctypes.byref(frames), ctypes.byref(direction)),
                   "period size")  # fmt: skip
            ring = ctypes.c_ulong(max(buffer, 2 * frames.value))
            _check(lib.snd_pcm_hw_params_set_buffer_size_near(pcm, hw, ctypes.byref(ring)), "buffer size")
            _check(lib.snd_pcm_hw_params(pcm, hw), "hw params")
        finally:
            lib.snd_pcm_hw_params_free(hw)
        got_buffer, got_period = ctypes.c_ulong(), ctypes.c_ulong()
        _check(lib.snd_pcm_get_params(pcm, ctypes.byref(got_buffer), ctypes.byref(got_period)), "params")
        self.format, self.dtype, self.channels, self.rate = fmt, FORMATS[fmt], channels.value, rate
        self.buffer, self.period = got_buffer.value, got_period.value
        sw = ctypes.c_void_p()
        _check(lib.snd_pcm_sw_params_malloc(ctypes.byref(sw)), "sw params")
        try:
            _check(lib.snd_pcm_sw_params_current(pcm, sw), "sw params")
            # Timestamps on the same clock as time.monotonic_ns(), taken with every status.
            _check(lib.snd_pcm_sw_params_set_tstamp_mode(pcm, sw, SND_PCM_TSTAMP_ENABLE), "timestamps")
            _check(lib.snd_pcm_sw_params_set_tstamp_type(pcm, sw, SND_PCM_TSTAMP_TYPE_MONOTONIC), "timestamp clock")
            _check(lib.snd_pcm_sw_params_set_start_threshold(pcm, sw, min(start_at, self.buffer)), "start threshold")
            # Woken when a whole block (what was asked as the period) fits, whatever period the device granted.
            _check(lib.snd_pcm_sw_params_set_avail_min(pcm, sw, period), "avail min")
            _check(lib.snd_pcm_sw_params(pcm, sw), "sw params")
        finally:
            lib.snd_pcm_sw_params_free(sw)

    @property
    def _handle(self) -> ctypes.c_void_p:
        if self._pcm is None:
            raise AlsaError(f"{self.name!r} is closed", -errno.EBADFD)
        return self._pcm

    def wait(self, timeout_ms: int) -> bool:
        """Until the device has room for a period (True) or `timeout_ms` passed (False)."""
        return _check(_lib.snd_pcm_wait(self._handle, timeout_ms), "wait") > 0

    def avail(self) -> int:
        return _check(int(_lib.snd_pcm_avail_update(self._handle)), "avail")

    def status(self) -> PcmStatus:
        pcm = self._handle
        _check(_lib.snd_pcm_status(pcm, self._status), "status")
        ts = _Timespec()
        _lib.snd_pcm_status_get_htstamp(self._status, ctypes.byref(ts))
        return PcmStatus(
            state=int(_lib.snd_pcm_status_get_state(self._status)),
            stamp_ns=ts.tv_sec * 1_000_000_000 + ts.tv_nsec,
            delay=int(_lib.snd_pcm_status_get_delay(self._status)),
        )

    def write(self, data: bytes, frames: int) -> int:
        """Write `frames` interleaved frames; returns how many the device took (fewer only if interrupted)."""
        return _check(int(_lib.snd_pcm_writei(self._handle, data, frames)), "write")

    def recover(self, error: AlsaError) -> None:
        """After an underrun (or a suspend), prepare the stream again; what follows starts a new timeline."""
        _check(_lib.snd_pcm_recover(self._handle, error.code, 1), f"recover from {error}")

    def close(self) -> None:
        if self._status:
            _lib.snd_pcm_status_free(self._status)
            self._status = ctypes.c_void_p()
        if self._pcm is not None:
            pcm, self._pcm = self._pcm, None
            _lib.snd_pcm_drop(pcm)
            _lib.snd_pcm_close(pcm)


def monotonic_ns() -> int:
    """The clock `PcmStatus.stamp_ns` is on."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)
