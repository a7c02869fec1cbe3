"""Audio constants shared by the whole data path."""

from __future__ import annotations

SAMPLE_RATE = 48_000
FRAME_SAMPLES = 960  # one Opus packet: 20 ms at 48 kHz
FRAME_NS = 20_000_000
NS_PER_SAMPLE = 1e9 / SAMPLE_RATE
# A sink asks for a block at least this long before it plays (a sound card's buffer; see media.sinks.TimedSink).
MIN_LEAD_NS = 20_000_000


def samples_to_ns(n: float) -> int:
    return round(n * 1e9 / SAMPLE_RATE)


def ns_to_samples(ns: float) -> float:
    return ns * SAMPLE_RATE / 1e9
