"""A site's fallback sound, read without FFmpeg in the site's own process.

PyAV maps libavcodec and its codecs (≈ 15 MB of resident memory) into any process that imports it, and a site
runs for months on a box with little memory. A PCM WAV at the bus's rate, the usual fallback (a chime), is read
with the standard library; anything else is decoded once by a short-lived child process
(`python -m citycast.media.fallback_file PATH`), which writes 48 kHz mono float32 to its stdout and exits.
"""

from __future__ import annotations

import subprocess
import sys
import wave
from pathlib import Path

import numpy as np

from citycast.media.audio import SAMPLE_RATE
from citycast.media.render import Samples

DECODE_TIMEOUT_S = 60.0
MAX_SECONDS = 600  # a fallback is a chime or a short loop; a longer file is a mistake, not something to hold


class FallbackError(ValueError):
    pass


def read_wav(path: Path) -> Samples | None:
    """48 kHz PCM WAV (16, 24 or 32-bit integer, any channel count) as mono float32; None for any other file."""
    try:
        with wave.open(str(path), "rb") as w:
            rate, width, channels, n = w.getframerate(), w.getsampwidth(), w.getnchannels(), w.getnframes()
            if rate != SAMPLE_RATE or width not in (2, 3, 4) or n > MAX_SECONDS * SAMPLE_RATE:
                return None
            raw = w.readframes(n)
    except (wave.Error, EOFError):
        return None  # not a PCM WAV (or a WAV the stdlib does not read): the child decodes it
    if width == 3:  # little-endian 24-bit: widen to 32 by putting each sample in the top three bytes
        b = np.frombuffer(raw[: len(raw) - len(raw) % 3], np.uint8).reshape(-1, 3)
        wide = np.zeros((len(b), 4), np.uint8)
        wide[:, 1:] = b
        ints = wide.view("<i4").ravel()
        width = 4
    else:
        ints = np.frombuffer(raw[: len(raw) - len(raw) % width], "<i2" if width == 2 else "<i4")
    x = ints.astype(np.float32) / float(2 ** (8 * width - 1))
    frames = len(x) // channels
    mono: Samples = x[: frames * channels].reshape(frames, channels).mean(axis=1, dtype=np.float32)
    return mono


def decode_in_child(path: Path) -> Samples:
    try:
        done = subprocess.run(
            [sys.executable, "-m", "citycast.media.fallback_file", str(path)],
            capture_output=True,
            timeout=DECODE_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise FallbackError(f"decoding {path} took longer than {DECODE_TIMEOUT_S:.0f} s") from None
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        raise FallbackError(lines[-1] if lines else f"the decoder exited with {done.returncode}")
    return np.frombuffer(done.stdout, np.float32).copy()


def load(path: Path) -> Samples | None:
    """The fallback as 48 kHz mono float32 (None: an empty file). Raises FallbackError with the reason."""
    if not path.is_file():
        raise FallbackError(f"no such file: {path}")
    samples = read_wav(path)
    if samples is None:
        samples = decode_in_child(path)
    return samples if samples.size else None


def _main(argv: list[str]) -> int:
    from citycast.media.sources import FileSource, SourceError

    try:
        out = sys.stdout.buffer
        total = 0
        for block in FileSource(argv[0]).blocks():
            total += len(block)
            if total > MAX_SECONDS * SAMPLE_RATE:
                print(f"{argv[0]}: longer than {MAX_SECONDS} s: a fallback is a short sound", file=sys.stderr)
                return 1
            out.write(np.asarray(block, np.float32).tobytes())
    except SourceError as e:
        print(str(e), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
