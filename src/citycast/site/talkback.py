"""Talkback, the site side: the box's microphone goes up to the hub only while the hub keeps asking.

The hub asks on the site's command subject (`citycast.protocol.commands.TalkbackCommand`, decoded by the agent)
and must renew the request within `lease_s`; a hub that crashes or a link that drops cannot leave a microphone
open in the street. Frames use the audio frame format, signed with the
site's own NATS key (its seed never left the box; the hub knows the public half from enrolment), so the hub can
tell this site's voice from anyone else's even on a shared bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import nkeys
from nats.aio.client import Client

from citycast.media.audio import FRAME_NS
from citycast.media.codec import OpusEncoder
from citycast.media.keys import PrivateKey, SeedPrivateKey
from citycast.media.render import Samples
from citycast.protocol.commands import TalkbackCommand
from citycast.protocol.frame import FrameSigner
from citycast.protocol.subjects import Subjects
from citycast.tasks import cancel_and_wait

if TYPE_CHECKING:  # sources import PyAV, which a site maps only once talkback really starts
    from citycast.media.sources import Source

log = logging.getLogger(__name__)

TALKBACK_CHANNEL = 0  # frames of a site's microphone are not any audio channel


def key_from_seed(seed: str) -> SeedPrivateKey:
    """The Ed25519 key inside an nkey seed (`SU...`)."""
    _, raw = nkeys.decode_seed(seed.encode())
    return SeedPrivateKey(bytes(raw))


class TalkbackSender:
    def __init__(
        self,
        nc: Client,
        subjects: Subjects,
        site: str,
        key: PrivateKey,
        source_factory: Callable[[], Source],
        *,
        lease_s: float = 5.0,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.nc = nc
        self.subject = subjects.talkback(site)
        self.signer = FrameSigner(key)
        self.source_factory = source_factory
        self.lease_s = lease_s
        self.clock = clock
        self.expires = 0.0
        self.frames = 0
        self.errors = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def active(self) -> bool:
        return self._task is not None and not self._task.done()

    def on_command(self, command: TalkbackCommand) -> None:
        if command.on:
            self.expires = time.monotonic() + self.lease_s
            if not self.active:
                self._task = asyncio.create_task(self._run(), name=f"talkback:{self.subject}")
        else:
            self.expires = 0.0

    async def stop(self) -> None:
        self.expires = 0.0
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)

    async def _run(self) -> None:
        try:
            source = self.source_factory()
        except Exception as e:  # no microphone: say so once per request, keep playing
            self.errors += 1
            log.warning("talkback: the microphone cannot be opened: %s", e)
            return
        blocks: Iterator[Samples] = source.blocks()
        encoder = OpusEncoder(bitrate=32_000)
        stream = random.getrandbits(32)
        ts0 = self.clock()
        start = time.monotonic()
        seq = 0
        log.info("talkback: microphone on")
        try:
            while time.monotonic() < self.expires:
                # A sound card blocks until its next block is there: never in the event loop.
                pcm = await asyncio.to_thread(next, blocks, None)
                if pcm is None:
                    break
                data = self.signer.sign(
                    channel=TALKBACK_CHANNEL, stream=stream, seq=seq, ts_ns=ts0 + seq * FRAME_NS,
                    packets=[encoder.encode(pcm)],
                )  # fmt: skip
                await self.nc.publish(self.subject, data)
                self.frames += 1
                seq += 1
                # A file stands in for the microphone in tests: keep it to real time, as a card would be.
                ahead = start + seq * FRAME_NS / 1e9 - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)
        finally:
            close = getattr(blocks, "close", None)
            if close is not None:
                with contextlib.suppress(ValueError):  # still inside a worker thread's next(): it ends by itself
                    close()  # releases the sound card's input stream
            log.info("talkback: microphone off")
