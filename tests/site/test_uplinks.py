"""Dual-path delivery: a site on two city servers plays the first copy of every frame, counts the second as a
duplicate (never a replay), and loses nothing when one city server dies mid-stream."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import os
import random
import signal
from pathlib import Path

import nats
import pytest
from nats.aio.msg import Msg
from tests.helpers import wait_for_log, wait_until

from citycast.bus.connection import settle
from citycast.bus.server import EmbeddedNats, LeafRemote, free_port
from citycast.clock.local import SystemClock
from citycast.hub.timeserver import TimeService
from citycast.ingest.broadcaster import Broadcaster
from citycast.media.keys import generate_private_key
from citycast.media.sinks import TimedSink
from citycast.media.sources import ToneSource
from citycast.protocol.frame import FrameSigner
from citycast.protocol.subjects import Subjects
from citycast.protocol.telemetry import Rejection, Telemetry
from citycast.site.agent import SiteAgent, SiteConfig
from citycast.site.uplinks import MERGE_STREAMS, MERGE_WIDTH, ClockFailover, Copy, FrameMerge, Uplink, parse_uplinks

# -- the merge, sans-IO -------------------------------------------------------------------------------------------


def test_first_copy_plays_the_other_path_is_a_duplicate_the_same_path_a_replay() -> None:
    merge = FrameMerge()
    assert merge.offer(7, 100, uplink=0) is Copy.FIRST
    assert merge.offer(7, 100, uplink=1) is Copy.DUPLICATE  # the expected second copy
    assert merge.offer(7, 100, uplink=1) is Copy.REPLAY  # a third: the same path twice is no path's doing
    assert merge.offer(7, 100, uplink=0) is Copy.REPLAY
    assert merge.offer(7, 101, uplink=1) is Copy.FIRST  # whichever path is first wins
    assert merge.offer(7, 101, uplink=0) is Copy.DUPLICATE
    assert merge.offer(8, 100, uplink=1) is Copy.FIRST  # another stream is another frame
    assert merge.first_by_uplink == {0: 1, 1: 2}


def test_late_copies_within_the_window_are_still_duplicates_older_ones_are_left_to_the_site() -> None:
    merge = FrameMerge(width=64)
    for seq in range(200):
        assert merge.offer(1, seq, 0) is Copy.FIRST
    # the slow path catches up by 63 frames: still known, still duplicates
    assert merge.offer(1, 199 - 63, 1) is Copy.DUPLICATE
    # older than the window: the merge no longer knows; the site's freshness and replay checks decide
    assert merge.offer(1, 199 - 64, 1) is Copy.OLD
    assert merge.offer(1, 0, 0) is Copy.OLD


def test_four_hours_of_two_lossy_reordering_paths_every_frame_once_and_state_stays_bounded() -> None:
    """Four hours of 20 ms frames (720,000) on two paths, each losing 1 % independently and delivering up to 60
    frames late (a retransmission tail), with a replay now and then injected on one path and a new stream every
    hour: each frame both paths carried is FIRST exactly once, DUPLICATE at most once, every injected replay is
    a REPLAY, and the merge's memory never exceeds its bound."""
    rng = random.Random(2022_7)
    merge = FrameMerge()
    frames = 4 * 3600 * 50
    first = dup = replay = injected = lost_both = 0
    delayed: list[list[tuple[int, int, int]]] = [[], []]  # per path, a heap of (due, stream, seq)
    for n in range(frames):
        stream, seq = 1 + n // (3600 * 50), n % (3600 * 50)
        dropped = 0
        for path in (0, 1):
            if rng.random() < 0.01:
                dropped += 1
                continue
            heapq.heappush(delayed[path], (n + (rng.randrange(60) if rng.random() < 0.05 else 0), stream, seq))
        lost_both += dropped == 2
        for path in (0, 1):
            heap = delayed[path]
            while heap and heap[0][0] <= n:
                _, s, q = heapq.heappop(heap)
                verdict = merge.offer(s, q, path)
                first += verdict is Copy.FIRST
                dup += verdict is Copy.DUPLICATE
                assert verdict is not Copy.REPLAY and verdict is not Copy.OLD, (n, path, s, q)
                if rng.random() < 0.001:  # an attacker on this path sends it again
                    injected += 1
                    assert merge.offer(s, q, path) is Copy.REPLAY
                    replay += 1
        assert len(merge) <= MERGE_STREAMS
    for path in (0, 1):
        for _, s, q in sorted(delayed[path]):
            first += merge.offer(s, q, path) is Copy.FIRST
    assert first == frames - lost_both
    assert replay == injected > 0
    assert dup > 0.97 * frames
    assert sum(len(r.seqs) for r in merge._streams.values()) <= MERGE_STREAMS * MERGE_WIDTH


def test_many_streams_forget_the_oldest() -> None:
    merge = FrameMerge(width=8, max_streams=4)
    for stream in range(100):
        merge.offer(stream, 0, 0)
    assert len(merge) == 4
    assert merge.offer(99, 0, 1) is Copy.DUPLICATE
    assert merge.offer(0, 0, 1) is Copy.FIRST  # long forgotten: a new frame to the merge (freshness refuses it)


