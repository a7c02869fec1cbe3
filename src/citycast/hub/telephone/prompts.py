"""What a telephone caller hears from citycast: spoken prompts, or tones when they were never generated.

`scripts/prompts.sh` speaks every text of `PROMPT_TEXTS` with espeak-ng into `prompts_cache/` (beside this module,
git-ignored) at set-up time: nothing is fetched. `Prompts` reads them as 48 kHz mono float32 through PyAV, trims
the silence espeak-ng leaves around them (so pieces join into one sentence) and builds "You are live to one
thousand two hundred thirty four sites." from pieces. A prompt whose file is missing is replaced by a tone
pattern (logged once per prompt), so the telephone still works on a machine without espeak-ng: a caller hears
rising beeps where the welcome would be, low beeps for a wrong PIN, falling beeps before hanging up.

`python -m citycast.hub.telephone.prompts --list` prints `name<TAB>text` lines: the script reads the list from here, so
the names the code asks for and the files the script makes cannot drift apart.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt

from citycast.media.sources import SourceError, read_audio

log = logging.getLogger(__name__)

SAMPLE_RATE = 48_000
DEFAULT_DIR = Path(__file__).resolve().parent / "prompts_cache"
SILENCE_THRESHOLD = 10 ** (-40 / 20)  # -40 dBFS: below this, an edge is silence
EDGE_KEEP_S = 0.03  # kept around the trimmed speech, so words do not start clipped
PEAK = 10 ** (-3 / 20)
GAP_S = 0.06  # between the pieces of a built sentence

Samples = npt.NDArray[np.float32]

_ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
]
_TENS = {30: "thirty", 40: "forty", 50: "fifty", 60: "sixty", 70: "seventy", 80: "eighty", 90: "ninety"}

PROMPT_TEXTS: dict[str, str] = {
    "welcome": "Welcome to citycast. Please enter your PIN, then press hash.",
    "wrong_pin": "Wrong PIN. Please try again.",
    "too_many": "Too many wrong PINs. Goodbye.",
    "live_to": "You are live to",
    "sites": "sites.",
    "site": "site.",
    "ended": "The address has ended. Goodbye.",
    "hold": "Please hold.",
    "hundred": "hundred",
    "thousand": "thousand",
    **{f"n{i}": word for i, word in enumerate(_ONES)},
    **{f"n{i}": word for i, word in _TENS.items()},
}

# Tone patterns standing in for missing prompts: (frequency Hz, seconds) beeps, 0 Hz is a pause.
_BEEP = 0.12
_FALLBACK_TONES: dict[str, tuple[tuple[float, float], ...]] = {
    "welcome": ((600.0, _BEEP), (0.0, 0.08), (900.0, _BEEP)),  # rising: "go ahead"
    "hold": ((600.0, _BEEP), (0.0, 0.08), (900.0, _BEEP)),
    "wrong_pin": ((400.0, _BEEP), (0.0, 0.08), (400.0, _BEEP)),  # low double: "no"
    "too_many": ((900.0, _BEEP), (0.0, 0.06), (600.0, _BEEP), (0.0, 0.06), (400.0, 0.3)),  # falling: "goodbye"
    "ended": ((900.0, _BEEP), (0.0, 0.06), (600.0, _BEEP), (0.0, 0.06), (400.0, 0.3)),
    "live_to": ((1000.0, 0.5),),  # one long high tone: "you are on air"
}
_DEFAULT_TONE = ((700.0, _BEEP),)


def spoken_number(n: int) -> list[str]:
    """The prompt names that say `n` in words: 1234 → n1 thousand n2 hundred n30 n4."""
    if n < 0:
        raise ValueError(f"cannot say a negative number ({n})")
    if n <= 20:
        return [f"n{n}"]
    if n < 100:
        tens, ones = divmod(n, 10)
        return [f"n{tens * 10}"] + ([f"n{ones}"] if ones else [])
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return [f"n{hundreds}", "hundred"] + (spoken_number(rest) if rest else [])
    thousands, rest = divmod(n, 1000)
    return [*spoken_number(thousands), "thousand"] + (spoken_number(rest) if rest else [])


def live_to_pieces(n_sites: int) -> list[str]:
    return ["live_to", *spoken_number(n_sites), "site" if n_sites == 1 else "sites"]


def _tone(pattern: tuple[tuple[float, float], ...], amplitude: float = 0.3) -> Samples:
    parts: list[Samples] = []
    fade = int(0.005 * SAMPLE_RATE)
    for freq, seconds in pattern:
        n = int(seconds * SAMPLE_RATE)
        if freq <= 0:
            parts.append(np.zeros(n, np.float32))
            continue
        wave = amplitude * np.sin(2 * np.pi * freq * np.arange(n) / SAMPLE_RATE)
        ramp = np.minimum(1.0, np.minimum(np.arange(n), np.arange(n)[::-1]) / fade)  # no clicks at the edges
        parts.append((wave * ramp).astype(np.float32))
    return np.concatenate(parts)


def fallback_tone(name: str) -> Samples:
    """The tone pattern played instead of prompt `name` when its file is missing."""
    return _tone(_FALLBACK_TONES.get(name, _DEFAULT_TONE))


def _trim(pcm: Samples) -> Samples:
    loud = np.flatnonzero(np.abs(pcm) > SILENCE_THRESHOLD)
    if loud.size == 0:
        return pcm
    keep = int(EDGE_KEEP_S * SAMPLE_RATE)
    return pcm[max(0, int(loud[0]) - keep) : int(loud[-1]) + 1 + keep]


def _normalised(pcm: Samples) -> Samples:
    """Peak at -3 dBFS: every prompt as loud as the next (resampling may overshoot full scale a little)."""
    peak = float(np.abs(pcm).max()) if pcm.size else 0.0
    return pcm if peak == 0.0 else (pcm * (PEAK / peak)).astype(np.float32)


def _frozen(pcm: Samples) -> Samples:
    out = np.ascontiguousarray(pcm, dtype=np.float32)
    out.setflags(write=False)  # shared from the cache: a caller must not change it for the next one
    return out


class Prompts:
    """The prompts in `directory` (`<name>.wav`), loaded once each and kept."""

    def __init__(self, directory: Path = DEFAULT_DIR) -> None:
        self.directory = Path(directory)
        self._cache: dict[str, Samples] = {}
        self.missing: set[str] = set()  # prompts played as tones: each logged once

    def path(self, name: str) -> Path:
        return self.directory / f"{name}.wav"

    def available(self, name: str) -> bool:
        return self._load(name) is not None

    def _load(self, name: str) -> Samples | None:
        if name not in PROMPT_TEXTS:
            raise KeyError(f"unknown prompt {name!r}: one of {', '.join(sorted(PROMPT_TEXTS))}")
        if name in self._cache:
            return self._cache[name]
        if name in self.missing:
            return None
        try:
            pcm = _frozen(_normalised(_trim(read_audio(self.path(name)))))
        except SourceError as e:
            self.missing.add(name)
            log.warning("prompt %r unusable (%s): playing a tone instead; run scripts/prompts.sh", name, e)
            return None
        if pcm.size == 0:
            self.missing.add(name)
            log.warning("prompt %r is empty: playing a tone instead; run scripts/prompts.sh", name)
            return None
        self._cache[name] = pcm
        return pcm

    def get(self, name: str) -> Samples:
        """Prompt `name` as 48 kHz mono float32, or its tone pattern if the file is missing or unreadable."""
        pcm = self._load(name)
        return pcm if pcm is not None else _frozen(fallback_tone(name))

    def live_to(self, n_sites: int) -> Samples:
        """ "You are live to <n> sites." If any piece is missing, the whole sentence is the "live" tone: half a
        spoken number would mislead more than a tone does."""
        pieces = live_to_pieces(n_sites)
        loaded = [self._load(p) for p in pieces]
        if any(x is None for x in loaded):
            return _frozen(fallback_tone("live_to"))
        gap = np.zeros(int(GAP_S * SAMPLE_RATE), np.float32)
        parts: list[Samples] = []
        for pcm in loaded:
            assert pcm is not None
            parts.extend((pcm, gap))
        return _frozen(np.concatenate(parts[:-1]))


def main(argv: list[str]) -> int:
    if argv != ["--list"]:
        print("usage: python -m citycast.hub.telephone.prompts --list", file=sys.stderr)
        return 2
    for name, text in PROMPT_TEXTS.items():
        print(f"{name}\t{text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
