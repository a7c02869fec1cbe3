"""libopus's decoder, called directly (ctypes): the site's hot path without PyAV.

Through PyAV every packet becomes an `av.Packet`, a list of `AudioFrame`s and an ndarray conversion, and importing
`av` maps all of FFmpeg (≈ 25 MB of a site's resident memory). A site decodes one stream of mono 48 kHz Opus, which
is four C functions of libopus. The system's libopus (Debian `libopus0`) is used, else the copy bundled in PyAV's
wheel (`av.libs`), which is the same library PyAV itself would call; `av` is not imported either way.

Concealment is libopus's own: a NULL packet of `frame_size` samples (a multiple of 2.5 ms) continues the last
decoded audio, in the mode of the last packet (RFC 6716 §4.4).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
from functools import cache
from pathlib import Path

import numpy as np

from citycast.media.render import Samples

MAX_FRAME_SAMPLES = 5760  # 120 ms at 48 kHz: the longest Opus packet
OPUS_OK = 0
OPUS_RESET_STATE = 4028  # opus_decoder_ctl request (opus_defines.h)


class LibOpusError(RuntimeError):
    """libopus cannot be found or refuses to make a decoder."""


def _candidates() -> list[str]:
    found = [name for name in ("libopus.so.0", ctypes.util.find_library("opus")) if name]
    spec = importlib.util.find_spec("av")
    if spec is not None and spec.origin is not None:  # PyAV's wheel ships its own libopus; no need to import av
        libs = Path(spec.origin).parent.parent / "av.libs"
        found += sorted(str(p) for p in libs.glob("libopus*.so*"))
    return found


@cache
def load() -> ctypes.CDLL:
    """libopus, its functions typed. Raises `LibOpusError` if there is none."""
    errors = []
    for name in _candidates():
        try:
            lib = ctypes.CDLL(name)
        except OSError as e:
            errors.append(str(e))
            continue
        lib.opus_decoder_create.restype = ctypes.c_void_p
        lib.opus_decoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
        lib.opus_decoder_destroy.restype = None
        lib.opus_decoder_destroy.argtypes = [ctypes.c_void_p]
        lib.opus_decode_float.restype = ctypes.c_int
        lib.opus_decode_float.argtypes = [
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.c_int32,
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_int,
        ]
        lib.opus_decoder_ctl.restype = ctypes.c_int
        lib.opus_decoder_ctl.argtypes = [ctypes.c_void_p, ctypes.c_int]
        return lib
    raise LibOpusError("libopus not found (install the Debian package libopus0): " + "; ".join(errors))


class LibOpusDecoder:
    """One libopus decoder state, mono float at `sample_rate`. Not thread-safe (playout holds its own lock)."""

    def __init__(self, sample_rate: int = 48_000) -> None:
        self._lib = load()
        err = ctypes.c_int(0)
        state = self._lib.opus_decoder_create(sample_rate, 1, ctypes.byref(err))
        if err.value != OPUS_OK or not state:
            raise LibOpusError(f"opus_decoder_create failed: error {err.value}")
        self._state: int = state
        self._out = np.empty(MAX_FRAME_SAMPLES, np.float32)
        self._out_ptr = self._out.ctypes.data

    def decode(self, packet: bytes | None, frame_size: int = MAX_FRAME_SAMPLES) -> Samples | None:
        """The packet's samples (a new array), or libopus's concealment of `frame_size` samples when `packet` is
        None. None if libopus refused the packet (corrupt)."""
        n = self._lib.opus_decode_float(
            self._state, packet, len(packet) if packet is not None else 0, self._out_ptr, frame_size, 0
        )
        if n <= 0:
            return None
        return self._out[:n].copy()

    def reset(self) -> None:
        self._lib.opus_decoder_ctl(self._state, OPUS_RESET_STATE)

    def __del__(self) -> None:
        state, self._state = getattr(self, "_state", 0), 0
        if state:
            self._lib.opus_decoder_destroy(state)
