"""A city's second time responder follows the first over the city's LAN, on real nats-servers in real time.

Server H stands for the hub's bus and city server B's (one server: the hub's responder answers `time`, B's answers
`time.north`); server A is city server A's, whose responder answers `time.north` with a clock set 2 ms off the
hub's (as a long haul's asymmetry leaves a city responder). B must serve A's clock, hand over to its own estimate
of the hub without a step when A goes, and never follow itself or a peer that has lost the hub.
"""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.helpers import SetClock, let_time_pass, wait_until

from citycast.bus.server import EmbeddedNats, free_port
from citycast.clock.estimator import ClockEstimator
from citycast.clock.memory import DriftMemory, MemoryKeeper, load_memory
from citycast.clock.service import TimeResponder
from citycast.hub.timeserver import (
    PEER_AGREE_NS,
    PEER_FRESH_NS,
    PEER_JUDGE_AFTER_NS,
    PEER_STARTUP_WAIT_NS,
    TimeService,
    peer_estimator,
)
from citycast.protocol.subjects import Subjects

MS = 1_000_000
MATURE_NS = 15_000_000_000  # past the estimator's young period (10 s) with a few buckets of the peer's


@pytest.fixture
def city_a(tmp_path: Path) -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(port=free_port(), workdir=tmp_path / "a")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def served_offset_ns(service: TimeService) -> int:
    assert service.served is not None
    return service.served.now_ns() - time.time_ns()


def city_of_two(
    hub_server: EmbeddedNats, a_server: EmbeddedNats, a_offset_ns: int, **b_options: Any
) -> tuple[TimeService, TimeResponder, TimeService]:
    """The hub's responder and B's on `hub_server`; A's on `a_server`, serving a clock `a_offset_ns` off; B with A
    as its peer. Not started."""
    subjects = Subjects(f"ts{secrets.token_hex(3)}")
    hub = TimeService(hub_server.url, subjects)
    a_clock = SetClock()
    a_clock.offset_ns = a_offset_ns
    a = TimeResponder(a_server.url, subjects.time("north"), a_clock)
    b = TimeService(hub_server.url, subjects, zone="north", upstream=subjects.time(), peers=[a_server.url],
                    **b_options)  # fmt: skip
    return hub, a, b


async def test_the_second_responder_serves_the_firsts_clock_and_hands_over_without_a_step(
    nats_server: EmbeddedNats, city_a: EmbeddedNats
) -> None:
    hub, a, b = city_of_two(nats_server, city_a, 2 * MS)
    assert b.served is not None and b.sync is not None
    try:
        await hub.start()
        await a.start()
        await b.start()
        await wait_until(lambda: b.synced and b.sync.estimator.synced, "B synced to A and to the hub", timeout=30)
        await wait_until(lambda: abs(served_offset_ns(b) - 2 * MS) < 200_000, "B serving A's clock", timeout=30)
        assert b.served.handover.choice == 0
        # A city server that fails has been up a while: B's estimates are past their first seconds, when a young
        # fit's rate is off by a hundred ppm or more and each correction is slewed in within a second (on a loaded
        # box that alone moved B's clock by 0.3-0.5 ms within 3 s, CI saw it), which is no handover's doing.
        await wait_until(
            lambda: min(b.sync.estimator.span_ns, b.peer_syncs[0].estimator.span_ns) >= MATURE_NS,
            "B's estimates past their first seconds",
            timeout=40,
        )
        await wait_until(lambda: abs(served_offset_ns(b) - 2 * MS) < 200_000, "B serving A's clock", timeout=30)
        # Its own estimate is the hub's clock, not A's (2 ms away); young and gentle, it may wander a few hundred µs
        # on a loaded box, which is why B serves A's.
        assert abs(b.sync.estimator.to_broadcast(time.time_ns()) - time.time_ns()) < MS
        assert a.answered > 0
        assert b.responder.own == 0

        before = served_offset_ns(b)
        await a.stop()  # city server A is gone
        # (The choice is made as the clock is read: sites ask every second; here the test reads it.)
        await wait_until(
            lambda: served_offset_ns(b) and b.served.handover.choice == 1,
            "B on its own estimate of the hub",
            timeout=10,
        )
        after = served_offset_ns(b)
        assert abs(after - before) < 200_000, "the handover stepped the served clock"
        # The 2 ms between A's clock and the hub's is slewed out at 20 ppm at most: what the handover adds to B's own
        # estimate shrinks by no more than that. (B's own estimate moves too, as it learns; on a loaded CI box its
        # rate 15 s in was off by tens of ppm, which is the estimator's doing and not the handover's.)
        t0 = b.local.now_ns()
        c0 = b.served.handover.correction_ns(t0)
        assert c0 > MS / 2  # A's 2 ms less B's own estimate's error (< 1 ms, above)
        await let_time_pass(2.0)
        t1 = b.local.now_ns()
        c1 = b.served.handover.correction_ns(t1)
        assert 0 < c0 - c1 <= 20e-6 * (t1 - t0) + 1_000
        assert served_offset_ns(b) > MS  # still near A's clock, 2 ms from the hub's
    finally:
        await b.stop()
        await a.stop()
        await hub.stop()


