from __future__ import annotations

from typing import Any

from citycast.hub.alerts import AlertRules
from citycast.hub.fleet import FleetState
from citycast.protocol.telemetry import Telemetry

S = 1_000_000_000
T0 = 1_700_000_000 * S


def tele(site: str = "site-1", **kw: Any) -> Telemetry:
    fields: dict[str, Any] = dict(
        site=site, ts_ns=T0, state="playing", channel=1, buffer_ms=90.0, clock_offset_ms=1.0, clock_drift_ppm=3.0,
        clock_error_ms=0.2, sync_error_ms=0.3, tracking_error_ms=0.01, resample_ppm=-3.0, underruns=0, concealed=0,
        late=0, rejected={}, level_rms_dbfs=-20.0, level_peak_dbfs=-8.0, link_rtt_ms=40.0, sink_xruns=0, resyncs=0,
        frames=100,
    )  # fmt: skip
    fields.update(kw)
    return Telemetry(**fields)


class Rig:
    """The fleet and the rules as the monitor drives them, in simulated time."""

    def __init__(self) -> None:
        self.fleet = FleetState()
        self.rules = AlertRules()
        self.log: list[tuple[str, str, str]] = []

    def report(self, at_s: float, **kw: Any) -> None:
        self.fleet.on_telemetry(tele(**kw), T0 + int(at_s * S))
        self.eval(at_s, kw.get("site", "site-1"))

    def eval(self, at_s: float, site: str = "site-1") -> None:
        now = T0 + int(at_s * S)
        self.fleet.tick(now)
        for e in self.rules.evaluate(self.fleet.view(site), now):
            self.log.append((e.action, e.kind, e.severity))


def test_offline_raises_once_and_clears_when_back() -> None:
    rig = Rig()
    rig.report(0)
    for s in range(1, 40):
        rig.eval(s)  # the monitor sweeps offline sites every second
    assert rig.log == [("raise", "offline", "warning")]
    assert "no telemetry for 11 s" in rig.rules.open_alerts()[0].message
    rig.report(41)
    assert rig.log[-1] == ("clear", "offline", "warning") and rig.rules.open_alerts() == []


def test_never_seen_site_waits_its_grace_after_a_hub_start() -> None:
    rig = Rig()
    rig.fleet.known(["site-1"])
    rig.eval(0)
    rig.eval(9)
    assert rig.log == []  # its first report is surely on the way
    rig.eval(10)
    assert rig.log == [("raise", "offline", "warning")]


def test_a_restarted_hub_takes_a_sites_old_counters_as_its_baseline() -> None:
    """After a hub restart its enrolled sites are known (from the database) before they report: swept as offline,
    their views say 0 underruns and 0 forged frames. A site's first report carries its counters since it started
    (an underrun an hour ago, an attack last week): history, not news. Only what comes after may raise."""
    rig = Rig()
    rig.fleet.known(["site-1"])
    rig.eval(0)
    rig.eval(1)  # the sweep evaluates the never-heard site's empty view
    rig.report(2, underruns=7, rejected={"badsignature": 4})
    rig.report(3, underruns=7, rejected={"badsignature": 4})
    assert rig.log == []
    rig.report(4, underruns=8, rejected={"badsignature": 5})
    assert sorted(rig.log) == [("raise", "rejected_frames", "critical"), ("raise", "underruns", "warning")]


def test_underruns_raise_on_increase_and_clear_after_a_quiet_minute() -> None:
    rig = Rig()
    rig.report(0, underruns=7)  # history before the hub watched: a baseline, no alert
    assert rig.log == []
    rig.report(1, underruns=9)
    rig.report(2, underruns=12)  # still the same open alert
    assert rig.log == [("raise", "underruns", "warning")]
    assert rig.rules.open_alerts()[0].message == "2 new underruns"
    for s in range(3, 62):
        rig.report(s, underruns=12)
    assert rig.log == [("raise", "underruns", "warning")]  # 59 s quiet: still open
    rig.report(62, underruns=12)
    assert rig.log[-1] == ("clear", "underruns", "warning")
    rig.report(63, underruns=3)  # the site restarted: counters fell; not an underrun
    assert len(rig.log) == 2


def test_sync_error_hysteresis() -> None:
    rig = Rig()
    rig.report(0, sync_error_ms=1.0)
    rig.report(1, sync_error_ms=6.0)
    rig.report(2, sync_error_ms=4.5)
    rig.report(3, sync_error_ms=5.5)
    rig.report(4, sync_error_ms=4.2)
    assert rig.log == [("raise", "sync_error", "warning")]
    rig.report(5, sync_error_ms=3.9)
    assert rig.log[-1] == ("clear", "sync_error", "warning")


