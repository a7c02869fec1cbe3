"""A PulseAudio record stream with an explicit channel map, through libpulse-simple (ctypes).

`pasimple` opens every stream with PulseAudio's default channel map for its channel count, which exists only for up
to six channels: recording a 10-channel card through it fails ("invalid argument"), and a map that differs from the
card's would make the server remix channels into one another. Here the map is given: mono for one channel, else
aux0..aux(n-1), the same map the pulse bench gives its card, so channel i of the recording is the card's channel i.
"""

from __future__ import annotations

import ctypes

PA_STREAM_RECORD = 2
PA_SAMPLE_FLOAT32LE = 5
PA_CHANNEL_POSITION_MONO = 0
PA_CHANNEL_POSITION_AUX0 = 12
PA_CHANNELS_MAX = 32
_UNSET = 0xFFFFFFFF  # (uint32_t) -1: "the server's default" in pa_buffer_attr


class PulseRecordError(RuntimeError):
    pass


class _SampleSpec(ctypes.Structure):
    _fields_ = [("format", ctypes.c_int), ("rate", ctypes.c_uint32), ("channels", ctypes.c_uint8)]


class _ChannelMap(ctypes.Structure):
    _fields_ = [("channels", ctypes.c_uint8), ("map", ctypes.c_int * PA_CHANNELS_MAX)]


class _BufferAttr(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint32) for name in ("maxlength", "tlength", "prebuf", "minreq", "fragsize")]


_lib: ctypes.CDLL | None = None


def _libpulse_simple() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        try:
            lib = ctypes.CDLL("libpulse-simple.so.0")
        except OSError as exc:
            raise PulseRecordError(f"no PulseAudio client library: {exc}") from exc
        lib.pa_simple_new.restype = ctypes.c_void_p
        lib.pa_simple_new.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                                      ctypes.c_char_p, ctypes.POINTER(_SampleSpec), ctypes.POINTER(_ChannelMap),
                                      ctypes.POINTER(_BufferAttr), ctypes.POINTER(ctypes.c_int)]  # fmt: skip
        lib.pa_simple_read.restype = ctypes.c_int
        lib.pa_simple_read.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_int)]
        lib.pa_simple_get_latency.restype = ctypes.c_uint64
        lib.pa_simple_get_latency.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)]
        lib.pa_simple_free.restype = None
        lib.pa_simple_free.argtypes = [ctypes.c_void_p]
        _lib = lib
    return _lib


def _why(error: ctypes.c_int) -> str:
    try:
        strerror = ctypes.CDLL("libpulse.so.0").pa_strerror
    except OSError:
        return f"error {error.value}"
    strerror.restype = ctypes.c_char_p
    strerror.argtypes = [ctypes.c_int]
    text: bytes | None = strerror(error.value)
    return text.decode(errors="replace") if text else f"error {error.value}"


class RecordStream:
    """Float32 samples of `channels` channels from `device` (a source, e.g. "card.monitor") of `server`, read
    `fragsize` bytes at a time. Blocking: one thread a stream."""

    def __init__(self, server: str, device: str, channels: int, rate: int, *, fragsize: int, name: str) -> None:
        if not 1 <= channels <= PA_CHANNELS_MAX:
            raise PulseRecordError(f"a stream has 1 to {PA_CHANNELS_MAX} channels, not {channels}")
        lib = _libpulse_simple()
        spec = _SampleSpec(PA_SAMPLE_FLOAT32LE, rate, channels)
        cmap = _ChannelMap()
        cmap.channels = channels
        for i in range(channels):
            cmap.map[i] = PA_CHANNEL_POSITION_MONO if channels == 1 else PA_CHANNEL_POSITION_AUX0 + i
        attr = _BufferAttr(_UNSET, _UNSET, _UNSET, _UNSET, fragsize)
        error = ctypes.c_int(0)
        handle = lib.pa_simple_new(server.encode(), b"citycast-bench", PA_STREAM_RECORD, device.encode(),
                                   name.encode(), ctypes.byref(spec), ctypes.byref(cmap), ctypes.byref(attr),
                                   ctypes.byref(error))  # fmt: skip
        if not handle:
            raise PulseRecordError(f"cannot record {device}: {_why(error)}")
        self._lib = lib
        self._handle: int | None = handle

    def read(self, nbytes: int) -> bytes:
        if self._handle is None:
            raise PulseRecordError("the stream is closed")
        buf = ctypes.create_string_buffer(nbytes)
        error = ctypes.c_int(0)
        if self._lib.pa_simple_read(self._handle, buf, nbytes, ctypes.byref(error)) < 0:
            raise PulseRecordError(f"reading failed: {_why(error)}")
        return buf.raw

    def get_latency(self) -> int:
        """µs since the next unread sample was captured, by the server's account (0 when that is negative)."""
        if self._handle is None:
            raise PulseRecordError("the stream is closed")
        error = ctypes.c_int(0)
        latency = int(self._lib.pa_simple_get_latency(self._handle, ctypes.byref(error)))
        if latency == 0xFFFFFFFFFFFFFFFF:
            raise PulseRecordError(f"no latency: {_why(error)}")
        return latency

    def close(self) -> None:
        if self._handle is not None:
            self._lib.pa_simple_free(self._handle)
            self._handle = None
