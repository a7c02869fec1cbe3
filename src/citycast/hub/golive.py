"""Going live from a browser: the speaker's microphone over WebRTC (aiortc) into an address.

One `GoLiveSession` per speaker (user): an `RTCPeerConnection` that only receives, a task that reads the audio
track, resamples it to 48 kHz mono float32 and pushes it into a `BrowserAudio` buffer, and a `LiveBroadcaster`
that pulls one 20 ms block per frame from that buffer on the broadcast clock. The browser's clock therefore never
paces the broadcast: a buffer that runs dry is concealed (the last block, faded) and then silent; one that grows
(the browser's clock is a little fast) is trimmed back, so the delay stays bounded.

A session ends when the speaker stops, hangs up (the track ends), ICE fails or the connection closes, or the hub
stops the address (an operator); the address is stopped with a reason in each case.

Where it runs: the session's media (the peer connection with its ICE/DTLS/SRTP sockets and callbacks, the receive
task that decodes into `BrowserAudio`, the `LiveBroadcaster` with the media plane's own NATS connection) lives on
the hub's media plane (`media_plane.py`), so a flood of requests or a slow query on the control loop delays
neither the speaker's voice nor its frames. The PIN gate, `AddressManager.start/stop`, the database and the
console's events stay on the control loop. The two meet only through `MediaPlane.run` (control to media) and
`_to_control` (media to control: a failed connection or a hang-up ends the session there); what the API reads
of a session's audio is an immutable `AudioReading` the media loop replaces. Without a media plane (`media=None`)
everything runs on the caller's loop, as a unit test may want.

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
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import av
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from sqlalchemy import select

from citycast.hub.db.models import Site, utcnow
from citycast.hub.telephone.hub_services import Addresses
from citycast.hub.telephone.pins import BLOCK_S, PinGate, PinGuard, PinStore
from citycast.ingest.live import LiveBroadcaster
from citycast.media.audio import FRAME_SAMPLES, SAMPLE_RATE
from citycast.media.convert import AudioConverter
from citycast.media.render import Samples
from citycast.tasks import cancel_and_wait

if TYPE_CHECKING:
    from citycast.hub.db.engine import Database
    from citycast.hub.fleet import FleetState
    from citycast.hub.media_plane import MediaPlane

log = logging.getLogger(__name__)

T = TypeVar("T")

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


class LiveAddresses(Addresses, Protocol):
    """What a session needs of the hub's `AddressManager`: what a phone call needs, and its bus to publish on."""

    nc: Any
    signer: Any
    subjects: Any


def dbfs(mean_square: float) -> float:
    return SILENCE_DBFS if mean_square <= 1e-12 else max(SILENCE_DBFS, 10.0 * math.log10(mean_square))


@dataclass(frozen=True)
class AudioReading:
    """What the API may read of a `BrowserAudio` from another thread: replaced whole, never changed."""

    received_at: float | None = None
    level_dbfs: float = SILENCE_DBFS
    underruns: int = 0

    def fresh(self, now: float) -> bool:
        return self.received_at is not None and now - self.received_at <= AUDIO_FRESH_S


