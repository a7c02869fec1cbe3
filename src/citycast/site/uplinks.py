"""Hitless dual-path delivery (SMPTE ST 2022-7 style, over NATS): a site on two or more city servers.

A city runs two city servers, each a leafnode of the hub over its own long-haul path. A site connects to every
one of them (one NATS connection per *uplink*, each bound to its own local address or interface when the box has
two: two SIMs, fibre and cellular), hears every frame once per path and plays the first verified copy. A copy
that arrives again on another uplink is an expected duplicate, counted as such; the same frame twice on the
*same* uplink is a replay, as it was with one connection. A lost TCP retransmission on one path (≈ 435 ms of
tail) is covered by the other path's copy, so the playout delay can be shorter than one path's tail.

`FrameMerge` decides first / duplicate / replay: sans-IO, keyed by (stream, seq), bounded in memory whatever it
is fed, so hours of frames are replayed in milliseconds by its tests. `UplinkSet` owns the connections: every one
subscribes the channel's audio subject; control traffic (telemetry, desired state, commands) uses one healthy
connection at a time and moves to another when it drops. `ClockFailover` keeps the site's clock estimator fed by
the time responder beside whichever city server is reachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import ParseResult

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.aio.transport import TcpTransport

from citycast.bus.connection import retire, settle
from citycast.bus.rawnats import connect_bound
from citycast.bus.tls import creds_context
from citycast.clock.estimator import ClockEstimator
from citycast.clock.local import Clock
from citycast.clock.service import ClockSync
from citycast.site.uplink_spec import Uplink, parse_uplinks
from citycast.tasks import cancel_and_wait
from citycast.ticks import sleep_to_grid

__all__ = ["ClockFailover", "Copy", "FrameMerge", "Uplink", "UplinkSet", "parse_uplinks"]

log = logging.getLogger(__name__)

MERGE_WIDTH = 1024  # sequence numbers remembered per stream: 20 s of 20 ms frames, far beyond D + 1 s
MERGE_STREAMS = 16  # streams remembered at once (least recently heard forgotten first)
# A connection that has heard no frame for this long while another has is not fit to carry control: a path cut
# silently (a black hole) leaves its TCP connection "connected" until pings fail, which takes far longer.
QUIET_S = 2.0
NEVER_ANSWERED_PATIENCE = 5  # times `give_up_after`, for a responder that has never answered
UPLINK_PING_S = 10  # nats-py's ping interval on an uplink (2 unanswered: reconnect); its default is 120 s


# -- the merge (sans-IO) ------------------------------------------------------------------------------------------


class Copy(StrEnum):
    """What one verified frame from one uplink is to the merge."""

    FIRST = "first"  # never seen: play it (freshness and the replay window still apply)
    DUPLICATE = "duplicate"  # already heard on another uplink: the expected second copy, not played
    REPLAY = "replay"  # already heard on this very uplink: nobody sends a frame twice down one path
    OLD = "old"  # older than the merge remembers: the site's freshness and replay checks decide


class _Ring:
    __slots__ = ("masks", "seqs", "top")

    def __init__(self, width: int) -> None:
        self.top = -1
        self.seqs = [-1] * width  # which sequence number a slot holds (a slot is reused every `width`)
        self.masks = [0] * width  # the uplinks that delivered it, one bit each


class FrameMerge:
    """First copy wins: per stream a ring of the last `width` sequence numbers with the set of uplinks that
    delivered each. Memory is `max_streams * width` slots whatever arrives. Feed it verified frames only (a
    forged sequence number far ahead would push the genuine stream out of its window)."""

    def __init__(self, width: int = MERGE_WIDTH, max_streams: int = MERGE_STREAMS) -> None:
        if width < 1 or max_streams < 1:
            raise ValueError("width and max_streams must be >= 1")
        self.width = width
        self.max_streams = max_streams
        self._streams: OrderedDict[int, _Ring] = OrderedDict()
        self.first_by_uplink: dict[int, int] = {}  # frames each uplink delivered first (who is carrying the city)

    def __len__(self) -> int:
        return len(self._streams)

    def offer(self, stream: int, seq: int, uplink: int) -> Copy:
        if not 0 <= uplink < 64:
            raise ValueError(f"uplink must be 0..63, got {uplink}")
        ring = self._streams.get(stream)
        if ring is None:
            if len(self._streams) >= self.max_streams:
                self._streams.popitem(last=False)
            ring = self._streams[stream] = _Ring(self.width)
        else:
            self._streams.move_to_end(stream)
        if seq <= ring.top - self.width:
            return Copy.OLD
        ring.top = max(ring.top, seq)
        slot = seq % self.width
        bit = 1 << uplink
        if ring.seqs[slot] != seq:
            ring.seqs[slot], ring.masks[slot] = seq, bit
            self.first_by_uplink[uplink] = self.first_by_uplink.get(uplink, 0) + 1
            return Copy.FIRST
        if ring.masks[slot] & bit:
            return Copy.REPLAY
        ring.masks[slot] |= bit
        return Copy.DUPLICATE


# -- one uplink: a NATS connection, optionally bound to a local address or interface ------------------------------


class _BoundTransport(TcpTransport):
    """nats-py's TCP transport, leaving by a given local address and/or interface."""

    def __init__(self, addr: str | None, dev: str | None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._addr = addr
        self._dev = dev

    async def connect(self, uri: ParseResult, buffer_size: int, connect_timeout: int) -> None:
        host, port = uri.hostname or "127.0.0.1", uri.port or 4222
        async with asyncio.timeout(connect_timeout):
            sock = await connect_bound(host, port, (self._addr, self._dev), connect_timeout)
            r, w = await asyncio.open_connection(sock=sock, limit=buffer_size)
        self._bare_io_reader = self._io_reader = r
        self._bare_io_writer = self._io_writer = w


class BoundClient(Client):
    """A nats-py client whose every (re)connection leaves by the uplink's local address or interface."""

    def __init__(self, addr: str | None, dev: str | None) -> None:
        super().__init__()
        self._bind = (addr, dev)

    async def _connect_to_server(self, s: Any) -> None:
        # nats-py 2.16's own method, with our transport in place of its TcpTransport (the pinned version's
        # layout; a test binds to 127.0.0.2 and checks the address the server saw).
        s.last_attempt = asyncio.get_running_loop().time()
        if not self._transport:
            self._transport = _BoundTransport(*self._bind)
        await self._transport.connect(s.uri, buffer_size=32768, connect_timeout=self.options["connect_timeout"])


async def connect_uplink(
    uplink: Uplink, *, name: str, creds: Path | None = None, inbox_prefix: str | None = None
) -> Client:
    """Connect to `uplink` forever (back-off jittered), reconnecting forever after: `citycast.bus.connection`'s
    rules, with the uplink's local side bound."""
    addr, dev = uplink.local()
    options: dict[str, Any] = {}
    tls = creds_context(creds)
    if tls is not None:
        options["tls"] = tls
        options["tls_handshake_first"] = True
    if creds is not None:
        options["user_credentials"] = str(creds)
    if inbox_prefix is not None:
        options["inbox_prefix"] = inbox_prefix

    async def disconnected() -> None:
        log.warning("%s: uplink %s down", name, uplink.label)

    async def reconnected() -> None:
        log.info("%s: uplink %s up again", name, uplink.label)

    async def error(e: Exception) -> None:
        log.debug("%s: uplink %s: %r", name, uplink.label, e)

    delay = 0.2
    while True:
        nc = BoundClient(addr, dev)
        try:
            async with asyncio.timeout(3 * 6.0 + 5.0):
                await nc.connect(
                    uplink.url,
                    name=name,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=1,
                    ping_interval=UPLINK_PING_S,
                    max_outstanding_pings=2,
                    allow_reconnect=True,
                    disconnected_cb=disconnected,
                    reconnected_cb=reconnected,
                    error_cb=error,
                    connect_timeout=5,
                    **options,
                )
            return nc
        except Exception as e:  # nats raises several unrelated types for "not there yet"
            with contextlib.suppress(Exception):
                await nc.close()
            log.warning("%s: cannot reach uplink %s (%s); retrying in %.1f s", name, uplink.label, e, delay)
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, 30.0)


