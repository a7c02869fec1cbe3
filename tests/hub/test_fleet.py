from __future__ import annotations

from dataclasses import replace

from citycast.hub.fleet import FleetState
from citycast.protocol.telemetry import Telemetry

S = 1_000_000_000
T0 = 1_700_000_000 * S  # wall-clock ns, as the hub passes in


def tele(site: str = "site-1", **kw: object) -> Telemetry:
    base = Telemetry(
        site=site, ts_ns=T0, state="playing", channel=1, buffer_ms=90.0, clock_offset_ms=1.0, clock_drift_ppm=3.0,
        clock_error_ms=0.2, sync_error_ms=0.3, tracking_error_ms=0.01, resample_ppm=-3.0, underruns=0, concealed=0,
        late=0, rejected={}, level_rms_dbfs=-20.0, level_peak_dbfs=-8.0, link_rtt_ms=40.0, sink_xruns=0, resyncs=0,
        frames=100,
    )  # fmt: skip
    return replace(base, **kw)  # type: ignore[arg-type]


def test_known_sites_start_offline_and_come_online() -> None:
    fleet = FleetState()
    fleet.known(["site-1", "site-2"])
    assert fleet.counts()["offline"] == 2
    assert fleet.view("site-2")["state"] == "offline" and fleet.view("site-2")["last_seen_s"] is None
    change = fleet.on_telemetry(tele(), T0)
    assert change is not None and (change.old, change.new) == ("offline", "playing")
    v = fleet.view("site-1")
    assert v["channel"] == 1 and v["level_rms_dbfs"] == -20.0 and v["last_seen_s"] == T0 / 1e9
    assert fleet.counts() == {"playing": 1, "idle": 0, "fallback": 0, "muted": 0, "fault": 0, "offline": 1}
    assert fleet.on_telemetry(tele(), T0 + S) is None  # no change, no Change


def test_offline_after_ten_seconds_of_silence_and_back() -> None:
    fleet = FleetState()
    fleet.on_telemetry(tele("a"), T0)
    fleet.on_telemetry(tele("b"), T0 + 5 * S)
    assert fleet.tick(T0 + 10 * S) == []  # exactly 10 s: not yet
    changes = fleet.tick(T0 + 10 * S + 1)
    assert [(c.site, c.new) for c in changes] == [("a", "offline")]
    assert "no telemetry" in changes[0].detail
    assert [c.site for c in fleet.tick(T0 + 16 * S)] == ["b"]
    assert fleet.tick(T0 + 60 * S) == []  # offline once, not every tick
    back = fleet.on_telemetry(tele("a", state="idle"), T0 + 61 * S)
    assert back is not None and (back.old, back.new) == ("offline", "idle")
    assert fleet.counts()["offline"] == 1 and fleet.counts()["idle"] == 1


def test_fault_on_sync_error_with_hysteresis() -> None:
    fleet = FleetState()
    fleet.on_telemetry(tele(sync_error_ms=1.0), T0)
    change = fleet.on_telemetry(tele(sync_error_ms=7.5), T0 + S)
    assert change is not None and change.new == "fault" and "7.5 ms" in change.detail
    assert fleet.on_telemetry(tele(sync_error_ms=4.5), T0 + 2 * S) is None  # between 4 and 5: stays fault
    change = fleet.on_telemetry(tele(sync_error_ms=3.0), T0 + 3 * S)
    assert change is not None and change.new == "playing"
    # A non-finite estimate is a fault too, and never reaches the console as NaN.
    fleet.on_telemetry(tele(sync_error_ms=float("nan")), T0 + 4 * S)
    assert fleet.view("site-1")["state"] == "fault" and fleet.view("site-1")["sync_error_ms"] is None


def test_a_site_straight_on_a_hub_abroad_shows_its_asymmetry_bound_apart_and_plays() -> None:
    """Across a 60-80 ms long haul the path's asymmetry bound is ~60 ms; it is no sync error (it cannot make a
    site wander), so it is shown apart and never makes the site a fault."""
    fleet = FleetState()
    fleet.on_telemetry(tele(sync_error_ms=0.31, clock_asymmetry_ms=60.337), T0)
    v = fleet.view("site-1")
    assert v["state"] == "playing" and v["sync_error_ms"] == 0.31 and v["clock_asymmetry_ms"] == 60.34
    fleet.on_telemetry(tele(clock_asymmetry_ms=float("inf")), T0 + S)
    assert fleet.view("site-1")["clock_asymmetry_ms"] is None  # never Infinity in the console's JSON
    fleet.on_telemetry(tele(state="syncing", clock_asymmetry_ms=61.0), T0 + 2 * S)
    assert fleet.view("site-1")["clock_asymmetry_ms"] is None  # nothing measured yet


def test_fault_when_not_synced_for_thirty_seconds() -> None:
    fleet = FleetState()
    first = fleet.on_telemetry(tele(state="syncing", sync_error_ms=900.0), T0)
    assert first is not None and first.new == "idle"  # syncing within its grace: healthy, not a sync-error fault
    assert fleet.view("site-1")["sync_error_ms"] is None
    for s in range(1, 31):
        assert fleet.on_telemetry(tele(state="syncing"), T0 + s * S) is None
    change = fleet.on_telemetry(tele(state="syncing"), T0 + 31 * S)
    assert change is not None and change.new == "fault" and "not synced" in change.detail
    change = fleet.on_telemetry(tele(state="idle"), T0 + 32 * S)
    assert change is not None and change.new == "idle"
    # A new syncing episode gets a new grace.
    assert fleet.on_telemetry(tele(state="syncing"), T0 + 33 * S) is None
    assert fleet.view("site-1")["state"] == "idle"