def test_uplink_options_parse_and_refuse_clearly() -> None:
    ups = parse_uplinks(["nats://a:4222,nats://b:4223", "nats://c:4224"], ["10.0.0.2", "-", "%wwan0"])
    assert ups == [
        Uplink("nats://a:4222", "10.0.0.2"),
        Uplink("nats://b:4223", None),
        Uplink("nats://c:4224", "%wwan0"),
    ]
    assert [u.label for u in ups] == ["a:4222 via 10.0.0.2", "b:4223", "c:4224 via %wwan0"]
    with pytest.raises(ValueError, match="twice"):
        parse_uplinks(["nats://a:4222", "nats://a:4222"])
    with pytest.raises(ValueError, match="not an IP address"):
        parse_uplinks(["nats://a:4222"], ["eth0"])
    with pytest.raises(ValueError, match="2 --uplink-bind values for 1"):
        parse_uplinks(["nats://a:4222"], ["10.0.0.1", "10.0.0.2"])


# -- real servers -------------------------------------------------------------------------------------------------


async def test_each_uplink_leaves_by_its_own_local_address(nats_server: EmbeddedNats) -> None:
    """Two SIMs: the connection bound to 127.0.0.2 reaches the server from 127.0.0.2, the other from .3."""
    from citycast.site.uplinks import connect_uplink

    seen = []
    for addr in ("127.0.0.2", "127.0.0.3"):
        nc = await connect_uplink(Uplink(nats_server.url, addr), name="bind-test")
        try:
            seen.append(nc._server_info.get("client_ip"))
        finally:
            await nc.close()
    assert seen == ["127.0.0.2", "127.0.0.3"]


async def test_clock_sync_asks_over_each_uplinks_own_local_address(nats_server: EmbeddedNats) -> None:
    """The time exchanges of the i-th responder leave by the i-th uplink's bind, as that path's audio does."""
    from citycast.clock.estimator import ClockEstimator
    from citycast.clock.local import SystemClock

    binds: list[tuple[str | None, str | None]] = [("127.0.0.2", None), ("127.0.0.3", None)]
    fo = ClockFailover([nats_server.url] * 2, "citycast.time", SystemClock(), ClockEstimator(), binds=binds)
    for i, (addr, _) in enumerate(binds):
        wire = await fo._sync(i)._conn.get()
        try:
            assert wire.server_info.get("client_ip") == addr
        finally:
            wire.close()
    with pytest.raises(ValueError, match="1 local binds for 2"):
        ClockFailover([nats_server.url] * 2, "citycast.time", SystemClock(), ClockEstimator(), binds=binds[:1])


def _city(hub_leaf_port: int, workdir: Path) -> EmbeddedNats:
    return EmbeddedNats(
        port=free_port(),
        jetstream=False,
        leaf_remotes=[LeafRemote(f"nats://127.0.0.1:{hub_leaf_port}")],
        workdir=workdir,
    )


async def _agent(
    name: str, uplinks: list[Uplink], url: str, key_pub: object, telemetry_interval_s: float = 1.0
) -> SiteAgent:
    cfg = SiteConfig(
        name=name,
        nats_url=url,
        trusted_keys=[key_pub],  # type: ignore[list-item]
        delay_ns=1_000_000_000,  # the test process also speaks: a stall of its loop on a loaded box is no path fault
        uplinks=uplinks,
        watch_desired=False,
        fallback_after_ns=10_000_000_000,
        telemetry_interval_s=telemetry_interval_s,
    )
    agent = SiteAgent(cfg, TimedSink(block=480))
    await agent.start()
    return agent


FRAMES = 400  # an eight-second address