# -- the set of uplinks -------------------------------------------------------------------------------------------

AudioCallback = Callable[[bytes, int], None]


class UplinkSet:
    """N connections hearing one audio subject, one of them carrying control at a time.

    `start` returns as soon as one uplink is connected (a site must play with one path down); the others
    connect in the background and subscribe when they arrive. `on_control` is called with the new control
    connection when the current one drops and another is up."""

    def __init__(
        self,
        uplinks: list[Uplink],
        on_audio: AudioCallback,
        on_control: Callable[[Client], Awaitable[None]],
        *,
        name: str,
        creds: Path | None = None,
        inbox_prefix: str | None = None,
        check_interval_s: float = 0.25,
    ) -> None:
        if not uplinks:
            raise ValueError("an uplink set needs at least one uplink")
        self.uplinks = uplinks
        self.on_audio = on_audio
        self.on_control = on_control
        self.name = name
        self.creds = creds
        self.inbox_prefix = inbox_prefix
        self.check_interval_s = check_interval_s
        self.conns: list[Client | None] = [None] * len(uplinks)
        self._subs: list[Subscription | None] = [None] * len(uplinks)
        self.subject: str | None = None
        self.control: int | None = None  # index of the connection carrying control
        self.failovers = 0
        self.last_heard: list[float] = [-1e18] * len(uplinks)  # monotonic time of each connection's last frame
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._first = asyncio.Event()

    def up(self) -> dict[str, bool]:
        """Each path by its label: connected now, and hearing the channel unless no path does."""
        fit = self.fit(time.monotonic())
        return {u.label: ok for u, ok in zip(self.uplinks, fit, strict=True)}

    def _callback(self, index: int) -> Callable[[Msg], Awaitable[None]]:
        async def on_msg(msg: Msg) -> None:
            self.last_heard[index] = time.monotonic()
            self.on_audio(msg.data, index)

        return on_msg

    async def connect(self, index: int) -> Client:
        return await connect_uplink(
            self.uplinks[index], name=f"site:{self.name}:{index}", creds=self.creds, inbox_prefix=self.inbox_prefix
        )

    async def _bring_up(self, index: int) -> None:
        nc = await self.connect(index)
        async with self._lock:
            self.conns[index] = nc
            if self.subject is not None:
                self._subs[index] = await nc.subscribe(self.subject, cb=self._callback(index), pending_msgs_limit=4096)
        self._first.set()

    async def start(self, subject: str) -> Client:
        """Connect every uplink (in the background), subscribe `subject` on each; return the first connected."""
        self.subject = subject
        self._tasks = [
            asyncio.create_task(self._bring_up(i), name=f"uplink:{self.name}:{i}") for i in range(len(self.uplinks))
        ]
        await self._first.wait()
        self.control = next(i for i, c in enumerate(self.conns) if c is not None)
        conn = self.conns[self.control]
        assert conn is not None
        self._tasks.append(asyncio.create_task(self._watch(), name=f"uplinks:{self.name}"))
        return conn

    async def subscribe(self, subject: str) -> None:
        """Move every connection's audio subscription to `subject` (a channel change)."""
        async with self._lock:
            self.subject = subject
            for i, nc in enumerate(self.conns):
                if nc is None:
                    continue
                old, self._subs[i] = self._subs[i], None
                if old is not None and old.subject == subject:
                    self._subs[i] = old
                    continue
                if old is not None:
                    with contextlib.suppress(Exception):
                        await old.unsubscribe()
                self._subs[i] = await nc.subscribe(subject, cb=self._callback(i), pending_msgs_limit=4096)

    def fit(self, now: float) -> list[bool]:
        """Which connections may carry control at monotonic time `now`: connected, and not quiet while another hears
        the channel (a silently cut path)."""
        up = [c is not None and c.is_connected for c in self.conns]
        hearing = [u and now - t < QUIET_S for u, t in zip(up, self.last_heard, strict=True)]
        return hearing if any(hearing) else up

    def pick_control(self, now: float) -> int | None:
        """The connection control should use now: the current one while it is fit, else the first that is."""
        fit = self.fit(now)
        current = self.control
        if current is not None and fit[current]:
            return current
        return next((i for i, ok in enumerate(fit) if ok), current)

    async def _watch(self) -> None:
        while True:
            await sleep_to_grid(self.check_interval_s)
            best = self.pick_control(time.monotonic())
            if best is not None and best != self.control:
                conn = self.conns[best]
                assert conn is not None
                log.warning(
                    "%s: control moves from uplink %s to %s",
                    self.name,
                    self.uplinks[self.control].label if self.control is not None else "-",
                    self.uplinks[best].label,
                )
                self.control = best
                self.failovers += 1
                try:
                    await self.on_control(conn)
                except Exception:  # the next check tries again; audio flows on every uplink meanwhile
                    log.exception("%s: moving control to %s failed", self.name, self.uplinks[best].label)

    async def replace(self, index: int, on_swapped: Callable[[Client, Client], Awaitable[None]] | None = None) -> None:
        """Replace one uplink's connection by a fresh one (renewed credentials): the new one hears the channel
        before the old one stops. `on_swapped(old, new)` runs before the old one is drained. An uplink still
        making its first connection is left to it (it reads the renewed file)."""
        if self.conns[index] is None:
            return
        async with asyncio.timeout(30.0):
            new = await self.connect(index)
        async with self._lock:
            try:
                sub = None
                if self.subject is not None:
                    sub = await new.subscribe(self.subject, cb=self._callback(index), pending_msgs_limit=4096)
                await settle(new)
            except BaseException:
                with contextlib.suppress(Exception):
                    await new.close()
                raise
            old, old_sub = self.conns[index], self._subs[index]
            self.conns[index], self._subs[index] = new, sub
        if old is not None and on_swapped is not None:
            await on_swapped(old, new)
        if old is not None:
            await retire(old, old_sub)

    async def stop(self) -> None:
        await cancel_and_wait(*self._tasks)
        self._tasks = []
        for i, nc in enumerate(self.conns):
            if nc is None:
                continue
            await retire(nc)
            self.conns[i] = None