def test_forged_frames_are_critical_but_late_ones_are_not() -> None:
    rig = Rig()
    rig.report(0, rejected={"stale": 3})
    rig.report(1, rejected={"stale": 50, "unsynced": 20, "wrong_channel": 1})
    assert rig.log == []
    rig.report(2, rejected={"stale": 50, "badsignature": 4})
    rig.report(3, rejected={"stale": 50, "badsignature": 9, "untrustedkey": 1})
    assert rig.log == [("raise", "rejected_frames", "critical")]
    assert "unsigned audio" in rig.rules.open_alerts()[0].message
    rig.report(64, rejected={"stale": 50, "badsignature": 9, "untrustedkey": 1})
    assert rig.log[-1] == ("clear", "rejected_frames", "critical")


def test_no_storm_across_many_sites_and_forget() -> None:
    rig = Rig()
    for i in range(100):
        rig.report(0, site=f"s{i}", sync_error_ms=9.0)
    for s in range(1, 10):
        for i in range(100):
            rig.report(s, site=f"s{i}", sync_error_ms=9.0 + s)
    assert len(rig.log) == 100 and len(rig.rules.open_alerts()) == 100
    cleared = rig.rules.forget("s0", T0)
    assert [(e.kind, e.action) for e in cleared] == [("sync_error", "clear")] and not rig.rules.has_open("s0")


def test_a_failed_audio_output_is_critical_and_clears_when_it_works() -> None:
    rig = Rig()
    rig.report(0)
    rig.report(1, sink_error="sound-card callback failed: PortAudioError")
    rig.report(2, sink_error="sound-card callback failed: PortAudioError")
    assert rig.log == [("raise", "sink_failed", "critical")]
    assert "audio output failed: sound-card callback failed" in rig.rules.open_alerts()[0].message
    for s in range(3, 20):
        rig.eval(s)  # it goes offline: the alert stays (an offline site keeps its last word) and offline is added
    assert ("raise", "offline", "warning") in rig.log and ("clear", "sink_failed", "critical") not in rig.log
    rig.report(21)
    assert rig.log[-2:] == [("clear", "offline", "warning"), ("clear", "sink_failed", "critical")]


def test_a_refused_clock_step_is_critical_and_clears_when_the_clock_agrees() -> None:
    rig = Rig()
    rig.report(0)
    rig.report(1, clock_step_refused_ms=-3_600_000.0, clock_steps_refused=1)
    rig.report(2, clock_step_refused_ms=-3_600_012.5, clock_steps_refused=1)
    assert rig.log == [("raise", "clock_step_refused", "critical")]
    assert "clock step of -3600.000 s" in rig.rules.open_alerts()[0].message
    assert rig.fleet.view("site-1")["clock_step_refused_ms"] == -3_600_012.5
    rig.report(3, clock_steps_refused=1)
    assert rig.log[-1] == ("clear", "clock_step_refused", "critical")
    rig.report(4, clock_step_refused_ms="a lot")  # a site's bug: shown as nothing, never a crash
    assert rig.fleet.view("site-1")["clock_step_refused_ms"] is None


def test_credentials_a_site_fails_to_renew_raise_a_warning_until_renewed() -> None:
    rig = Rig()
    day = 24 * 3600
    now_s = T0 // S
    rig.report(0, creds_expire_s=now_s + 20 * day)  # fresh: nothing
    assert rig.log == []
    rig.report(1, creds_expire_s=now_s + 6 * day)  # a week past its renewal: warn
    assert rig.log == [("raise", "creds_expiring", "warning")]
    assert "expire in 144 h" in rig.rules.open_alerts()[0].message
    rig.report(2, creds_expire_s=now_s + 30 * day)
    assert rig.log[-1] == ("clear", "creds_expiring", "warning")
    rig.report(3, creds_expire_s="soon")  # a site's bug: ignored, never a crash
    assert rig.fleet.view("site-1")["creds_expire_s"] is None


def test_a_lost_spare_path_warns_after_5_s_and_clears_when_it_is_back() -> None:
    both = {"10.77.1.1:4222": True, "10.77.2.1:4222": True}
    one = {"10.77.1.1:4222": False, "10.77.2.1:4222": True}
    rig = Rig()
    rig.report(0, paths=both)
    rig.report(1, paths=one)
    rig.report(5, paths=both)  # a reconnect: back within 5 s, nothing raised
    rig.report(6, paths=one)
    for s in range(7, 11):
        rig.report(s, paths=one)
    assert rig.log == []
    rig.report(11, paths=one)
    rig.report(12, paths=one)
    assert rig.log == [("raise", "path_down", "warning")]
    assert rig.rules.open_alerts()[0].message == "path 10.77.1.1:4222 down for 5 s: playing on 1 of 2"
    rig.report(20, paths=both)
    assert rig.log[-1] == ("clear", "path_down", "warning")


def test_every_path_down_is_the_offline_rules_business_not_a_path_alert() -> None:
    rig = Rig()
    rig.report(0, paths={"a": True, "b": True})
    for s in range(1, 30):
        rig.report(s, paths={"a": False, "b": False})
    assert ("raise", "path_down", "warning") not in rig.log
