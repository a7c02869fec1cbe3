"""What an alert sounds like: its `<resource>` audio when it carries one (fetched, decoded by PyAV), else its
headline, description and instruction spoken by espeak-ng in the info's `<language>`; the whole repeated N times
with a pause between. Every info counts: an alert in Urdu and English is spoken in both, in order."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import httpx
import numpy as np

from citycast.hub.cap.parse import CapError, Info, Resource
from citycast.media.audio import FRAME_SAMPLES, SAMPLE_RATE
from citycast.media.render import Samples
from citycast.media.sources import SourceError, read_audio

log = logging.getLogger(__name__)

MAX_RESOURCE_BYTES = 20_000_000
MAX_SECONDS = 600.0  # one pass of an alert; a longer resource is cut (it repeats, and the loudspeakers are shared)
PAUSE_S = 1.0
SPEAK_TIMEOUT_S = 30.0
FETCH_TIMEOUT_S = 30.0


class AudioError(CapError):
    """The alert's audio cannot be made; the text says why."""


@dataclass(frozen=True)
class Spoken:
    samples: Samples
    notes: tuple[str, ...]  # what did not go as the message asked (a resource that was not audio), for the audit


@cache
def espeak_voices() -> frozenset[str]:
    """The voice names espeak-ng knows ('en', 'en-us', 'ur', …)."""
    binary = shutil.which("espeak-ng")
    if binary is None:
        return frozenset()
    out = subprocess.run([binary, "--voices"], capture_output=True, text=True, timeout=10, check=False).stdout
    return frozenset(line.split()[1].lower() for line in out.splitlines()[1:] if len(line.split()) > 1)


def voice_for(language: str) -> str:
    """The espeak-ng voice for an RFC 3066 tag: the whole tag if espeak-ng has it ('en-us'), else its primary
    language ('ur-PK' → 'ur'); English when espeak-ng knows neither."""
    tag = language.strip().lower()
    voices = espeak_voices()
    for candidate in (tag, tag.split("-")[0]):
        if candidate in voices:
            return candidate
    return "en"


async def speak(text: str, language: str) -> Samples:
    if shutil.which("espeak-ng") is None:
        raise AudioError("espeak-ng is not installed (apt-get install espeak-ng): the alert's text cannot be spoken")
    with tempfile.TemporaryDirectory(prefix="citycast-cap-") as tmp:
        out = Path(tmp) / "speech.wav"
        # The text goes in on stdin, never as an argument: a headline starting with '-' is not an option.
        proc = await asyncio.create_subprocess_exec(
            "espeak-ng", "-v", voice_for(language), "-s", "145", "-b", "1", "-w", str(out), "--stdin",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            async with asyncio.timeout(SPEAK_TIMEOUT_S):
                _, err = await proc.communicate(text.encode())
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AudioError("espeak-ng took too long to speak the alert") from None
        if proc.returncode != 0:
            raise AudioError(f"espeak-ng failed: {err.decode(errors='replace').strip()}")
        return await asyncio.to_thread(_decode, out)


def _decode(path: Path) -> Samples:
    try:
        samples = read_audio(path)
    except SourceError as e:
        raise AudioError(f"not audio: {e}") from None
    if samples.size == 0:
        raise AudioError("not audio: no samples decoded")
    return samples[: int(MAX_SECONDS * SAMPLE_RATE)]


async def fetch_resource(res: Resource, client: httpx.AsyncClient) -> Samples:
    """The resource's audio: carried inline (derefUri, base64) or fetched from its URI (http/https)."""
    data: bytes | bytearray
    if res.deref:
        try:
            data = base64.b64decode(res.deref, validate=False)
        except (binascii.Error, ValueError):
            raise AudioError("the resource's derefUri is not base64") from None
    elif res.uri and res.uri.startswith(("http://", "https://")):
        data = bytearray()
        try:
            # Alerts are taken one at a time: a server trickling a resource must not hold up the next alert.
            async with asyncio.timeout(FETCH_TIMEOUT_S), client.stream("GET", res.uri) as r:
                r.raise_for_status()
                async for chunk in r.aiter_bytes():
                    data += chunk
                    if len(data) > MAX_RESOURCE_BYTES:
                        raise AudioError(f"the resource {res.uri} is larger than {MAX_RESOURCE_BYTES} bytes")
        except httpx.HTTPError as e:
            raise AudioError(f"the resource {res.uri} could not be fetched: {e}") from None
        except TimeoutError:
            raise AudioError(f"the resource {res.uri} took more than {FETCH_TIMEOUT_S:.0f} s to fetch") from None
    else:
        raise AudioError(f"the resource has no http(s) URI nor inline content: {res.uri!r}")
    with tempfile.TemporaryDirectory(prefix="citycast-cap-") as tmp:
        path = Path(tmp) / "resource"
        path.write_bytes(bytes(data))
        return await asyncio.to_thread(_decode, path)


def _text_of(info: Info) -> str:
    parts = [info.headline or info.event, info.description, info.instruction]
    return ". ".join(p.rstrip(". ") for p in parts if p)


async def render(infos: Sequence[Info], client: httpx.AsyncClient) -> Spoken:
    """One pass of the alert: each info's audio resource, or its text spoken, with a pause between infos."""
    pieces: list[Samples] = []
    notes: list[str] = []
    for info in infos:
        sound = None
        for res in info.resources:
            if not res.mime_type.lower().startswith("audio/"):
                continue
            try:
                sound = await fetch_resource(res, client)
                break
            except AudioError as e:
                notes.append(f"resource {res.description or res.uri!r}: {e}; its text is spoken instead")
        if sound is None:
            text = _text_of(info)
            if not text:
                continue
            sound = await speak(text, info.language)
        pieces.append(sound)
    if not pieces:
        raise AudioError("the alert has nothing to say: no audio resource, headline or description")
    gap = np.zeros(int(PAUSE_S * SAMPLE_RATE), dtype=np.float32)
    joined = np.concatenate([x for p in pieces for x in (p, gap)])
    return Spoken(joined, tuple(notes))


def repeated_blocks(samples: Samples, times: int) -> Iterator[Samples]:
    """`samples` `times` times over, as FRAME_SAMPLES blocks; each pass ends on a zero-padded block, so a pass
    never starts mid-block (the padding is under 20 ms, inside the pause between passes)."""
    padded = np.concatenate([samples, np.zeros((-samples.size) % FRAME_SAMPLES, dtype=np.float32)])
    for _ in range(max(1, times)):
        for start in range(0, padded.size, FRAME_SAMPLES):
            yield padded[start : start + FRAME_SAMPLES]