def test_muted_only_over_playing_or_idle() -> None:
    fleet = FleetState()
    fleet.on_telemetry(tele(muted=True, volume=0.5), T0)
    v = fleet.view("site-1")
    assert v["state"] == "muted" and v["muted"] is True and v["volume"] == 0.5
    assert fleet.on_telemetry(tele(state="fallback", muted=True), T0 + S).new == "fallback"  # type: ignore[union-attr]
    assert fleet.on_telemetry(tele(muted=True, sync_error_ms=9.0), T0 + 2 * S).new == "fault"  # type: ignore[union-attr]
    assert fleet.on_telemetry(tele(muted=False), T0 + 3 * S).new == "playing"  # type: ignore[union-attr]


def test_dirty_holds_changed_views_once() -> None:
    fleet = FleetState()
    fleet.known(["a", "b", "c"])
    assert {v["name"] for v in fleet.dirty()} == {"a", "b", "c"}  # new sites are news
    assert fleet.dirty() == []
    fleet.on_telemetry(tele("a"), T0)
    fleet.on_telemetry(tele("b"), T0)
    assert {v["name"] for v in fleet.dirty()} == {"a", "b"}
    fleet.on_telemetry(tele("a"), T0 + S)  # the same report again: a heartbeat, not news
    fleet.on_telemetry(tele("b", level_rms_dbfs=-25.0), T0 + S)  # a level moved: news for the meters
    dirty = fleet.dirty()
    assert [v["name"] for v in dirty] == ["b"] and dirty[0]["level_rms_dbfs"] == -25.0
    assert dirty[0]["last_seen_s"] == (T0 + S) / 1e9
    fleet.tick(T0 + 20 * S)
    assert {v["state"] for v in fleet.dirty()} == {"offline"}
    dirty[0]["state"] = "scribbled"  # a copy: the caller cannot corrupt the fleet
    assert fleet.view("b")["state"] == "offline"


def test_totals_are_monotonic_across_site_restarts_and_rejected_is_summed() -> None:
    fleet = FleetState()
    fleet.on_telemetry(tele(underruns=2, concealed=5, rejected={"stale": 1}), T0)
    fleet.on_telemetry(tele(underruns=5, concealed=6, rejected={"stale": 1, "badsignature": 3}), T0 + S)
    assert fleet.view("site-1")["rejected"] == 4 and fleet.view("site-1")["forged"] == 3
    fleet.on_telemetry(tele(underruns=1, concealed=0, rejected={}), T0 + 2 * S)  # the site restarted
    t = fleet.totals()
    assert (t.underruns, t.concealed, t.rejected, t.forged) == (4, 1, 3, 3)


def test_levels_are_clamped_and_json_safe() -> None:
    fleet = FleetState()
    fleet.on_telemetry(tele(level_rms_dbfs=float("-inf"), level_peak_dbfs=float("nan"), buffer_ms=float("inf")), T0)
    v = fleet.view("site-1")
    assert v["level_rms_dbfs"] == -180.0 and v["level_peak_dbfs"] == -180.0 and v["buffer_ms"] is None


def test_unknown_engine_state_is_a_fault_and_forget_removes() -> None:
    fleet = FleetState()
    assert fleet.on_telemetry(tele(state="exploded"), T0).new == "fault"  # type: ignore[union-attr]
    fleet.forget("site-1")
    assert "site-1" not in fleet and sum(fleet.counts().values()) == 0 and fleet.tick(T0 + 60 * S) == []


def test_two_thousand_sites() -> None:
    fleet = FleetState()
    for i in range(2000):
        fleet.on_telemetry(tele(f"s{i}"), T0 + i)
    assert fleet.counts()["playing"] == 2000 and len(fleet.dirty()) == 2000
    assert len(fleet.tick(T0 + 11 * S)) == 2000 and fleet.counts()["offline"] == 2000


def test_a_failed_audio_output_is_a_fault_with_its_reason_until_it_works_again() -> None:
    fleet = FleetState()
    fleet.on_telemetry(tele(), T0)
    change = fleet.on_telemetry(tele(state="idle", sink_error="cannot open 'USB DAC': device unavailable"), T0 + S)
    assert (
        change is not None and change.new == "fault" and "audio output failed: cannot open 'USB DAC'" in change.detail
    )
    assert fleet.view("site-1")["sink_error"] == "cannot open 'USB DAC': device unavailable"
    # Muted or syncing does not hide it: the loudspeaker would be silent anyway, and the operator must know why.
    assert fleet.on_telemetry(tele(state="syncing", muted=True, sink_error="gone"), T0 + 2 * S) is None
    back = fleet.on_telemetry(tele(), T0 + 3 * S)
    assert back is not None and back.new == "playing" and fleet.view("site-1")["sink_error"] is None
