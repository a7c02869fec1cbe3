"""Light fan-out probes: many bus subscribers that only check sequence and timestamp of each frame.

They measure what NATS delivers to many sites, not what a site does with it. nats-py costs ~30-40 µs per
received message here, so a thousand full clients cannot run on one box beside the server; a probe is one
`citycast.bus.rawnats` connection that reads the frame header only. Delivery time is the kernel's receive stamp of
the socket read, so the figure is the bus's, not this process's scheduling. Clearly labelled as probes in every
report.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass, field

import numpy as np

from citycast.bus.rawnats import NatsWire, WireMessage, open_wire
from citycast.clock.local import SystemClock
from citycast.protocol.frame import HEADER_SIZE

_SEQ_TS = struct.Struct(">QqI")  # seq, ts_ns, packet_ns at offsets 12..32 of a frame
_SEQ_TS_OFFSET = 12


@dataclass
class ProbeStats:
    received: int = 0
    gaps: int = 0  # sequence numbers skipped
    reordered: int = 0
    delays_ns: list[int] = field(default_factory=list)


class Probe:
    """One simulated site's share of the server's fan-out."""

    def __init__(self, stats: ProbeStats) -> None:
        self.stats = stats
        self.last_seq: int | None = None
        self.wire: NatsWire | None = None

    def on_message(self, msg: WireMessage) -> None:
        payload = msg.payload
        if len(payload) < HEADER_SIZE:
            return
        seq, ts, packet_ns = _SEQ_TS.unpack_from(payload, _SEQ_TS_OFFSET)
        count = payload[3]
        st = self.stats
        st.received += 1
        if self.last_seq is not None:
            if seq < self.last_seq:
                st.reordered += 1
            elif seq > self.last_seq + count:
                st.gaps += 1
        self.last_seq = seq if self.last_seq is None else max(seq, self.last_seq)
        # From the moment the frame could first leave the ingest (its last sample captured).
        st.delays_ns.append(msg.received_ns - (ts + count * packet_ns))


async def run_probes(url: str, subject: str, count: int, seconds: float) -> ProbeStats:
    """`count` probe connections for `seconds`; returns their pooled statistics."""
    stats = ProbeStats()
    probes = []
    clock = SystemClock()
    for _ in range(count):
        probe = Probe(stats)
        probe.wire = await open_wire(url, probe.on_message, clock, name="citycast-probe")
        probe.wire.subscribe(subject)
        probes.append(probe)
    await asyncio.sleep(seconds)
    for p in probes:
        if p.wire is not None:
            p.wire.close()
    return stats


def probe_report(stats: ProbeStats, count: int) -> dict[str, object]:
    delays_ms = np.array(stats.delays_ns, dtype=np.float64) / 1e6

    def q(p: float) -> float:
        return float(np.percentile(delays_ms, p)) if delays_ms.size else float("nan")

    return {
        "probes": count,
        "received": stats.received,
        "gaps": stats.gaps,
        "reordered": stats.reordered,
        "delivery_ms": {"p50": q(50), "p99": q(99), "max": float(delays_ms.max()) if delays_ms.size else float("nan")},
    }