class BrowserAudio:
    """The browser's voice as a `LiveSource` (sans-IO: `push` what arrived, `next_block` at each frame's time).

    Used from one loop (the media plane's); other threads read only `reading`, a snapshot replaced at each push
    and block (one reference assignment), so the reader never sees a deque in mid-change nor makes the media
    loop wait on a lock."""

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
        self.reading = AudioReading()

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
        self.reading = AudioReading(self.received_at, self.reading.level_dbfs, self.underruns)

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
        self.reading = AudioReading(self.received_at, self.level_dbfs, self.underruns)
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
    """One speaker's session. The control loop owns `ended`, `address_id`, `sites` and `tasks`; the media loop
    owns `pc`, `broadcaster`, `media_tasks` and `audio`, and writes `connection` (one string, read by the API)."""

    user_id: int
    username: str
    remote: str
    audio: BrowserAudio
    title: str
    zone_ids: tuple[int, ...]
    pc: RTCPeerConnection | None = None
    connection: str = "new"
    address_id: int | None = None
    broadcaster: LiveBroadcaster | None = None
    sites: int = 0
    started_at: dt.datetime = field(default_factory=utcnow)
    ended: str | None = None  # the reason, once over
    tasks: list[asyncio.Task[None]] = field(default_factory=list)  # on the control loop
    media_tasks: list[asyncio.Task[None]] = field(default_factory=list)  # on the media loop

    def status(self, now: float) -> dict[str, Any]:
        live = self.ended is None and self.address_id is not None
        audio = self.audio.reading
        return {
            "live": live,
            "on_air": live and audio.fresh(now),
            "address_id": self.address_id,
            "title": self.title,
            "sites_reached": self.sites,
            "level_dbfs": round(audio.level_dbfs, 1) if live else SILENCE_DBFS,
            "connection": self.connection,
            "ended_reason": self.ended,
            "underruns": audio.underruns,
        }


