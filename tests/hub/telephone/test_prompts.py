"""Telephone prompts: scripts/prompts.sh really speaks them with espeak-ng, they load as 48 kHz float32, "you are
live to N sites" is built from the right pieces, and a missing prompt becomes its tone pattern."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from citycast.hub.telephone.prompts import (
    GAP_S,
    PROMPT_TEXTS,
    PROMPT_TEXTS_UR,
    SAMPLE_RATE,
    Prompts,
    fallback_tone,
    live_to_pieces,
    spoken_number,
)

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "scripts" / "prompts.sh"

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


def _generate(out: Path) -> str:
    env = os.environ | {"PYTHON": sys.executable}
    done = subprocess.run([str(SCRIPT), str(out)], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def prompt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prompts")
    _generate(out)
    return out


@needs_espeak
def test_script_speaks_every_prompt_once(prompt_dir: Path, tmp_path: Path) -> None:
    assert {p.stem for p in prompt_dir.glob("*.wav")} == set(PROMPT_TEXTS)
    assert {p.stem for p in (prompt_dir / "ur").glob("*.wav")} == set(PROMPT_TEXTS_UR)
    for name in ("welcome", "n0", "n20", "n90", "hundred", "thousand", "ended", "hold", "too_many", "wrong_pin"):
        assert name in PROMPT_TEXTS
    # Idempotent: a second run speaks nothing and leaves every file as it was; a changed text is spoken again.
    out = tmp_path / "p"
    assert f"{len(PROMPT_TEXTS) + len(PROMPT_TEXTS_UR)} spoken" in _generate(out)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert "0 spoken" in _generate(out)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    (out / "hold.txt").write_text("Please wait.")
    (out / "n7.wav").unlink()
    assert "2 spoken" in _generate(out)
    assert not list(out.glob(".tmp-*"))


@needs_espeak
def test_prompts_load_as_48k_mono_float32(prompt_dir: Path) -> None:
    prompts = Prompts(prompt_dir)
    welcome = prompts.get("welcome")
    assert welcome.dtype == np.float32 and welcome.ndim == 1
    # About 60 characters of speech at espeak-ng's 150 words a minute: some seconds, not milliseconds or minutes.
    assert 2.0 < welcome.size / SAMPLE_RATE < 8.0
    assert np.abs(welcome).max() == pytest.approx(10 ** (-3 / 20), rel=1e-3)
    assert np.sqrt(np.mean(welcome**2)) > 0.05  # speech, not silence
    assert prompts.get("welcome") is welcome  # loaded once
    assert not welcome.flags.writeable
    assert prompts.missing == set()
    with pytest.raises(KeyError, match="unknown prompt 'nope'"):
        prompts.get("nope")


@needs_espeak
def test_the_spoken_prompt_is_not_the_tone(prompt_dir: Path) -> None:
    # A sine has one spectral line; speech spreads over many.
    speech = Prompts(prompt_dir).get("wrong_pin")
    spectrum = np.abs(np.fft.rfft(speech))
    tone_spectrum = np.abs(np.fft.rfft(fallback_tone("wrong_pin")))
    assert np.mean(spectrum > spectrum.max() * 0.1) > 5 * np.mean(tone_spectrum > tone_spectrum.max() * 0.1)


def test_numbers_in_words() -> None:
    assert spoken_number(0) == ["n0"]
    assert spoken_number(17) == ["n17"]
    assert spoken_number(40) == ["n40"]
    assert spoken_number(99) == ["n90", "n9"]
    assert spoken_number(100) == ["n1", "hundred"]
    assert spoken_number(1234) == ["n1", "thousand", "n2", "hundred", "n30", "n4"]
    assert spoken_number(20_005) == ["n20", "thousand", "n5"]
    assert spoken_number(1_000_000) == ["n1", "thousand", "thousand"]
    assert all(p in PROMPT_TEXTS for n in range(0, 100_000, 7) for p in spoken_number(n))
    with pytest.raises(ValueError, match="negative"):
        spoken_number(-1)
    assert live_to_pieces(1) == ["live_to", "n1", "site"]


@needs_espeak
def test_live_to_is_built_from_its_pieces(prompt_dir: Path) -> None:
    prompts = Prompts(prompt_dir)
    pieces = live_to_pieces(1234)
    assert pieces == ["live_to", "n1", "thousand", "n2", "hundred", "n30", "n4", "sites"]
    sentence = prompts.live_to(1234)
    gap = int(GAP_S * SAMPLE_RATE)
    assert sentence.size == sum(prompts.get(p).size for p in pieces) + gap * (len(pieces) - 1)
    # The pieces are there, in order: each sits where the sum of the ones before it says.
    at = 0
    for piece in pieces:
        pcm = prompts.get(piece)
        np.testing.assert_array_equal(sentence[at : at + pcm.size], pcm)
        at += pcm.size + gap
    assert prompts.live_to(1234).size > prompts.live_to(4).size


@needs_espeak
def test_missing_prompts_fall_back_to_tones_logged_once(
    prompt_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("live_to", "n1", "site", "sites"):
        shutil.copy(prompt_dir / f"{name}.wav", partial)
    (partial / "hold.wav").write_bytes(b"RIFF not really a wave file")
    prompts = Prompts(partial)
    with caplog.at_level(logging.WARNING, logger="citycast.hub.telephone.prompts"):
        for _ in range(3):
            welcome = prompts.get("welcome")
            assert prompts.get("hold").size > 0
    np.testing.assert_array_equal(welcome, fallback_tone("welcome"))
    assert welcome.dtype == np.float32
    assert len([r for r in caplog.records if "'welcome'" in r.getMessage()]) == 1
    assert len([r for r in caplog.records if "'hold'" in r.getMessage()]) == 1
    assert prompts.missing == {"welcome", "hold"}
    # The patterns tell the caller apart what is happening: welcome rises, wrong PIN is low, goodbye falls.
    assert not np.array_equal(fallback_tone("welcome"), fallback_tone("wrong_pin"))
    assert not np.array_equal(fallback_tone("too_many"), fallback_tone("welcome"))
    # live_to with every piece present is speech; with a piece missing (n2), the whole of it is the live tone.
    assert prompts.live_to(1).size != fallback_tone("live_to").size
    np.testing.assert_array_equal(prompts.live_to(2), fallback_tone("live_to"))
    assert np.abs(fallback_tone("live_to")).max() <= 0.3 + 1e-6


def test_a_directory_that_does_not_exist_plays_tones(tmp_path: Path) -> None:
    prompts = Prompts(tmp_path / "never-generated")
    assert not prompts.available("welcome")
    np.testing.assert_array_equal(prompts.live_to(1234), fallback_tone("live_to"))
    assert prompts.get("n5").size > 0


def test_urdu_numbers_below_a_hundred_are_one_word_each() -> None:
    assert spoken_number(34, "ur") == ["n34"]
    assert spoken_number(1234, "ur") == ["n1", "thousand", "n2", "hundred", "n34"]
    assert all(p in PROMPT_TEXTS_UR for n in range(0, 100_000, 7) for p in spoken_number(n, "ur"))
    assert live_to_pieces(2, "ur") == ["live_to", "n2", "sites"]
    assert set(PROMPT_TEXTS) <= set(PROMPT_TEXTS_UR)  # every prompt the call asks for exists in Urdu


@needs_espeak
def test_urdu_prompts_are_spoken_in_urdu(prompt_dir: Path) -> None:
    prompts = Prompts(prompt_dir)
    urdu = prompts.get("welcome", "ur")
    english = prompts.get("welcome")
    assert prompts.path("welcome", "ur") == prompt_dir / "ur" / "welcome.wav"
    assert urdu.dtype == np.float32 and 2.0 < urdu.size / SAMPLE_RATE < 10.0
    assert np.sqrt(np.mean(urdu**2)) > 0.05 and urdu.size != english.size
    sentence = prompts.live_to(1234, "ur")
    gap = int(GAP_S * SAMPLE_RATE)
    pieces = live_to_pieces(1234, "ur")
    assert sentence.size == sum(prompts.get(p, "ur").size for p in pieces) + gap * (len(pieces) - 1)
    assert prompts.missing == set()
    with pytest.raises(KeyError, match="no prompts in 'fr'"):
        prompts.get("welcome", "fr")
