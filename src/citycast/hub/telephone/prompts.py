"""What a telephone caller hears from citycast: spoken prompts, or tones when they were never generated.

`scripts/prompts.sh` speaks every text of `PROMPT_TEXTS` with espeak-ng into `prompts_cache/` (beside this module,
git-ignored) at set-up time: nothing is fetched. `Prompts` reads them as 48 kHz mono float32 through PyAV, trims
the silence espeak-ng leaves around them (so pieces join into one sentence) and builds "You are live to one
thousand two hundred thirty four sites." from pieces. A prompt whose file is missing is replaced by a tone
pattern (logged once per prompt), so the telephone still works on a machine without espeak-ng: a caller hears
rising beeps where the welcome would be, low beeps for a wrong PIN, falling beeps before hanging up.

Prompts exist in English (`PROMPT_TEXTS`, spoken with the en-gb voice) and Urdu (`PROMPT_TEXTS_UR`, espeak-ng's
`ur` voice, in `prompts_cache/ur/`). A caller hears English until their PIN is known, then the PIN's language
(`SpeakerPin.language`). Urdu numbers below a hundred are each a word of their own, so the Urdu set has n0..n99
(espeak-ng says the digits in Urdu) where English builds twenty-one from "twenty" and "one".

`python -m citycast.hub.telephone.prompts --list` prints `name<TAB>text` lines (`ur/<name>` for the Urdu set): the
script reads the list from here, so the names the code asks for and the files the script makes cannot drift apart.
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

# The Urdu set: the same names; "live_to" + number + "sites" reads "آپ ۱۲ مقامات پر براہِ راست ہیں" in that order.
PROMPT_TEXTS_UR: dict[str, str] = {
    "welcome": "سٹی کاسٹ میں خوش آمدید۔ اپنا پن درج کریں، پھر ہیش دبائیں۔",
    "wrong_pin": "غلط پن۔ براہِ کرم دوبارہ کوشش کریں۔",
    "too_many": "بہت زیادہ غلط پن۔ خدا حافظ۔",
    "live_to": "آپ",
    "sites": "مقامات پر براہِ راست ہیں۔",
    "site": "مقام پر براہِ راست ہیں۔",
    "ended": "اعلان ختم ہو گیا ہے۔ خدا حافظ۔",
    "hold": "براہِ کرم انتظار کریں۔",
    "hundred": "سو",
    "thousand": "ہزار",
    **{f"n{i}": str(i) for i in range(100)},
}

# language -> (its texts, its folder under the prompts directory): what scripts/prompts.sh speaks (with the
# espeak-ng voice of the folder's name, en-gb for the top folder).
PROMPT_SETS: dict[str, tuple[dict[str, str], str]] = {
    "en": (PROMPT_TEXTS, ""),
    "ur": (PROMPT_TEXTS_UR, "ur/"),
}
PROMPT_LANGUAGES = tuple(PROMPT_SETS)

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


def spoken_number(n: int, language: str = "en") -> list[str]:
    """The prompt names that say `n` in words: 1234 → n1 thousand n2 hundred n30 n4 (Urdu: n1 thousand n2
    hundred n34, as "ایک ہزار دو سو چونتیس")."""
    if n < 0:
        raise ValueError(f"cannot say a negative number ({n})")
    if n <= 20 or (language == "ur" and n < 100):
        return [f"n{n}"]
    if n < 100:
        tens, ones = divmod(n, 10)
        return [f"n{tens * 10}"] + ([f"n{ones}"] if ones else [])
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return [f"n{hundreds}", "hundred"] + (spoken_number(rest, language) if rest else [])
    thousands, rest = divmod(n, 1000)
    return [*spoken_number(thousands, language), "thousand"] + (spoken_number(rest, language) if rest else [])


def live_to_pieces(n_sites: int, language: str = "en") -> list[str]:
    return ["live_to", *spoken_number(n_sites, language), "site" if n_sites == 1 else "sites"]


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
    """The prompts in `directory` (`<name>.wav`, the Urdu set in `ur/<name>.wav`), loaded once each and kept."""

    def __init__(self, directory: Path = DEFAULT_DIR) -> None:
        self.directory = Path(directory)
        self._cache: dict[str, Samples] = {}
        self.missing: set[str] = set()  # prompts played as tones ("name", "ur/name"): each logged once

    def path(self, name: str, language: str = "en") -> Path:
        return self.directory / f"{self._key(name, language)}.wav"

    def available(self, name: str, language: str = "en") -> bool:
        return self._load(name, language) is not None

    @staticmethod
    def _key(name: str, language: str) -> str:
        """The prompt's name in the list scripts/prompts.sh speaks (its file, less ".wav")."""
        if language not in PROMPT_SETS:
            raise KeyError(f"no prompts in {language!r}: one of {', '.join(PROMPT_LANGUAGES)}")
        texts, folder = PROMPT_SETS[language]
        if name not in texts:
            raise KeyError(f"unknown prompt {name!r}: one of {', '.join(sorted(texts))}")
        return folder + name

    def _load(self, name: str, language: str = "en") -> Samples | None:
        key = self._key(name, language)
        if key in self._cache:
            return self._cache[key]
        if key in self.missing:
            return None
        try:
            pcm = _frozen(_normalised(_trim(read_audio(self.directory / f"{key}.wav"))))
        except SourceError as e:
            self.missing.add(key)
            log.warning("prompt %r unusable (%s): playing a tone instead; run scripts/prompts.sh", key, e)
            return None
        if pcm.size == 0:
            self.missing.add(key)
            log.warning("prompt %r is empty: playing a tone instead; run scripts/prompts.sh", key)
            return None
        self._cache[key] = pcm
        return pcm

    def get(self, name: str, language: str = "en") -> Samples:
        """Prompt `name` in `language` as 48 kHz mono float32, or its tone pattern if the file is missing or
        unreadable."""
        pcm = self._load(name, language)
        return pcm if pcm is not None else _frozen(fallback_tone(name))

    def live_to(self, n_sites: int, language: str = "en") -> Samples:
        """ "You are live to <n> sites." If any piece is missing, the whole sentence is the "live" tone: half a
        spoken number would mislead more than a tone does."""
        pieces = live_to_pieces(n_sites, language)
        loaded = [self._load(p, language) for p in pieces]
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
    for texts, folder in PROMPT_SETS.values():
        for name, text in texts.items():
            print(f"{folder}{name}\t{text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