async def test_a_responder_never_follows_itself(nats_server: EmbeddedNats) -> None:
    """Peer = its own server (an operator's slip, or a plain leafnode carrying the request back): its own
    responder gets the request and must not answer it, or the clock would follow itself, anchored to nothing."""
    subjects = Subjects(f"ts{secrets.token_hex(3)}")
    hub = TimeService(nats_server.url, subjects)
    b = TimeService(nats_server.url, subjects, zone="north", upstream=subjects.time(), peers=[nats_server.url])
    assert b.served is not None
    try:
        await hub.start()
        await b.start()
        await wait_until(lambda: b.synced, "B synced to the hub", timeout=30)
        await wait_until(lambda: b.responder.own >= 3, "B's own peer requests seen and refused", timeout=10)
        assert b.peer_syncs[0].exchanges == 0
        assert b.served.usable_peer(time.time_ns()) is None
        assert abs(served_offset_ns(b)) < 500_000
    finally:
        await b.stop()
        await hub.stop()


async def test_a_peer_far_from_the_hub_is_not_followed(nats_server: EmbeddedNats, city_a: EmbeddedNats) -> None:
    """A peer that has lost the hub, or a loop of peers following each other, drifts off: beyond PEER_AGREE_NS
    from this responder's own estimate of the hub it is ignored (judged here at once, not after the window that
    a long haul's young estimate needs), and followed while that own estimate is still young."""
    hub, a, b = city_of_two(nats_server, city_a, PEER_AGREE_NS + 15 * MS, peer_judge_after_ns=0)
    assert b.served is not None and b.sync is not None
    try:
        await hub.start()
        await a.start()
        await b.start()
        await wait_until(
            lambda: b.sync.estimator.synced and b.peer_syncs[0].estimator.synced, "both estimates", timeout=30
        )
        await let_time_pass(1.0)
        assert b.served.usable_peer(time.time_ns()) is None
        assert abs(served_offset_ns(b)) < 500_000
        b.served.judge_after_ns = PEER_JUDGE_AFTER_NS  # the default: a young own estimate judges no peer
        assert b.served.usable_peer(time.time_ns()) == 0
    finally:
        await b.stop()
        await a.stop()
        await hub.stop()


def test_a_city_responder_tells_its_correction_and_the_hub_gives_none() -> None:
    subjects = Subjects()
    hub = TimeService("nats://127.0.0.1:1", subjects)
    city = TimeService("nats://127.0.0.1:1", subjects, zone="north", upstream=subjects.time())
    peered = TimeService("nats://127.0.0.1:1", subjects, zone="north", upstream=subjects.time(),
                         peers=["nats://127.0.0.1:2"])  # fmt: skip
    assert not hub.responder.gives_correction  # its clock is the broadcast clock: the correction is 0
    assert city.responder.gives_correction and peered.responder.gives_correction


def test_peers_are_only_for_a_city_responder() -> None:
    with pytest.raises(ValueError, match="city responder"):
        TimeService("nats://127.0.0.1:1", Subjects(), peers=["nats://127.0.0.1:2"])


async def test_a_city_starting_together_waits_for_its_peer_rather_than_slew_onto_it_later(
    nats_server: EmbeddedNats, city_a: EmbeddedNats
) -> None:
    """A's server is up but its responder is not answering yet (syncing to the hub, as when a city starts): B,
    synced to the hub already, stays silent for it instead of serving the hub's clock and slewing onto A's for a
    minute; its first source is A's."""
    hub, a, b = city_of_two(nats_server, city_a, 2 * MS)
    assert b.served is not None and b.sync is not None
    try:
        await hub.start()
        await b.start()
        await wait_until(lambda: b.sync.estimator.synced and b.peer_syncs[0].connected, "B synced, A reachable")
        await let_time_pass(PEER_FRESH_NS / 1e9 + 2)
        assert not b.synced
        await a.start()
        await wait_until(lambda: b.synced, "B ready once A answers", timeout=20)
        # A's clock (2 ms off the hub's), not the hub's, as seen by an estimate just locked (within its 1 ms
        # lock precision: 0.41 ms off on a loaded CI box)
        assert abs(served_offset_ns(b) - 2 * MS) < 800_000
        assert b.served.handover.choice == 0 and b.served.handover.switches == 0
    finally:
        await b.stop()
        await a.stop()
        await hub.stop()


