"""A C library through ctypes with its functions' types declared: the sound sinks' bindings (libpulse, alsa-lib)."""

from __future__ import annotations

import ctypes
from collections.abc import Iterable
from typing import Any


def bind(soname: str, signatures: Iterable[tuple[str, Any, list[Any]]]) -> Any:
    """`soname` loaded, each (name, restype, argtypes) of `signatures` declared on it, so ctypes converts arguments
    and results instead of guessing ints. Raises OSError when the library is not installed."""
    lib = ctypes.CDLL(soname)
    for name, restype, argtypes in signatures:
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    return lib
