"""The time service over NATS: a responder that stamps requests, and a client that keeps an estimator fed.

The messages (an 8-byte request carrying ``t1``, a 24-byte reply carrying ``t2``, ``t3`` and the request echoed)
are `citycast.protocol.time` (docs/protocol.md "Time service"); a site asks on its own subject
``<time subject>.site.<site>`` (see `time_request`). This module decides when to stamp and what to do with the
stamps.

Both ends speak NATS through `citycast.bus.rawnats`, which timestamps a message as it comes off the socket and writes
a request the moment it is stamped: with nats-py's task hops in between, loopback exchanges wander by hundreds of
µs; without them, by tens.

A responder may serve its own *estimate* of the broadcast clock (``EstimatedClock``), so
sites sync to a responder near them (one per city, beside the leafnode) which itself syncs to the hub.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

from citycast.bus.authority import site_inbox_prefix
from citycast.bus.rawnats import NatsWire, WireError, WireMessage, new_inbox, open_wire
from citycast.clock.estimator import ClockEstimator
from citycast.clock.local import Clock
from citycast.protocol.subjects import TIME_SITE_TOKEN, time_request
from citycast.protocol.time import TimeMessageError, TimeReply, TimeRequest
from citycast.tasks import cancel_and_wait

log = logging.getLogger(__name__)

# Unanswered exchanges in a row after which a client that asks for the correction tries plain requests too.
PLAIN_AFTER_FAILURES = 3
# While only plain requests have been answered and the estimator is not synced, one request in this many asks for
# the correction again.
PROBE_EVERY = 4

# Every client of ours asks with a reply subject under an inbox prefix (_INBOX, _INBOX_site.<site>, …). A requester
# chooses its reply subject freely and the responder (the hub's user) may publish almost anywhere, so a reply
# to anything else would let a site's credentials put our bytes on an audio or command subject. A site asks on its
# own subject (its permissions allow no other) and is answered only on its own inbox, so it cannot aim our
# replies at another site's inbox either; the bare subject is for trusted users (hub, ingest, city responders).
_INBOX_ROOT = "_INBOX"


class _Connection:
    """One wire connection that comes back after a broker restart or a link cut, with jittered back-off."""

    def __init__(
        self,
        url: str,
        clock: Clock,
        on_message: Callable[[WireMessage], None],
        name: str,
        creds: Path | None = None,
        bind: tuple[str | None, str | None] | None = None,
    ) -> None:
        self.url = url
        self.creds = creds
        self.bind = bind
        self.clock = clock
        self.on_message = on_message
        self.name = name
        self.wire: NatsWire | None = None
        self.subjects: list[str] = []
        self._delay = 0.1

    async def get(self) -> NatsWire:
        while self.wire is None or self.wire.closed.done():
            try:
                wire = await open_wire(
                    self.url, self.on_message, self.clock, name=self.name, creds=self.creds, bind=self.bind
                )
                try:
                    for subject in self.subjects:
                        wire.subscribe(subject)
                    if self.subjects:
                        await wire.flush()
                except BaseException:
                    wire.close()  # a half-set-up connection must not linger beside the next attempt
                    raise
                self.wire = wire
                self._delay = 0.1
            except (TimeoutError, OSError, WireError) as e:
                log.debug("%s: cannot reach %s: %r", self.name, self.url, e)
                await asyncio.sleep(self._delay * random.uniform(0.8, 1.2))
                self._delay = min(self._delay * 2, 10.0)
        return self.wire

    def close(self) -> None:
        if self.wire is not None:
            self.wire.close()
            self.wire = None


@runtime_checkable
class ServedClock(Protocol):
    """A clock a responder serves that is a function of its free-running `local` clock (a city responder's estimate
    of the broadcast clock): the responder then tells clients that ask the correction between the two."""

    local: Clock

    def served_at(self, local_ns: int) -> int: ...


class EstimatedClock:
    """The broadcast clock as a city responder knows it: its local clock through its own estimator."""

    def __init__(self, estimator: ClockEstimator, local: Clock) -> None:
        self.estimator = estimator
        self.local = local

    def served_at(self, local_ns: int) -> int:
        return self.estimator.to_broadcast(local_ns)

    def now_ns(self) -> int:
        return self.estimator.to_broadcast(self.local.now_ns())

    def at(self, true_ns: int) -> int:
        return self.estimator.to_broadcast(self.local.at(true_ns))


class TimeResponder:
    """Answers time requests on `subject` (trusted askers) and `subject.site.<site>` (that site) with (t2, t3)
    read from `clock`. A site's request is answered only on `reply_prefix(site)`, its own inbox.

    t2 is the instant the request came off the socket; t3 is read just before the reply is written to it. A
    request that asks for the correction gets it: for a `ServedClock`, t3 less its local clock at the same reading;
    for any other clock (the hub's, which is the broadcast clock) 0.
    `ready`, if given, gates the service: while it returns False requests go unanswered (a city responder
    that is not yet synced to the hub should not hand out its raw local clock). `creds` is a NATS creds file
    for a server in JWT mode. Requests answered to one of `own_inboxes` are this process's own (a city
    responder asking its zone peers, whose request a plain leafnode also carries back here) and never answered.
    """

    def __init__(
        self,
        url: str,
        subject: str,
        clock: Clock,
        *,
        ready: Callable[[], bool] | None = None,
        creds: Path | None = None,
        reply_prefix: Callable[[str], str] = site_inbox_prefix,
        own_inboxes: frozenset[str] = frozenset(),
    ) -> None:
        self.subject = subject
        self._site_request = f"{subject}.{TIME_SITE_TOKEN}."
        self._reply_prefix = reply_prefix
        self._clock = clock
        self._served = clock if isinstance(clock, ServedClock) else None
        self._ready = ready
        self._own_inboxes = own_inboxes
        self._conn = _Connection(url, clock, self._on_request, "time-responder", creds)
        self._conn.subjects = [subject, f"{self._site_request}*"]
        self._task: asyncio.Task[None] | None = None
        self.answered = 0
        self.ignored = 0
        self.misdirected = 0  # requests whose reply subject is not the asker's inbox: never answered
        self.own = 0  # this process's own peer requests, come back to it: a clock must not sync to itself

    @property
    def gives_correction(self) -> bool:
        """Whether it tells the clients that ask how its served clock differs from its free-running one."""
        return self._served is not None

    async def start(self) -> None:
        await self._conn.get()
        self._task = asyncio.create_task(self._keep_connected())

    async def _keep_connected(self) -> None:
        while True:
            wire = await self._conn.get()
            await wire.closed

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        self._conn.close()

    def _on_request(self, msg: WireMessage) -> None:
        t2 = msg.received_ns
        try:
            if not msg.reply or (self._ready and not self._ready()):
                self.ignored += 1
                return
            request = TimeRequest.decode(msg.payload)
            if msg.subject.startswith(self._site_request):
                allowed = f"{self._reply_prefix(msg.subject[len(self._site_request) :])}."
            else:
                allowed = _INBOX_ROOT
            if not msg.reply.startswith(allowed):
                self.misdirected += 1
                self.ignored += 1
                return
            if msg.reply in self._own_inboxes:
                self.own += 1
                self.ignored += 1
                return
            wire = self._conn.wire
            if wire is None:
                self.ignored += 1
                return
            served = self._served
            if served is not None and request.wants_correction:
                raw3 = served.local.now_ns()
                t3 = served.served_at(raw3)
                correction = t3 - raw3
            else:
                t3 = self._clock.now_ns()
                correction = 0
            wire.publish(msg.reply, request.reply_bytes(t2, t3, correction))
            self.answered += 1
        except TimeMessageError as e:  # a request of another size: not ours to answer
            self.ignored += 1
            log.debug("time request ignored: %s", e)
        except Exception:  # a bad request or a closing connection must never take the responder down
            self.ignored += 1
            log.debug("time request not answered", exc_info=True)


class ClockSync:
    """Runs NTP-style exchanges against a `TimeResponder` and feeds a `ClockEstimator`.

    t1 is read right before the request is written to the socket, t4 when the reply comes off it. Timeouts
    and errors are counted in `failures` and retried; they never end the task. On a server in JWT mode, pass
    the site's `creds` file and the `inbox_prefix` its permissions allow it to subscribe to, and `site`: it then
    asks on its own subject (`time_request`), the only one its permissions let it publish time requests on.

    It asks for the responder's correction (`correction`, default on): the estimator then fits the responder's
    free-running clock, a straight line, and adds the correction, instead of fitting a line to a city responder's
    served clock, which bends each time that responder slews a correction in (docs/protocol.md "Time service").
    A responder from before the correction ignores such a request: after `PLAIN_AFTER_FAILURES` unanswered
    exchanges in a row it alternates plain and corrected requests. A corrected answer settles it for good. Plain
    answers settle it only once the estimator has synced on them; until then every `PROBE_EVERY`-th request asks
    for the correction again, because a city responder that is still syncing to the hub is silent to both kinds
    and may have become ready between them.
    """

    def __init__(
        self,
        url: str,
        subject: str,
        clock: Clock,
        estimator: ClockEstimator | None = None,
        *,
        timeout_s: float = 1.0,
        retry_interval_s: float = 1.0,
        creds: Path | None = None,
        inbox_prefix: str | None = None,
        site: str | None = None,
        bind: tuple[str | None, str | None] | None = None,
        correction: bool = True,
    ) -> None:
        self.subject = subject if site is None else time_request(subject, site)
        self.correction = correction
        self._ask_correction = correction
        # True: the responder gives its correction; False: it does not (one from before it); None: not known yet
        self._settled: bool | None = None if correction else False
        self._failed_in_row = 0
        self._plain_answers = 0
        self.clock = clock
        self.estimator = estimator if estimator is not None else ClockEstimator()
        self.timeout_s = timeout_s
        self.retry_interval_s = retry_interval_s
        self.last_rtt_ns: int | None = None
        self.last_sample_ns: int | None = None  # local time of the last answered exchange (its t4)
        self.exchanges = 0
        self.failures = 0
        self._inbox = new_inbox(inbox_prefix or "_INBOX")
        self.url = url
        self._conn = _Connection(url, clock, self._on_reply, "clock-sync", creds, bind)
        self._conn.subjects = [self._inbox]
        self._pending: tuple[int, asyncio.Future[tuple[TimeReply, int]]] | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        """Whether its connection to the responder's server is up (the responder itself may not answer yet)."""
        wire = self._conn.wire
        return wire is not None and not wire.closed.done()

    @property
    def inbox(self) -> str:
        """The subject its replies come back on (unique to this object)."""
        return self._inbox

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"clock-sync:{self.subject}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        self._conn.close()

    def _on_reply(self, msg: WireMessage) -> None:
        pending = self._pending
        if pending is None or msg.subject != self._inbox:
            return
        try:
            reply = TimeReply.decode(msg.payload)
        except TimeMessageError as e:
            log.debug("time reply dropped: %s", e)
            return
        t1, fut = pending
        if reply.t1 != t1 or fut.done():
            return  # the answer to an exchange that already timed out
        fut.set_result((reply, msg.received_ns))

    async def exchange(self) -> bool:
        """One exchange; True if it produced a sample."""
        try:
            async with asyncio.timeout(self.timeout_s):
                wire = await self._conn.get()
        except TimeoutError:
            self.failures += 1
            return False
        fut: asyncio.Future[tuple[TimeReply, int]] = asyncio.get_running_loop().create_future()
        t1 = self.clock.now_ns()
        self._pending = (t1, fut)
        try:
            wire.publish(self.subject, TimeRequest(t1, self._ask_correction).encode(), reply=self._inbox)
            async with asyncio.timeout(self.timeout_s):
                reply, t4 = await fut
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # timeout, no responder, reconnecting: count it, try again later
            self.failures += 1
            self._failed_in_row += 1
            if self._settled is None and self._failed_in_row >= PLAIN_AFTER_FAILURES:
                self._ask_correction = not self._ask_correction  # perhaps a responder from before the correction
            log.debug("time exchange on %s failed: %r", self.subject, exc)
            return False
        finally:
            self._pending = None
        self._failed_in_row = 0
        self.exchanges += 1
        self.last_rtt_ns = t4 - t1
        self.last_sample_ns = t4
        c = reply.correction
        if c is None:
            if self.estimator.corrected:
                self.estimator.clear_correction()
            self.estimator.add_sample(t1, reply.t2, reply.t3, t4)
        else:
            # The samples are of the responder's free-running clock; its correction goes in beside them.
            self.estimator.add_sample(t1, reply.t2 - c, reply.t3 - c, t4)
            self.estimator.set_correction(reply.t3 - c, c)
        if self._settled is None:
            if c is not None:
                self._settled = self._ask_correction = True
            elif self.estimator.synced:
                self._settled = self._ask_correction = False
            else:
                self._plain_answers += 1
                self._ask_correction = self._plain_answers % PROBE_EVERY == 0
        return True

    async def _run(self) -> None:
        while True:
            ok = await self.exchange()
            interval = self.estimator.next_interval_ns() / 1e9
            if not ok:
                interval = max(interval, self.retry_interval_s)
            await asyncio.sleep(interval)
