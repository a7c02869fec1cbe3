"""The time service a process offers: the hub's own clock, or a city responder's estimate of it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from citycast.clock.estimator import ClockEstimator
from citycast.clock.handover import Handover
from citycast.clock.local import Clock, SystemClock
from citycast.clock.memory import MemoryKeeper, keep_memory, seed_from
from citycast.clock.service import ClockSync, EstimatedClock, TimeResponder
from citycast.protocol.subjects import Subjects
from citycast.tasks import cancel_and_wait

log = logging.getLogger(__name__)

_S = 1_000_000_000
# A peer whose last answer is older than this is gone (it answers at least once a second while up).
PEER_FRESH_NS = 3 * _S
# At start, how long a responder whose peer's server is reachable waits for that peer's responder (itself syncing
# to the hub when the city starts together) before it serves its own estimate of the hub: serving first and
# moving to the peer's clock after means slewing the city's clock over a minute or more.
PEER_STARTUP_WAIT_NS = 30 * _S
# A peer further than this from this responder's own estimate of the hub is not followed: two responders of a
# city differ by their long hauls' asymmetry (measured up to 1 ms); a peer wrong by more has lost the hub, or the
# zone's peers were configured in a loop and are following each other.
PEER_AGREE_NS = 5_000_000
# ... but only once that own estimate has a window's worth of samples: over a 70 +- 10 ms long haul a young
# estimate's drift is off by tens of ppm for its first minute and its offset wanders by milliseconds (the bench
# saw 5.1 ms between A's clock and B's own estimate 42 s after start), so judging the peer then would drop the
# better clock for the worse.
PEER_JUDGE_AFTER_NS = 10 * 60 * _S


# A city responder writes its drift down only once its window is full: over a long haul a young estimate
# reports a drift sigma of 2-3 ppm while it is 20-45 ppm off (simulation, docs/benchmarks.md "One clock per city").
CITY_MEMORY_AFTER_NS = 10 * 60 * _S


def city_estimator() -> ClockEstimator:
    """What a city responder syncs to the hub with (also the long soak's model of one)."""
    # The city's sites track whatever this responder serves; a clock that changes rate gently (and whose
    # corrections are slewed over minutes, not seconds) is one they all track alike.
    return ClockEstimator(max_slew_ppm=20.0, slew_time_ns=60 * _S)


def peer_estimator() -> ClockEstimator:
    # A peer's served clock is no straight line: its own corrections are slewed in at up to 20 ppm for minutes,
    # and a line fitted over the usual 16-minute window bends away from such a curve (in simulation, following a
    # clock that ran at +20, 0 and -15 ppm for a minute each: 1.4 ms off with the gentle estimator, and still 0.6 ms
    # off three minutes after the last change; 0.1 ms at most with this one). Over the city's LAN a 32 s window of
    # 1 s buckets knows offset and rate to microseconds, so this one follows the peer closely, kinks and all.
    return ClockEstimator(window_ns=32 * _S, bucket_ns=_S, slew_time_ns=_S)


class PeeredClock:
    """What a city responder with zone peers serves: the first peer (in zone order) that answers and agrees with
    the hub to `PEER_AGREE_NS`, else its own estimate of the hub; `Handover` slews every change of source in.

    Peers are the city servers *ahead* of this one in the zone's order, reached over the city's LAN: the zone's
    first server follows the hub, the second follows the first, and so on, so every responder of a city serves
    the first one's clock to within a LAN exchange's error, and losing it moves no site's clock."""

    def __init__(
        self, local: Clock, peers: Sequence[ClockSync], hub: ClockSync, *, judge_after_ns: int = PEER_JUDGE_AFTER_NS
    ) -> None:
        self.local = local
        self.judge_after_ns = judge_after_ns
        self.peers = list(peers)
        self.hub = hub
        self.handover = Handover()
        self._sources = [s.estimator.to_broadcast for s in (*self.peers, hub)]
        self._started_ns = local.now_ns()

    def usable_peer(self, local_ns: int) -> int | None:
        hub = self.hub.estimator
        for i, peer in enumerate(self.peers):
            est, last = peer.estimator, peer.last_sample_ns
            if not est.synced or last is None or local_ns - last > PEER_FRESH_NS:
                continue
            judged = hub.synced and hub.span_ns >= self.judge_after_ns
            if judged and abs(est.to_broadcast(local_ns) - hub.to_broadcast(local_ns)) > PEER_AGREE_NS:
                continue
            return i
        return None

    @property
    def synced(self) -> bool:
        """Ready to serve: a peer is usable, or the hub's estimate is and no peer will be soon: none answered in
        the first `PEER_FRESH_NS`, and none whose server is reachable within `PEER_STARTUP_WAIT_NS` (a city
        starting together: the peer's responder is syncing to the hub too). Serving the hub's clock first and
        the peer's after would slew the city's clock for a minute or more. Once serving, whatever source it has."""
        if self.handover.choice is not None:
            return True
        now = self.local.now_ns()
        if self.usable_peer(now) is not None:
            return True
        if not self.hub.estimator.synced:
            return False
        waited = now - self._started_ns
        if waited <= PEER_FRESH_NS:
            return False
        return waited > PEER_STARTUP_WAIT_NS or not any(p.connected for p in self.peers)

    def _choice(self, local_ns: int) -> int:
        peer = self.usable_peer(local_ns)
        if peer is not None:
            return peer
        if self.hub.estimator.synced:
            return len(self.peers)
        # Neither fresh peer nor hub: keep the source in use (its estimate runs on), else the first that has one.
        current = self.handover.choice
        if current is not None:
            return current
        return next((i for i, p in enumerate(self.peers) if p.estimator.synced), len(self.peers))

    def _to_broadcast(self, local_ns: int) -> int:
        before = self.handover.choice
        choice = self._choice(local_ns)
        if before is None and not self.synced:
            # Read before anything is served (the wire stamps every message it reads): no source is chosen yet.
            return self._sources[choice](local_ns)
        out = self.handover.to_broadcast(local_ns, choice, self._sources)
        if before is None:
            log.warning("time source: %s", self.source_name(choice))
        elif choice != before:
            log.warning(
                "time source: %s -> %s; the %.3f ms between them is slewed in at 20 ppm at most",
                self.source_name(before), self.source_name(choice), self.handover.correction_ns(local_ns) / 1e6,
            )  # fmt: skip
        return out

    def source_name(self, choice: int | None) -> str:
        if choice is None:
            return "none"
        return "hub" if choice == len(self.peers) else f"peer {self.peers[choice].url}"

    def now_ns(self) -> int:
        return self._to_broadcast(self.local.now_ns())

    def at(self, true_ns: int) -> int:
        return self._to_broadcast(self.local.at(true_ns))

    def served_at(self, local_ns: int) -> int:
        return self._to_broadcast(local_ns)


class TimeService:
    """With `upstream` unset this is the broadcast clock itself (the hub). With an upstream subject it is a city
    responder: it syncs to the hub over the long-haul link and serves its estimate to the sites near it, so the
    link's asymmetry shifts a whole city together instead of skewing its sites apart. Until its own estimate has
    converged it stays silent rather than hand the sites a wrong clock.

    `peers` (NATS URLs of the zone's city servers ahead of this one, in order) make it follow them over the
    city's LAN while they answer (`PeeredClock`): a city with two servers then serves one clock, not two."""

    def __init__(
        self,
        url: str,
        subjects: Subjects,
        *,
        zone: str | None = None,
        upstream: str | None = None,
        creds: Path | None = None,
        upstream_inbox_prefix: str | None = None,
        peers: Sequence[str] = (),
        peer_judge_after_ns: int = PEER_JUDGE_AFTER_NS,
        memory: Path | None = None,
        memory_keeper: MemoryKeeper | None = None,
        memory_check_s: float = 10.0,
    ) -> None:
        if peers and (upstream is None or zone is None):
            raise ValueError("time peers are for a city responder (a zone and an upstream)")
        self.local = SystemClock()
        self.sync: ClockSync | None = None
        self.peer_syncs: list[ClockSync] = []
        self.served: PeeredClock | None = None
        served: Clock = self.local
        if upstream is not None:
            self.sync = ClockSync(
                url, upstream, self.local, estimator=city_estimator(), creds=creds, inbox_prefix=upstream_inbox_prefix
            )
            served = EstimatedClock(self.sync.estimator, self.local)
            # After a restart only the offset is left to learn: a young estimate's wrong drift is what makes a
            # city's clock wander by a millisecond in its first minutes.
            if memory is not None and seed_from(self.sync.estimator, memory) is not None:
                log.warning("time: drift remembered in %s, only the offset to learn", memory)
            if peers:
                self.peer_syncs = [
                    ClockSync(
                        peer,
                        subjects.time(zone),
                        self.local,
                        estimator=peer_estimator(),
                        creds=creds,
                        inbox_prefix=upstream_inbox_prefix,
                    )
                    for peer in peers
                ]
                self.served = served = PeeredClock(
                    self.local, self.peer_syncs, self.sync, judge_after_ns=peer_judge_after_ns
                )
        self.memory = memory if upstream is not None else None
        self.memory_keeper = memory_keeper or MemoryKeeper(min_span_ns=CITY_MEMORY_AFTER_NS)
        self.memory_check_s = memory_check_s
        self._memory_task: asyncio.Task[None] | None = None
        self.responder = TimeResponder(
            url,
            subjects.time(zone),
            served,
            ready=lambda: self.synced,
            creds=creds,
            own_inboxes=frozenset(s.inbox for s in self.peer_syncs),
        )

    @property
    def synced(self) -> bool:
        if self.served is not None:
            return self.served.synced
        return self.sync is None or self.sync.estimator.synced

    async def start(self) -> None:
        if self.sync is not None:
            await self.sync.start()
        for peer in self.peer_syncs:
            await peer.start()
        await self.responder.start()
        if self.memory is not None and self.sync is not None:
            est = self.sync.estimator
            self._memory_task = asyncio.create_task(
                keep_memory(
                    self.memory,
                    self.memory_keeper,
                    lambda: est,
                    lambda: est.to_broadcast(self.local.now_ns()) if est.synced else None,
                    time.monotonic_ns,
                    self.memory_check_s,
                ),
                name="city-clock-memory",
            )

    async def stop(self) -> None:
        await cancel_and_wait(self._memory_task)
        self._memory_task = None
        with contextlib.suppress(Exception):
            await self.responder.stop()
        for peer in self.peer_syncs:
            await peer.stop()
        if self.sync is not None:
            await self.sync.stop()