# -- the clock, through whichever uplink answers ------------------------------------------------------------------


class ClockFailover:
    """One `ClockSync` at a time against the time responder beside one city server; after `give_up_after` failed
    exchanges in a row it moves to the next city server's responder.

    Samples of two responders never meet in one estimator: each responder carries its own long-haul path's
    asymmetry, and mixing them would bend the estimate back and forth. After a move the new responder feeds a
    fresh estimator while the site keeps playing on the one it has (its drift carries it for minutes); once the
    fresh one is synced it replaces it (`on_estimator`), a step of the two responders' difference that the
    site's playout slews through."""

    def __init__(
        self,
        urls: list[str],
        subject: str,
        clock: Clock,
        estimator: ClockEstimator,
        *,
        give_up_after: int = 3,
        check_interval_s: float = 0.5,
        on_estimator: Callable[[ClockEstimator], None] | None = None,
        binds: list[tuple[str | None, str | None]] | None = None,
        **options: Any,
    ) -> None:
        if not urls:
            raise ValueError("no time responder to sync to")
        if binds is not None and len(binds) != len(urls):
            raise ValueError(f"{len(binds)} local binds for {len(urls)} time responders")
        self.urls = urls
        # Each responder is asked over its own path: the exchanges measure that path, as its audio takes it.
        self.binds = binds
        self.subject = subject
        self.clock = clock
        self.estimator = estimator
        self.give_up_after = give_up_after
        self.check_interval_s = check_interval_s
        self.options = options
        self.on_estimator = on_estimator
        self.index = 0
        self.switches = 0
        self.feeding = estimator  # the estimator the current responder feeds: `estimator`, or a fresh one
        self.answered: set[int] = set()  # responders that have answered at least once
        self.current = self._sync(0)
        self._task: asyncio.Task[None] | None = None

    def _sync(self, index: int) -> ClockSync:
        bind = self.binds[index] if self.binds is not None else None
        return ClockSync(self.urls[index], self.subject, self.clock, estimator=self.feeding, bind=bind, **self.options)

    def _adopt(self) -> None:
        """Once the fresh estimator is synced, the site takes it."""
        if self.feeding is not self.estimator and self.feeding.synced:
            self.estimator = self.feeding
            if self.on_estimator is not None:
                self.on_estimator(self.feeding)

    @property
    def last_rtt_ns(self) -> int | None:
        return self.current.last_rtt_ns

    async def start(self) -> None:
        await self.current.start()
        if len(self.urls) > 1:
            self._task = asyncio.create_task(self._watch(), name="clock-failover")

    async def _watch(self) -> None:
        mark = (self.current.exchanges, self.current.failures)
        while True:
            await sleep_to_grid(self.check_interval_s)
            self._adopt()
            cs = self.current
            if cs.exchanges:
                self.answered.add(self.index)
            # A responder that has never answered may just not be synced to the hub yet (city responders stay
            # silent until they are): give it longer before moving, or a fleet booting with its city flaps.
            patience = self.give_up_after * (1 if self.index in self.answered else NEVER_ANSWERED_PATIENCE)
            if cs.exchanges != mark[0]:
                mark = (cs.exchanges, cs.failures)
            elif cs.failures - mark[1] >= patience:
                await cs.stop()
                self.index = (self.index + 1) % len(self.urls)
                self.switches += 1
                log.warning("clock sync moves to the time responder at %s", self.urls[self.index])
                # a responder's samples stay with its own estimator (see the class); a site not synced yet plays
                # nothing by its estimate, so it starts afresh at once
                self.feeding = ClockEstimator()
                if not self.estimator.synced:
                    self.estimator = self.feeding
                    if self.on_estimator is not None:
                        self.on_estimator(self.feeding)
                self.current = self._sync(self.index)
                await self.current.start()
                mark = (0, 0)

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        await self.current.stop()
