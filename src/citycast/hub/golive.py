"""Going live from a browser: the speaker's microphone over WebRTC (aiortc) into an address.

One `GoLiveSession` per speaker (user): an `RTCPeerConnection` that only receives, a task that reads the audio
track, resamples it to 48 kHz mono float32 and pushes it into a `BrowserAudio` buffer, and a `LiveBroadcaster`
that pulls one 20 ms block per frame from that buffer on the broadcast clock. The browser's clock therefore never
paces the broadcast: a buffer that runs dry is concealed (the last block, faded) and then silent; one that grows
(the browser's clock is a little fast) is trimmed back, so the delay stays bounded.

A session ends when the speaker stops, hangs up (the track ends), ICE fails or the connection closes, or the hub
stops the address (an operator); the address is stopped with a reason in each case.

The PIN goes through the same rules as the telephone's: `PinGate` over a `PinStore` and a `PinGuard` (the hub's
one guard, shared with the telephone), keyed by the client address (the socket's peer, or the X-Forwarded-For of
a trusted proxy), so a browser guessing PINs is limited exactly as a caller is: one offer's PIN in flight per
address (a parallel one gets 429 at once), 5 failures per address, and each PIN's own budget whatever the
addresses. The PIN is checked before anything of the offer is used, so a refused offer costs one bounded hash.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import av
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from sqlalchemy import select

from citycast.hub.db.models import Priority, Site, utcnow
from citycast.ingest.live import LiveBroadcaster
from citycast.ingest.pins import BLOCK_S, PinGate, PinGuard, PinStore
from citycast.media.audio import FRAME_SAMPLES, SAMPLE_RATE
from citycast.media.convert import AudioConverter
from citycast.media.render import Samples

if TYPE_CHECKING:
    from citycast.hub.db.engine import Database
    from citycast.hub.fleet import FleetState

log = logging.getLogger(__name__)

PRIME_SAMPLES = 3 * FRAME_SAMPLES  # 60 ms buffered before the first block (and after a dry spell) goes out
MAX_SAMPLES = 15 * FRAME_SAMPLES  # 300 ms: past this, the oldest audio is dropped back to PRIME_SAMPLES
LEVEL_BLOCKS = 10  # the reported level is the RMS of the last 200 ms on air
SILENCE_DBFS = -120.0
AUDIO_FRESH_S = 1.0  # "on air" means audio from the browser arrived within this long
WATCH_S = 0.5
MAX_SDP_CHARS = 64_000


class GoLiveError(Exception):
    """A refusal for the speaker: `status` is the HTTP status the API answers with."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


class LiveAddresses(Protocol):
    """What a session needs of the hub's `AddressManager`."""

    nc: Any
    signer: Any
    subjects: Any

    async def start(
        self,
        *,
        title: str,
        source: str,
        zone_ids: list[int],
        priority: Priority,
        speaker: str,
        user_id: int | None,
        external: bool = False,
    ) -> int: ...

    async def stop(self, address_id: int, reason: str = "stopped") -> None: ...

    def channel_of(self, address_id: int) -> int: ...

    def get(self, address_id: int) -> Any: ...


def dbfs(mean_square: float) -> float:
    return SILENCE_DBFS if mean_square <= 1e-12 else max(SILENCE_DBFS, 10.0 * math.log10(mean_square))


