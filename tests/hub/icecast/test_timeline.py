"""The mount's timeline in simulated time: order by timestamp, silence where nothing was heard, late packets
dropped, a stall skipped rather than burst."""

from __future__ import annotations

import random

import pytest

from citycast.hub.icecast.program import ALL_GROUP, IDLE_TITLE, Program, ZoneInfo, programs, zone_group
from citycast.hub.icecast.streamer import retry_delay
from citycast.hub.icecast.timeline import MountTimeline
from citycast.media.audio import FRAME_NS

HOLD = 200_000_000


def test_packets_go_out_in_timestamp_order_hold_behind_the_clock_and_silence_fills() -> None:
    t = MountTimeline(hold_ns=HOLD)
    start = 10_000_000_000
    assert t.due(start) == []  # the first call sets where the mount starts
    edge = start - HOLD
    ts = [edge + i * FRAME_NS for i in range(10)]
    order = list(range(10))
    random.Random(3).shuffle(order)
    for i in order:
        if i != 4:  # packet 4 is lost on the bus
            t.push(ts[i], bytes([i]))
    assert t.due(start + 5 * FRAME_NS - 1) == [b"\x00", b"\x01", b"\x02", b"\x03"]  # slot 4 not yet over
    out = t.due(start + 12 * FRAME_NS)
    assert out[:6] == [None, b"\x05", b"\x06", b"\x07", b"\x08", b"\x09"]
    assert out[6:] == [None, None]  # nothing heard after: silence, so listeners are kept
    assert (t.played, t.silent) == (9, 3)


def test_a_packet_after_its_slot_is_dropped_as_late() -> None:
    t = MountTimeline(hold_ns=HOLD)
    t.due(0)
    assert t.due(3 * FRAME_NS) == [None, None, None]
    t.push(-HOLD + FRAME_NS, b"late")
    t.push(-HOLD + 3 * FRAME_NS, b"ok")
    assert t.late == 1
    assert t.due(4 * FRAME_NS) == [b"ok"]


def test_a_stall_is_skipped_not_burst() -> None:
    t = MountTimeline(hold_ns=HOLD, max_catch_up_ns=1_000_000_000)
    t.due(0)
    out = t.due(3600 * 1_000_000_000)  # the thread slept for an hour
    assert len(out) <= 1_000_000_000 // FRAME_NS
    assert t.skipped_ns > 3500 * 1_000_000_000


def test_programs_follow_priority_then_newest_and_zones_fall_back_to_their_idle_channel() -> None:
    zones = [ZoneInfo(1, "Orangi", 501), ZoneInfo(2, "Saddar", 502)]
    assert programs([], zones) == {
        ALL_GROUP: Program(None, IDLE_TITLE),
        zone_group(1): Program(501, f"Orangi: {IDLE_TITLE}"),
        zone_group(2): Program(502, f"Saddar: {IDLE_TITLE}"),
    }
    live = [
        {"title": "Flood warning", "priority": "emergency", "channel": 1000, "zone_ids": [1]},
        {"title": "Friday address", "priority": "live", "channel": 1001, "zone_ids": [1, 2]},
        {"title": "Music", "priority": "fill", "channel": 1002, "zone_ids": [2]},
    ]
    got = programs(live, zones)
    assert got[ALL_GROUP] == Program(1000, "Flood warning")
    assert got[zone_group(1)] == Program(1000, "Flood warning")
    assert got[zone_group(2)] == Program(1001, "Friday address")


def test_reconnection_backs_off_to_30_s_with_jitter() -> None:
    assert 0.4 <= retry_delay(0, lambda: 0.0) <= 0.5
    assert retry_delay(3, lambda: 0.5) == 4.0
    assert retry_delay(50, lambda: 1.0) == pytest.approx(36.0)