async def test_a_peer_whose_server_is_unreachable_is_not_waited_for(nats_server: EmbeddedNats) -> None:
    subjects = Subjects(f"ts{secrets.token_hex(3)}")
    hub = TimeService(nats_server.url, subjects)
    dead = f"nats://127.0.0.1:{free_port()}"  # nothing listens there
    b = TimeService(nats_server.url, subjects, zone="north", upstream=subjects.time(), peers=[dead])
    assert b.served is not None
    try:
        await hub.start()
        await b.start()
        started = time.monotonic()
        await wait_until(lambda: b.synced, "B serving the hub's clock", timeout=20)
        assert time.monotonic() - started < PEER_STARTUP_WAIT_NS / 1e9
        assert abs(served_offset_ns(b)) < 500_000
        assert b.served.handover.choice == 1
    finally:
        await b.stop()
        await hub.stop()


def _follow(estimator: ClockEstimator) -> float:
    """Worst error (µs) following, over a LAN, a peer whose served clock runs at +20, 0 and -15 ppm for a minute or
    so each (a city responder slewing its own corrections in), then steady (simulated time)."""
    s, t0 = 1_000_000_000, 1_700_000_000_000_000_000
    segments = ((0, 60, 20.0), (60, 120, 0.0), (120, 200, -15.0))

    def peer_offset(t: int) -> float:
        x = (t - t0) / s
        return sum((min(x, b) - a) * ppm * 1e3 for a, b, ppm in segments if x > a)

    rng = random.Random(1)
    now = next_exchange = t0
    tick = t0 + s // 2
    worst = 0.0
    while now < t0 + 400 * s:
        if next_exchange <= tick:
            now = next_exchange
            up, down = rng.uniform(30_000, 300_000), rng.uniform(30_000, 300_000)
            t2 = now + up + peer_offset(now + up)
            estimator.add_sample(now, round(t2), round(t2) + 20_000, round(now + up + 20_000 + down))
            next_exchange = now + estimator.next_interval_ns()
        else:
            now, tick = tick, tick + s
            if estimator.synced:
                worst = max(worst, abs(estimator.to_broadcast(now) - now - peer_offset(now)) / 1e3)
    return worst


def test_the_peer_estimator_follows_a_peer_slewing_its_corrections() -> None:
    assert _follow(peer_estimator()) < 200
    # what a site's estimator (or the hub-facing gentle one) would make of it: far off, for minutes
    assert _follow(ClockEstimator()) > 500


def test_a_city_responder_starts_from_its_remembered_drift_and_ignores_a_broken_memory(tmp_path: Path) -> None:
    subjects = Subjects()
    good = tmp_path / "good.json"
    good.write_text(DriftMemory(3.0, 0.5, 0).to_json())
    seeded = TimeService("nats://127.0.0.1:1", subjects, zone="north", upstream=subjects.time(), memory=good)
    assert seeded.sync is not None and seeded.sync.estimator.drift_seeded
    broken = tmp_path / "broken.json"
    broken.write_text('{"version": 1, "drift_ppm": "fast"}')
    fresh = TimeService("nats://127.0.0.1:1", subjects, zone="north", upstream=subjects.time(), memory=broken)
    assert fresh.sync is not None and not fresh.sync.estimator.drift_seeded


async def test_a_city_responder_writes_its_drift_down_once_known(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    """(The keeper's thresholds lowered: the real one waits for a full 10-minute window.)"""
    subjects = Subjects(f"ts{secrets.token_hex(3)}")
    hub = TimeService(nats_server.url, subjects)
    path = tmp_path / "city" / "time-clock.json"
    city = TimeService(nats_server.url, subjects, zone="north", upstream=subjects.time(), memory=path,
                       memory_keeper=MemoryKeeper(max_sigma_ppm=1000.0, min_span_ns=0), memory_check_s=0.2)  # fmt: skip
    try:
        await hub.start()
        await city.start()
        await wait_until(path.exists, "the drift written down", timeout=30)
        memory = load_memory(path)
        assert memory is not None and abs(memory.drift_ppm) < 1000
    finally:
        await city.stop()
        await hub.stop()