@pytest.mark.parametrize("fault", ["killed", "hung"])
async def test_a_city_server_fails_mid_address_and_the_dual_path_site_plays_every_frame(
    tmp_path: Path, fault: str
) -> None:
    """Hub, two city servers (leafnodes), a site on both and a site on city server A only. Two seconds into an
    eight-second address A is killed, or hangs (SIGSTOP: its connections stay open and carry nothing, as over a
    silently cut path): the dual-path site plays all 400 frames with nothing concealed, counts the second copies
    as duplicates and none as a replay, moves control (telemetry) to B and says A is down, and its clock syncs
    through B's side; the site on A alone loses the rest of the address (the fault matters)."""
    leaf = free_port()
    hub = EmbeddedNats(port=free_port(), leaf_listen_port=leaf, workdir=tmp_path / "hub")
    hub.start()
    city_a, city_b = _city(leaf, tmp_path / "a"), _city(leaf, tmp_path / "b")
    agents: list[SiteAgent] = []
    hung: list[int] = []
    service = TimeService(hub.url, Subjects())
    try:
        for city in (city_a, city_b):
            city.start()
            await wait_for_log(city, "Leafnode connection created")
        await service.start()
        key = generate_private_key()
        # The dual site's heartbeat is too slow to matter here: what reaches the hub after the fault is the report
        # the site sends when a path goes down (and when control moves, if it was on A).
        dual = await _agent(
            "dual", [Uplink(city_a.url), Uplink(city_b.url)], city_a.url, key.public_key(), telemetry_interval_s=600
        )
        single = await _agent("single", [], city_a.url, key.public_key())
        agents += [dual, single]
        assert dual.uplinks is not None
        await wait_until(lambda: all(dual.uplinks.up().values()) if dual.uplinks else False, "both paths up")
        for agent in agents:
            await wait_until(lambda a=agent: a.broadcast_now() is not None, f"{agent.config.name} to sync", timeout=20)
        # the subscriptions of both city servers have reached the hub: a probe published there arrives on each
        probe = await nats.connect(hub.url)
        heard = [asyncio.Event(), asyncio.Event()]
        watchers = []
        for i, city in enumerate((city_a, city_b)):
            w = await nats.connect(city.url)

            async def hear(_msg: object, event: asyncio.Event = heard[i]) -> None:
                event.set()

            await w.subscribe("probe", cb=hear)
            await w.flush()
            watchers.append(w)

        async def probed() -> bool:
            await probe.publish("probe", b"")
            await settle(probe)
            return all(e.is_set() for e in heard)

        await wait_until(probed, "the hub to reach both city servers", every=0.2)
        for w in watchers:
            await w.close()

        reports: list[Telemetry] = []

        async def on_report(msg: Msg) -> None:
            reports.append(Telemetry.from_json(msg.data))

        await probe.subscribe(Subjects().telemetry("dual"), cb=on_report)
        await settle(probe)
        caster = Broadcaster(probe, channel=1, signer=FrameSigner(key), clock=SystemClock().now_ns)
        speak = asyncio.create_task(caster.run(itertools.islice(ToneSource(440).blocks(), FRAMES)))
        await wait_until(lambda: dual.frames >= 100, "two seconds heard", timeout=20)
        first_estimator = dual.estimator  # fed by A's side
        if fault == "killed":
            await asyncio.to_thread(city_a.stop)  # A dies mid-address (its path with it); the loop plays on
        else:
            assert city_a.pid is not None
            os.kill(city_a.pid, signal.SIGSTOP)
            hung.append(city_a.pid)
        paths_then = {f"127.0.0.1:{city_a.port}": False, f"127.0.0.1:{city_b.port}": True}
        # while the address goes on: control on B, and the console told at once, through the hub, that A is down
        await wait_until(lambda: dual.nc is dual.uplinks.conns[1] if dual.uplinks else False, "control on B", timeout=6)
        await wait_until(lambda: any(t.paths == paths_then for t in reports), "the hub to hear that A is down",
                         timeout=3, detail=lambda: [t.paths for t in reports])  # fmt: skip
        await speak
        await wait_until(
            lambda: dual.frames >= FRAMES, "every frame heard", timeout=20, detail=lambda: dual.telemetry()
        )
        await wait_until(
            lambda: dual.engine.stats.decoded >= FRAMES,
            "every frame played",
            timeout=20,
            detail=lambda: dual.engine.stats,
        )
        await probe.close()
        t = dual.telemetry()
        assert dual.engine.stats.concealed == 0 and dual.engine.stats.underruns == 0, dual.engine.stats
        assert t.frames == FRAMES
        assert 90 <= t.duplicates < FRAMES  # the copies A delivered too, until it failed
        assert Rejection.REPLAYED not in dual.rejected and not dual.rejected, dual.rejected
        # the clock is fed through B now
        clock = dual.clock_sync
        assert isinstance(clock, ClockFailover)
        await wait_until(lambda: clock.index == 1 and clock.current.exchanges > 0, "clock sync through B", timeout=20)
        # B's samples went to an estimator of their own, which the site took once it was synced
        await wait_until(lambda: dual.estimator is clock.feeding and dual.estimator.synced, "B's estimator", timeout=20)
        assert dual.estimator is not first_estimator and dual.broadcast_now() is not None
        # the site on A alone lost the rest of the address
        assert single.frames < FRAMES - 100, single.frames
    finally:
        for pid in hung:
            os.kill(pid, signal.SIGCONT)
        for agent in agents:
            await agent.stop()
        await service.stop()
        for server in (city_a, city_b, hub):
            server.stop()


def test_the_site_command_refuses_bad_uplinks_clearly(tmp_path: Path) -> None:
    import subprocess
    import sys

    base = [sys.executable, "-m", "citycast", "site", "--sink", "timed", "--config", str(tmp_path / "none.json")]

    def site(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*base, *args], capture_output=True, text=True, timeout=60)

    for args, says in (
        (["--nats", "nats://a:4222", "--nats", "nats://a:4222"], "given twice"),
        (["--nats", "nats://a:4222,nats://b:4222", "--uplink-bind", "eth0"], "not an IP address"),
        (["--nats", "nats://a:4222", "--uplink-bind", "10.0.0.1", "--uplink-bind", "10.0.0.2"], "2 --uplink-bind"),
    ):
        p = site(*args)
        assert p.returncode == 2 and says in p.stderr and "Traceback" not in p.stderr, (args, p.stderr)
