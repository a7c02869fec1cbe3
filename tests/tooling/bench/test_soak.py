from __future__ import annotations

import random

import pytest

from citycast.site.uplinks import MERGE_STREAMS
from citycast.tooling.bench.soak import (
    MS,
    REORDER_NS,
    RTO_MIN_NS,
    CitySoak,
    Fault,
    LongHaul,
    S,
    TcpPath,
    run_city_soak,
    run_soak,
)
from citycast.tooling.bench.soak_report import city_soak_json, soak_svg

LONDON_KARACHI = LongHaul(70.0, 10.0, 0.01)


def test_a_short_soak_keeps_every_marker_on_time() -> None:
    sites = run_soak(hours=0.05, sites=1, checkpoint_every_s=60, window_s=8)
    site = sites[0]
    assert site.dac_ppm == 100.0
    assert len(site.checkpoints) >= 2
    for c in site.checkpoints:
        assert c.markers >= 7
        assert c.max_abs_error_ms < 0.05
    assert site.engine.stats.resyncs == 0
    assert site.engine.stats.underruns == 0


def test_a_lost_segment_holds_back_the_frames_behind_it_and_a_cut_waits_for_the_next_retry() -> None:
    quiet = LongHaul(70.0, 0.0, 0.0)
    tcp = TcpPath(quiet, [], random.Random(1))
    assert tcp.arrival(0, False) == 70 * MS
    # Lost once: resent one round trip plus the reordering window later; the next frame waits behind it.
    lost = tcp.arrival(20 * MS, True)
    assert lost == 20 * MS + 140 * MS + REORDER_NS + 70 * MS
    assert tcp.arrival(40 * MS, False) == lost
    # A 30 s cut: retries at 180 ms, then RTT + 200 ms, doubling: nothing until the first retry after the cut.
    cut = TcpPath(quiet, [(10 * S, 40 * S)], random.Random(1))
    retry = cut.stall_ns(30 * S)
    assert retry > 30 * S
    assert retry - 30 * S > 5 * S  # the backoff, not the cut, decides when audio comes back
    assert cut.arrival(10 * S + 1, False) == 10 * S + retry + 70 * MS
    assert cut.arrival(41 * S, False) == 10 * S + retry + 70 * MS  # in order behind the backlog
    assert RTO_MIN_NS == 200 * MS


@pytest.fixture(scope="module")
def merged() -> CitySoak:
    faults = [Fault("cut-a", 270, 30), Fault("cut-both", 630, 30), Fault("responder", 930, 60)]
    return run_city_soak(hours=20 / 60, sites=2, paths=2, link=LONDON_KARACHI, faults=faults, row_s=300,
                         window_s=10, seed=1)  # fmt: skip


def test_two_paths_merged_play_every_frame_through_independent_loss_and_a_path_cut(merged: CitySoak) -> None:
    rows = merged.rows
    assert len(rows) == 4
    assert sum(r.underruns for r in rows) == 0
    assert sum(r.concealed for r in rows) == 0
    assert sum(r.replays for r in rows) == 0  # the other path's copy is a duplicate, never a replay
    assert all(r.duplicates > 0 for r in rows)
    cut_a = merged.faults[0]
    assert (cut_a.kind, cut_a.concealed, cut_a.underruns, cut_a.fallback_s) == ("cut-a", 0, 0, 0.0)
    for s in merged.sites:
        assert set(s.merge.first_by_uplink) == {0, 1}  # both paths carried the city at some point


def test_after_both_paths_are_cut_the_sites_play_in_sync_within_2_s_of_the_first_frame(merged: CitySoak) -> None:
    both = merged.faults[1]
    assert both.kind == "cut-both"
    assert both.frames_back_s is not None and both.resync_s is not None
    assert both.resync_s <= 2.0
    assert both.fallback_s > 25  # the sites fell back during the cut, as they must
    assert both.sync_error_max_us < 1000  # the clock kept going through it


def test_a_lost_time_responder_moves_the_clock_to_the_other_and_it_stays_in_sync(merged: CitySoak) -> None:
    lost = merged.faults[2]
    assert lost.kind == "responder"
    assert lost.responder_switches == 1
    assert lost.sync_error_max_us < 1000
    assert lost.concealed == 0 and lost.fallback_s == 0.0
    assert merged.rows[-1].skew_p99_us < 50  # both sites moved to the same responder


def test_the_soak_state_is_bounded(merged: CitySoak) -> None:
    rows = merged.rows
    for r in rows:
        assert r.jitter_buffer_max <= 512
        assert r.merge_streams <= MERGE_STREAMS
        assert r.estimator_kept <= 200
        assert r.markers >= 2 * 8
    assert rows[-1].rss_mb - rows[0].rss_mb < 30
    figures = city_soak_json(merged, "test", 0.0)
    svg = soak_svg(figures)
    assert svg.startswith("<svg") and svg.count("<polyline") >= 4


def test_one_path_with_the_same_loss_conceals() -> None:
    """The control: what the merge saves. Same link, same seed, one path: lost retransmissions reach the sites
    after D and every site conceals them."""
    single = run_city_soak(hours=20 / 60, sites=1, paths=1, link=LONDON_KARACHI, faults=[], row_s=300,
                           window_s=10, seed=1)  # fmt: skip
    assert sum(r.concealed for r in single.rows) > 20


def _outage(seconds: float) -> CitySoak:
    """Both leafnodes dropped for `seconds` and made again: what was published meanwhile is gone."""
    return run_city_soak(hours=4 / 60, sites=1, paths=2, link=LONDON_KARACHI,
                         faults=[Fault("cut-both", 90, seconds, drop=True)], row_s=240, window_s=5)  # fmt: skip


def test_a_short_outage_of_both_connections_plays_again_within_2_s_of_the_reconnection() -> None:
    both = _outage(5).faults[0]
    assert both.frames_back_s is not None and both.frames_back_s < 2.0  # the reconnection
    assert both.resync_s is not None and both.resync_s <= 2.0


def test_a_long_outage_of_both_connections_plays_again_within_2_s_of_the_reconnection() -> None:
    both = _outage(30).faults[0]
    assert both.frames_back_s is not None and both.resync_s is not None and both.resync_s <= 2.0
