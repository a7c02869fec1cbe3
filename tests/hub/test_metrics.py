from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from citycast.hub.fleet import FleetState
from citycast.hub.metrics import CONTENT_TYPE, TelemetryCounters, render_metrics
from citycast.protocol.telemetry import Telemetry

S = 1_000_000_000
T0 = 1_700_000_000 * S


def tele(site: str, **kw: Any) -> Telemetry:
    fields: dict[str, Any] = dict(
        site=site, ts_ns=T0, state="playing", channel=1, buffer_ms=90.0, clock_offset_ms=1.0, clock_drift_ppm=3.0,
        clock_error_ms=0.2, sync_error_ms=0.3, tracking_error_ms=0.01, resample_ppm=-3.0, underruns=0, concealed=0,
        late=0, rejected={}, level_rms_dbfs=-20.0, level_peak_dbfs=-8.0, link_rtt_ms=40.0, sink_xruns=0, resyncs=0,
        frames=100,
    )  # fmt: skip
    fields.update(kw)
    return Telemetry(**fields)


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_text_parses_with_the_fleet_figures() -> None:
    fleet = FleetState()
    fleet.known(["gone"])
    for i in range(100):  # sync errors 0.01 .. 1.00 ms
        fleet.on_telemetry(tele(f"s{i}", sync_error_ms=(i + 1) / 100), T0)
    fleet.on_telemetry(tele("idle-1", state="idle", sync_error_ms=0.5), T0)
    fleet.on_telemetry(tele("sync-1", state="syncing", sync_error_ms=500.0), T0)  # not in the sync figures
    fleet.on_telemetry(tele("s0", underruns=3, concealed=2, rejected={"badsignature": 1, "stale": 4}), T0 + S)
    fleet.on_telemetry(tele("s0", underruns=5, concealed=2, rejected={"badsignature": 1, "stale": 4}), T0 + 2 * S)

    text = render_metrics(fleet, TelemetryCounters(received=1234, bad=7), sites_reached=lambda: 42)
    assert CONTENT_TYPE.startswith("text/plain")
    m = samples(text)
    assert m[("citycast_sites", (("state", "playing"),))] == 100
    assert m[("citycast_sites", (("state", "idle"),))] == 2  # idle-1 and sync-1 (within its grace)
    assert m[("citycast_sites", (("state", "offline"),))] == 1
    assert m[("citycast_sites", (("state", "fault"),))] == 0
    assert m[("citycast_sites_total", ())] == 103
    assert m[("citycast_site_underruns_total", ())] == 5
    assert m[("citycast_site_concealed_total", ())] == 2
    assert m[("citycast_site_rejected_frames_total", ())] == 5
    assert m[("citycast_site_forged_frames_total", ())] == 1
    assert m[("citycast_site_sync_error_sites", ())] == 101
    assert 0.49 <= m[("citycast_site_sync_error_ms", (("quantile", "0.5"),))] <= 0.51
    assert 0.98 <= m[("citycast_site_sync_error_ms", (("quantile", "0.99"),))] <= 1.0
    assert m[("citycast_site_sync_error_ms", (("quantile", "1"),))] == 1.0
    assert m[("citycast_sites_reached", ())] == 42
    assert m[("citycast_telemetry_messages_total", ())] == 1234
    assert m[("citycast_telemetry_bad_total", ())] == 7


def test_empty_fleet_renders() -> None:
    m = samples(render_metrics(FleetState()))
    assert m[("citycast_sites_total", ())] == 0
    assert not any(name == "citycast_site_sync_error_ms" for name, _ in m)
    assert ("citycast_sites_reached", ()) not in m


def test_the_telephones_signalling_counters_when_it_runs() -> None:
    fleet = FleetState()
    assert not any(name.startswith("citycast_sip") for name, _ in samples(render_metrics(fleet)))
    counters = {"retransmissions_received": 7, "resent": 12, "resent_2xx": 5, "unparseable": 2, "refused": 1,
                "stray": 3}  # fmt: skip
    got = samples(render_metrics(fleet, sip=lambda: counters))
    assert got[("citycast_sip_retransmissions_received_total", ())] == 7
    assert got[("citycast_sip_retransmissions_sent_total", (("kind", "2xx"),))] == 5
    assert got[("citycast_sip_retransmissions_sent_total", (("kind", "other"),))] == 7
    assert got[("citycast_sip_unparseable_total", ())] == 2 and got[("citycast_sip_stray_total", ())] == 3