class BrowserAudio:
    """The browser's voice as a `LiveSource` (sans-IO: `push` what arrived, `next_block` at each frame's time)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._chunks: deque[Samples] = deque()
        self._size = 0
        self._primed = False
        self._last = np.zeros(FRAME_SAMPLES, np.float32)
        self._levels: deque[float] = deque(maxlen=LEVEL_BLOCKS)
        self.received_at: float | None = None
        self.samples_in = 0
        self.underruns = 0
        self.concealed = 0
        self.dropped = 0

    @property
    def buffered(self) -> int:
        return self._size

    def push(self, pcm: Samples) -> None:
        if pcm.size == 0:
            return
        self._chunks.append(np.asarray(pcm, np.float32).reshape(-1))
        self._size += pcm.size
        self.samples_in += pcm.size
        self.received_at = self.clock()
        if self._size > MAX_SAMPLES:
            self._drop(self._size - PRIME_SAMPLES)

    def _drop(self, n: int) -> None:
        self.dropped += n
        while n > 0 and self._chunks:
            head = self._chunks[0]
            if head.size <= n:
                self._chunks.popleft()
                self._size -= head.size
                n -= head.size
            else:
                self._chunks[0] = head[n:]
                self._size -= n
                n = 0

    def _take(self, n: int) -> Samples:
        out = np.empty(n, np.float32)
        filled = 0
        while filled < n:
            head = self._chunks[0]
            k = min(n - filled, head.size)
            out[filled : filled + k] = head[:k]
            if k == head.size:
                self._chunks.popleft()
            else:
                self._chunks[0] = head[k:]
            filled += k
        self._size -= n
        return out

    def next_block(self, now: float) -> Samples:
        if not self._primed and self._size >= PRIME_SAMPLES:
            self._primed = True
        if self._primed and self._size >= FRAME_SAMPLES:
            block = self._take(FRAME_SAMPLES)
            self._last = block
        else:
            if self._primed:
                self.underruns += 1
                self._primed = False  # wait for a little cushion again rather than stutter block by block
                # One faded copy of the last block hides a short gap better than a hard cut to silence.
                block = (self._last * np.linspace(1.0, 0.0, FRAME_SAMPLES, dtype=np.float32)).astype(np.float32)
                self.concealed += 1
            else:
                block = np.zeros(FRAME_SAMPLES, np.float32)
        self._levels.append(float(np.mean(block.astype(np.float64) ** 2)))
        return block

    @property
    def level_dbfs(self) -> float:
        """RMS of what went on air over the last 200 ms, in dBFS."""
        return dbfs(sum(self._levels) / len(self._levels)) if self._levels else SILENCE_DBFS

    def fresh(self, now: float) -> bool:
        return self.received_at is not None and now - self.received_at <= AUDIO_FRESH_S


def to_mono48k(resampler: AudioConverter, frame: av.AudioFrame) -> Samples:
    """One decoded WebRTC frame as 48 kHz mono float32 samples."""
    parts = [f.to_ndarray().reshape(-1) for f in resampler.convert(frame)]
    if not parts:
        return np.zeros(0, np.float32)
    return np.concatenate(parts).astype(np.float32, copy=False)


@dataclass
class GoLiveSession:
    user_id: int
    username: str
    remote: str
    pc: RTCPeerConnection
    audio: BrowserAudio
    title: str
    zone_ids: tuple[int, ...]
    address_id: int | None = None
    broadcaster: LiveBroadcaster | None = None
    sites: int = 0
    started_at: dt.datetime = field(default_factory=utcnow)
    ended: str | None = None  # the reason, once over
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def status(self, now: float) -> dict[str, Any]:
        live = self.ended is None and self.address_id is not None
        return {
            "live": live,
            "on_air": live and self.audio.fresh(now),
            "address_id": self.address_id,
            "title": self.title,
            "sites_reached": self.sites,
            "level_dbfs": round(self.audio.level_dbfs, 1) if live else SILENCE_DBFS,
            "connection": self.pc.connectionState,
            "ended_reason": self.ended,
            "underruns": self.audio.underruns,
        }


class GoLive:
    """The hub's browser speakers: at most one live session per user."""

    def __init__(
        self,
        addresses: LiveAddresses,
        db: Database,
        fleet: FleetState | None = None,
        *,
        publish: Callable[[dict[str, Any]], None] | None = None,
        guard: PinGuard | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.addresses = addresses
        self.db = db
        self.fleet = fleet
        self.pins = PinStore(db, publish=publish)
        self.guard = guard if guard is not None else PinGuard()  # an empty guard is falsy (it has a len)
        self.monotonic = monotonic
        self.sessions: dict[int, GoLiveSession] = {}
        self._last: dict[int, GoLiveSession] = {}  # the last ended session per user, for its status
        self._lock = asyncio.Lock()

    # -- going live -------------------------------------------------------------------------------------------
    async def offer(
        self, *, user_id: int, username: str, sdp: str, sdp_type: str, pin: str, title: str | None, remote: str
    ) -> tuple[RTCSessionDescription, GoLiveSession]:
        """Check the PIN, answer the browser's offer and put an address on air. Raises `GoLiveError`."""
        if sdp_type != "offer":
            raise GoLiveError(400, f"expected an SDP offer, not {sdp_type!r}")
        if not sdp.strip() or len(sdp) > MAX_SDP_CHARS:
            raise GoLiveError(400, "the SDP offer is empty or too long")
        current = self.sessions.get(user_id)
        if current is not None and current.ended is None:
            raise GoLiveError(409, "you are already live: stop first")
        gate = PinGate(self.pins, self.guard, remote)
        result = await gate.attempt(pin, now_s=self.monotonic(), now=utcnow())
        if result.outcome == "blocked":
            wait = result.retry_after or self.guard.blocked_for(remote, self.monotonic()) or BLOCK_S
            raise GoLiveError(
                429, f"too many wrong PINs from this address: try again in {math.ceil(wait / 60)} min", wait
            )
        if result.outcome == "busy":
            raise GoLiveError(429, "a PIN from this address is being checked already: wait for its answer", 1.0)
        if result.outcome == "overloaded":
            raise GoLiveError(503, "the hub is busy checking PINs: try again in a moment", result.retry_after)
        if result.grant is None:
            # The same words whether the PIN is wrong or locked: a lock must not confirm a guess.
            raise GoLiveError(
                403, "wrong PIN, or a PIN locked after repeated wrong guesses: check it or ask an operator"
            )
        grant = result.grant
        async with self._lock:
            current = self.sessions.get(user_id)
            if current is not None and current.ended is None:
                raise GoLiveError(409, "you are already live: stop first")
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            session = GoLiveSession(
                user_id=user_id,
                username=username,
                remote=remote,
                pc=pc,
                audio=BrowserAudio(self.monotonic),
                title=(title or "").strip() or f"Live: {grant.label or username}",
                zone_ids=grant.zone_ids,
            )
            try:
                answer = await self._answer(session, sdp)
            except GoLiveError:
                await pc.close()
                raise
            except Exception as e:  # aiortc's own parse errors: the browser sent something we cannot use
                await pc.close()
                raise GoLiveError(400, f"cannot use this SDP offer: {e}") from None
            try:
                session.address_id = await self.addresses.start(
                    title=session.title,
                    source=f"browser:{username}",
                    zone_ids=list(grant.zone_ids),
                    priority=grant.priority,
                    speaker=grant.label or username,
                    user_id=user_id,
                    external=True,
                )
            except ValueError as e:
                await pc.close()
                raise GoLiveError(409, str(e)) from None
            except BaseException:
                await pc.close()
                raise
            session.broadcaster = LiveBroadcaster(
                self.addresses.nc,
                channel=self.addresses.channel_of(session.address_id),
                signer=self.addresses.signer,
                source=session.audio,
                subjects=self.addresses.subjects,
            )
            session.broadcaster.start()
            self.sessions[user_id] = session
        session.tasks.append(asyncio.create_task(self._watch(session), name=f"golive-watch:{user_id}"))
        session.sites = await self.sites_live(grant.zone_ids)
        log.info(
            "browser speaker %s live as address %d from %s (%d sites)",
            username,
            session.address_id,
            remote,
            session.sites,
        )
        return answer, session

    async def _answer(self, session: GoLiveSession, sdp: str) -> RTCSessionDescription:
        pc = session.pc

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio":
                session.tasks.append(asyncio.create_task(self._receive(session, track), name="golive-audio"))

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self.end(session, f"connection {pc.connectionState}")

        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        if not any(t.kind == "audio" for t in pc.getTransceivers()):
            raise GoLiveError(400, "the offer has no audio: allow the microphone and try again")
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)  # aiortc gathers every candidate here: the answer is complete
        local = pc.localDescription
        return RTCSessionDescription(sdp=local.sdp, type=local.type)

    async def _receive(self, session: GoLiveSession, track: MediaStreamTrack) -> None:
        resampler = AudioConverter(format="flt", layout="mono", rate=SAMPLE_RATE)
        try:
            while True:
                frame = await track.recv()
                if isinstance(frame, av.AudioFrame):
                    session.audio.push(to_mono48k(resampler, frame))
        except MediaStreamError:
            reason = "the speaker hung up"
        except Exception as e:  # a frame PyAV cannot convert: end cleanly rather than broadcast garbage
            log.warning("browser speaker %s: audio failed: %s", session.username, e)
            reason = f"audio failed: {e}"
        asyncio.create_task(self.end(session, reason))  # noqa: RUF006 -- end() cancels this very task

    async def _watch(self, session: GoLiveSession) -> None:
        """The hub may stop the address (an operator, a shutdown): the session follows."""
        while session.ended is None:
            await asyncio.sleep(WATCH_S)
            if session.address_id is None:
                continue
            a = self.addresses.get(session.address_id)
            if a is None or getattr(a, "stopping", False):
                asyncio.create_task(self.end(session, "stopped by the hub", stop_address=False))  # noqa: RUF006
                return

    # -- ending -----------------------------------------------------------------------------------------------
    async def end(self, session: GoLiveSession, reason: str, *, stop_address: bool = True) -> None:
        if session.ended is not None:
            return
        session.ended = reason
        log.info("browser speaker %s: session ended (%s)", session.username, reason)
        me = asyncio.current_task()
        for t in session.tasks:
            if t is not me:
                t.cancel()
        if session.broadcaster is not None:
            await session.broadcaster.stop()
        if session.address_id is not None and stop_address:
            try:
                await self.addresses.stop(session.address_id, reason)
            except Exception:
                log.exception("browser speaker %s: cannot stop address %d", session.username, session.address_id)
        with contextlib.suppress(Exception):
            await session.pc.close()
        if self.sessions.get(session.user_id) is session:
            del self.sessions[session.user_id]
        self._last[session.user_id] = session

    async def stop(self, user_id: int, reason: str = "the speaker stopped") -> GoLiveSession | None:
        session = self.sessions.get(user_id)
        if session is None:
            return None
        await self.end(session, reason)
        return session

    async def close(self) -> None:
        for session in list(self.sessions.values()):
            await self.end(session, "the hub is stopping")

    # -- reading ----------------------------------------------------------------------------------------------
    def status(self, user_id: int) -> dict[str, Any]:
        session = self.sessions.get(user_id) or self._last.get(user_id)
        if session is None:
            return {
                "live": False,
                "on_air": False,
                "address_id": None,
                "title": None,
                "sites_reached": 0,
                "level_dbfs": SILENCE_DBFS,
                "connection": "new",
                "ended_reason": None,
                "underruns": 0,
            }
        out = session.status(self.monotonic())
        if out["live"] and session.address_id is not None:
            a = self.addresses.get(session.address_id)
            reached = getattr(a, "reached", 0) if a is not None else 0
            out["sites_reached"] = max(int(reached or 0), session.sites)
        return out

    async def sites_live(self, zone_ids: tuple[int, ...]) -> int:
        """Enrolled sites of those zones (all zones when empty) that the fleet does not see offline."""
        if self.fleet is None:
            return 0

        def names() -> set[str]:
            with self.db.session() as s:
                q = select(Site.name).where(Site.enrolled_at.is_not(None), Site.revoked_at.is_(None))
                q = q.where(Site.zone_id.in_(zone_ids)) if zone_ids else q.where(Site.zone_id.is_not(None))
                return set(s.scalars(q))

        enrolled = await asyncio.to_thread(names)
        return sum(1 for v in self.fleet.snapshot() if v.get("name") in enrolled and v.get("state") != "offline")
