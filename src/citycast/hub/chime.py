"""A zone's chime: the sound before every address to the zone, sent as the address's own first frames on its
channel, so every site plays it in step like the rest of the address.

A zone names its chime as "builtin" (a two-note chime the hub makes itself, nothing to install) or "file:<name>",
a file of the hub's media library. An address to several zones with different chimes plays the chime of the
first of its zones (in the order they were created) that has one: one channel carries one sound.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from citycast.media.audio import FRAME_SAMPLES, SAMPLE_RATE
from citycast.media.render import Samples

BUILTIN = "builtin"
MAX_CHIME_S = 15.0  # a chime is a prelude: a longer file is cut here rather than holding the message back
PAUSE_S = 0.3  # between the chime and the first word


@functools.cache
def builtin_chime() -> Samples:
    """Two bell-like notes falling a major third (E5, C5), each with its partials decaying, then a pause."""
    out: list[Samples] = []
    for freq, seconds in ((659.25, 0.55), (523.25, 0.9)):
        t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
        tone = sum(a * np.sin(2 * np.pi * freq * k * t) for k, a in ((1, 1.0), (2, 0.35), (3, 0.15)))
        attack = np.minimum(1.0, t / 0.005)  # 5 ms: no click at the onset
        out.append((0.35 * tone * attack * np.exp(-t * 3.0)).astype(np.float32))
    out.append(np.zeros(round(PAUSE_S * SAMPLE_RATE), dtype=np.float32))
    samples = np.concatenate(out)
    samples.setflags(write=False)  # cached and shared by every address
    return samples


def load_chime(spec: str, media_dir: Path) -> Samples:
    """The samples of chime `spec` (48 kHz mono float32). ValueError with a reason when it cannot be had. Reads
    and decodes a file: call it off the event loop."""
    if spec == BUILTIN:
        return builtin_chime()
    if not spec.startswith("file:"):
        raise ValueError(f"unknown chime {spec!r}: use {BUILTIN} or file:<name>")
    name = spec[5:]
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"bad chime file name {name!r}")
    path = media_dir / name
    if not path.is_file():
        raise ValueError(f"no media file {name!r} for the chime")
    from citycast.media.sources import FileSource, SourceError  # PyAV: only when a zone has a file chime

    limit = round(MAX_CHIME_S * SAMPLE_RATE)
    blocks: list[Samples] = []
    got = 0
    try:
        for block in FileSource(str(path)).blocks():
            blocks.append(block)
            got += block.size
            if got >= limit:
                break
    except SourceError as e:
        raise ValueError(f"chime {name!r}: {e}") from None
    if not blocks:
        raise ValueError(f"chime {name!r} has no audio")
    return np.concatenate([np.concatenate(blocks)[:limit], np.zeros(round(PAUSE_S * SAMPLE_RATE), np.float32)])


def chime_blocks(samples: Samples) -> Iterator[Samples]:
    """`samples` as whole frames, the last padded with silence, so the address proper starts on a frame."""
    padded = np.concatenate([samples, np.zeros((-samples.size) % FRAME_SAMPLES, dtype=np.float32)])
    for start in range(0, padded.size, FRAME_SAMPLES):
        yield padded[start : start + FRAME_SAMPLES]
