"""Prometheus text for `GET /metrics`, built from the live fleet at each scrape.

A private `CollectorRegistry` per render (no module-level globals: tests and several hubs in one process stay
apart). Counters are fleet-wide sums of what the sites' own counters added while this hub watched them
(`FleetState.totals`), so they only go up, as Prometheus expects, even when a site restarts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from citycast.hub.fleet import STATES, FleetState

CONTENT_TYPE = CONTENT_TYPE_LATEST


@dataclass
class TelemetryCounters:
    """What the monitor counted on the bus."""

    received: int = 0
    bad: int = 0


class FleetCollector(Collector):
    def __init__(
        self,
        fleet: FleetState,
        counters: TelemetryCounters | None = None,
        sites_reached: Callable[[], int] | None = None,
    ) -> None:
        self.fleet = fleet
        self.counters = counters or TelemetryCounters()
        self.sites_reached = sites_reached

    def collect(self) -> Iterator[Metric]:
        fleet = self.fleet
        by_state = GaugeMetricFamily("citycast_sites", "Sites by console state", labels=["state"])
        counts = fleet.counts()
        for state in STATES:
            by_state.add_metric([state], counts.get(state, 0))
        yield by_state
        yield GaugeMetricFamily("citycast_sites_total", "Sites known to the hub", value=len(fleet))

        totals = fleet.totals()
        yield CounterMetricFamily(
            "citycast_site_underruns", "Playout underruns reported by sites while this hub ran", value=totals.underruns
        )
        yield CounterMetricFamily(
            "citycast_site_concealed", "Frames concealed (lost or late) at sites", value=totals.concealed
        )
        yield CounterMetricFamily("citycast_site_rejected_frames", "Frames refused by sites", value=totals.rejected)
        yield CounterMetricFamily(
            "citycast_site_forged_frames",
            "Frames refused as malformed, untrusted, badly signed, replayed or oversized",
            value=totals.forged,
        )

        errors = np.asarray(fleet.sync_errors_ms(), dtype=np.float64)
        sync = GaugeMetricFamily(
            "citycast_site_sync_error_ms",
            "Estimated sync error across online sites placed in time (quantile 1 = max)",
            labels=["quantile"],
        )
        if errors.size:
            p50, p99 = np.percentile(errors, [50, 99])
            for q, v in (("0.5", p50), ("0.99", p99), ("1", errors.max())):
                sync.add_metric([q], float(v))
        yield sync
        yield GaugeMetricFamily(
            "citycast_site_sync_error_sites", "Sites in the sync error figures", value=int(errors.size)
        )

        if self.sites_reached is not None:
            yield GaugeMetricFamily(
                "citycast_sites_reached", "Sites reached by the addresses on air", value=self.sites_reached()
            )
        yield CounterMetricFamily(
            "citycast_telemetry_messages", "Telemetry messages received from the bus", value=self.counters.received
        )
        yield CounterMetricFamily(
            "citycast_telemetry_bad",
            "Telemetry messages refused (bad JSON, wrong version, bad fields)",
            value=self.counters.bad,
        )


class SipCollector(Collector):
    """The telephone's signalling health: retransmissions in and out show a lossy path to callers or the trunk."""

    def __init__(self, counters: Callable[[], dict[str, int]]) -> None:
        self.counters = counters

    def collect(self) -> Iterator[Metric]:
        c = self.counters()
        yield CounterMetricFamily(
            "citycast_sip_retransmissions_received",
            "SIP requests a caller or trunk sent again (its copy or our answer was lost)",
            value=c["retransmissions_received"],
        )
        sent = CounterMetricFamily(
            "citycast_sip_retransmissions_sent",
            "SIP messages the hub sent again (no answer or no ACK)",
            labels=["kind"],
        )
        sent.add_metric(["2xx"], c["resent_2xx"])
        sent.add_metric(["other"], c["resent"] - c["resent_2xx"])
        yield sent
        yield CounterMetricFamily(
            "citycast_sip_unparseable", "SIP messages that could not be parsed", value=c["unparseable"]
        )
        yield CounterMetricFamily(
            "citycast_sip_stray", "SIP requests or responses that matched no transaction", value=c["stray"]
        )
        dropped = {k.removeprefix("rtp_dropped_"): v for k, v in c.items() if k.startswith("rtp_dropped_")}
        if dropped:
            rtp = CounterMetricFamily(
                "citycast_rtp_dropped",
                "Datagrams on calls' RTP/RTCP ports dropped, by reason (foreign_source: not the caller's address)",
                labels=["reason"],
            )
            for reason, n in sorted(dropped.items()):
                rtp.add_metric([reason], n)
            yield rtp


class _InsecureCollector(Collector):
    """1 when the hub runs with --insecure (plaintext NATS, plain HTTP off loopback): alert on it."""

    def __init__(self, insecure: bool) -> None:
        self.insecure = insecure

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "citycast_insecure",
            "1 if the hub was started with --insecure (no TLS on the wire)",
            value=int(self.insecure),
        )


def render_metrics(
    fleet: FleetState,
    counters: TelemetryCounters | None = None,
    sites_reached: Callable[[], int] | None = None,
    sip: Callable[[], dict[str, int]] | None = None,
    insecure: bool = False,
) -> bytes:
    """Prometheus text exposition of the fleet now; serve it with `CONTENT_TYPE`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(fleet, counters, sites_reached))
    registry.register(_InsecureCollector(insecure))
    if sip is not None:
        registry.register(SipCollector(sip))
    return generate_latest(registry)