class GoLive:
    """The hub's browser speakers: at most one live session per user.

    With `media`, each session's media runs on that plane (see the module's docstring); the hub passes its own.
    Its public coroutines are called from the control loop."""

    def __init__(
        self,
        addresses: LiveAddresses,
        db: Database,
        fleet: FleetState | None = None,
        *,
        publish: Callable[[dict[str, Any]], None] | None = None,
        guard: PinGuard | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        media: MediaPlane | None = None,
    ) -> None:
        self.addresses = addresses
        self.db = db
        self.fleet = fleet
        self.pins = PinStore(db, publish=publish)
        self.guard = guard if guard is not None else PinGuard()  # an empty guard is falsy (it has a len)
        self.monotonic = monotonic
        self.media = media
        self.sessions: dict[int, GoLiveSession] = {}
        self._last: dict[int, GoLiveSession] = {}  # the last ended session per user, for its status
        self._lock = asyncio.Lock()
        self._control: asyncio.AbstractEventLoop | None = None  # the loop offers come from
        self._ending: set[asyncio.Task[None]] = set()

    # -- crossing between the loops -----------------------------------------------------------------------------
    async def _on_media(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` where the session's media lives, from the control loop."""
        return await (self.media.run(coro) if self.media is not None else coro)

    def _to_control(self, coro: Coroutine[Any, Any, None]) -> None:
        """Start `coro` on the control loop without waiting for it (from a media-loop callback or task, or from
        the control loop itself); `close()` waits for it."""
        control = self._control
        try:
            here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if control is None or control is here:
            self._spawn(coro)
            return
        try:
            control.call_soon_threadsafe(self._spawn, coro)
        except RuntimeError:  # the control loop is closed: the hub is gone, and the session with it
            coro.close()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._ending.add(task)  # held, so the task is not collected before it ends, and close() can wait for it
        task.add_done_callback(self._ending.discard)

    # -- going live -------------------------------------------------------------------------------------------
    async def offer(
        self, *, user_id: int, username: str, sdp: str, sdp_type: str, pin: str, title: str | None, remote: str
    ) -> tuple[RTCSessionDescription, GoLiveSession]:
        """Check the PIN, answer the browser's offer and put an address on air. Raises `GoLiveError`."""
        self._control = asyncio.get_running_loop()
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
            session = GoLiveSession(
                user_id=user_id,
                username=username,
                remote=remote,
                audio=BrowserAudio(self.monotonic),
                title=(title or "").strip() or f"Live: {grant.label or username}",
                zone_ids=grant.zone_ids,
            )
            try:
                answer = await self._on_media(self._answer(session, sdp))
            except GoLiveError:
                await self._on_media(self._close_media(session))
                raise
            except Exception as e:  # aiortc's own parse errors: the browser sent something we cannot use
                await self._on_media(self._close_media(session))
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
                await self._on_media(self._close_media(session))
                raise GoLiveError(409, str(e)) from None
            except BaseException:
                await self._on_media(self._close_media(session))
                raise
            channel = self.addresses.channel_of(session.address_id)
            await self._on_media(self._broadcast(session, channel, self.addresses.signer, self.addresses.subjects))
            self.sessions[user_id] = session
        if session.ended is not None:
            # The connection failed while the address was starting: its end found no address to stop yet.
            await self._release(session, session.ended, stop_address=True)
            raise GoLiveError(409, f"the browser's connection ended while going live ({session.ended})")
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

    # -- on the media loop ----------------------------------------------------------------------------------
    async def _answer(self, session: GoLiveSession, sdp: str) -> RTCSessionDescription:
        # Made here, so its sockets, timers and callbacks belong to the loop it runs on.
        pc = session.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio" and session.ended is None:
                session.media_tasks.append(asyncio.create_task(self._receive(session, track), name="golive-audio"))

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            session.connection = pc.connectionState
            if pc.connectionState in ("failed", "closed"):
                self._to_control(self.end(session, f"connection {pc.connectionState}"))

        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        if not any(t.kind == "audio" for t in pc.getTransceivers()):
            raise GoLiveError(400, "the offer has no audio: allow the microphone and try again")
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)  # aiortc gathers every candidate here: the answer is complete
        local = pc.localDescription
        return RTCSessionDescription(sdp=local.sdp, type=local.type)

    async def _broadcast(self, session: GoLiveSession, channel: int, signer: Any, subjects: Any) -> None:
        # A nats-py client is used only from its own loop: on the media plane, the plane's connection.
        nc = self.media.nc if self.media is not None else self.addresses.nc
        session.broadcaster = LiveBroadcaster(
            nc,
            channel=channel,
            signer=signer,
            source=session.audio,
            subjects=subjects,
            packets_per_message=self.addresses.packing(channel),
        )
        session.broadcaster.start()

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
        self._to_control(self.end(session, reason))

    async def _close_media(self, session: GoLiveSession) -> None:
        """Stop the receive task and the broadcaster and close the peer connection; safe to repeat."""
        await cancel_and_wait(*session.media_tasks)
        if session.broadcaster is not None:
            await session.broadcaster.stop()
        if session.pc is not None:
            with contextlib.suppress(Exception):
                await session.pc.close()

    # -- on the control loop --------------------------------------------------------------------------------
    async def _watch(self, session: GoLiveSession) -> None:
        """The hub may stop the address (an operator, a shutdown): the session follows."""
        while session.ended is None:
            await asyncio.sleep(WATCH_S)
            if session.address_id is None:
                continue
            a = self.addresses.get(session.address_id)
            if a is None or getattr(a, "stopping", False):
                self._to_control(self.end(session, "stopped by the hub", stop_address=False))
                return

    # -- ending -----------------------------------------------------------------------------------------------
    async def end(self, session: GoLiveSession, reason: str, *, stop_address: bool = True) -> None:
        if session.ended is not None:
            return
        session.ended = reason
        # At once, not after the media is closed (a hop to the media loop): from here the user may go live again.
        if self.sessions.get(session.user_id) is session:
            del self.sessions[session.user_id]
        self._last[session.user_id] = session
        log.info("browser speaker %s: session ended (%s)", session.username, reason)
        me = asyncio.current_task()
        for t in session.tasks:
            if t is not me:
                t.cancel()
        await self._release(session, reason, stop_address=stop_address)

    async def _release(self, session: GoLiveSession, reason: str, *, stop_address: bool) -> None:
        try:
            await self._on_media(self._close_media(session))
        except Exception:  # the address is stopped whatever the media side did
            log.exception("browser speaker %s: closing the media failed", session.username)
        if session.address_id is not None and stop_address:
            try:
                await self.addresses.stop(session.address_id, reason)
            except Exception:
                log.exception("browser speaker %s: cannot stop address %d", session.username, session.address_id)
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
        for _ in range(100):  # sessions that were ending already (a hang-up, a failed connection)
            if not self._ending:
                break
            await asyncio.gather(*list(self._ending), return_exceptions=True)

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
