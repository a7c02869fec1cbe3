"""Light fan-out probes: many bus subscribers that only check sequence and timestamp of each frame.

They measure what NATS delivers to many sites, not what a site does with it. nats-py costs ~30-40 µs per
received message here, so a thousand full clients cannot run on one box beside the server; these probes speak
the NATS text protocol directly (CONNECT, SUB, PING/PONG, MSG) and read only the frame header, a few µs each.
Clearly labelled as probes in every report.
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
from dataclasses import dataclass, field
from urllib.parse import urlparse

from citycast.media.frame import HEADER_SIZE

_TS = struct.Struct(">QqI")  # seq, ts_ns, packet_ns at offsets 12..32 of a frame
_TS_OFFSET = 12


@dataclass
class ProbeStats:
    received: int = 0
    gaps: int = 0  # sequence numbers skipped
    reordered: int = 0
    delays_ns: list[int] = field(default_factory=list)


class ProbeProtocol(asyncio.Protocol):
    """One probe = one NATS connection = one simulated site's share of the server's fan-out."""

    def __init__(self, subject: str, stats: ProbeStats, sample_every: int, ready: asyncio.Future[None]) -> None:
        self.subject = subject
        self.stats = stats
        self.sample_every = sample_every
        self.ready = ready
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.last_seq: int | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        connect = {
            "verbose": False,
            "pedantic": False,
            "name": "citycast-probe",
            "lang": "python",
            "protocol": 1,
        }
        transport.write(f"CONNECT {json.dumps(connect)}\r\nSUB {self.subject} 1\r\nPING\r\n".encode())

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        buf = self.buf
        buf += data
        while True:
            eol = buf.find(b"\r\n")
            if eol < 0:
                return
            if buf.startswith(b"MSG "):
                size = int(buf[:eol].rsplit(b" ", 1)[1])
                end = eol + 2 + size + 2
                if len(buf) < end:
                    return
                self._on_frame(bytes(buf[eol + 2 : eol + 2 + size]), now)
                del buf[:end]
                continue
            line = bytes(buf[:eol])
            del buf[: eol + 2]
            if line == b"PING" and self.transport is not None:
                self.transport.write(b"PONG\r\n")
            elif line == b"PONG" and not self.ready.done():
                self.ready.set_result(None)
            elif line.startswith(b"-ERR") and not self.ready.done():
                self.ready.set_exception(ConnectionError(line.decode(errors="replace")))

    def _on_frame(self, payload: bytes, now: int) -> None:
        if len(payload) < HEADER_SIZE:
            return
        seq, ts, packet_ns = _TS.unpack_from(payload, _TS_OFFSET)
        count = payload[3]
        st = self.stats
        st.received += 1
        if self.last_seq is not None:
            if seq < self.last_seq:
                st.reordered += 1
            elif seq > self.last_seq + count:
                st.gaps += 1
        self.last_seq = seq if self.last_seq is None else max(seq, self.last_seq)
        if st.received % self.sample_every == 0 or st.received < 50:
            # Delay from the moment the frame could first leave the ingest (its last sample captured).
            st.delays_ns.append(now - (ts + count * packet_ns))


async def run_probes(url: str, subject: str, count: int, seconds: float, sample_every: int = 1) -> ProbeStats:
    """`count` probe connections for `seconds`; returns their pooled statistics."""
    u = urlparse(url)
    host, port = u.hostname or "127.0.0.1", u.port or 4222
    stats = ProbeStats()
    loop = asyncio.get_running_loop()
    protos: list[ProbeProtocol] = []
    for _ in range(count):
        ready: asyncio.Future[None] = loop.create_future()
        _, proto = await loop.create_connection(
            lambda ready=ready: ProbeProtocol(subject, stats, sample_every, ready),
            host,
            port,  # type: ignore[misc]
        )
        await asyncio.wait_for(ready, 10)
        protos.append(proto)
    await asyncio.sleep(seconds)
    for p in protos:
        if p.transport is not None:
            p.transport.close()
    return stats


def probe_report(stats: ProbeStats, count: int) -> dict[str, object]:
    delays_ms = [d / 1e6 for d in stats.delays_ns]
    import numpy as np

    def q(p: float) -> float:
        return float(np.percentile(delays_ms, p)) if delays_ms else float("nan")

    return {
        "probes": count,
        "received": stats.received,
        "gaps": stats.gaps,
        "reordered": stats.reordered,
        "delivery_ms": {"p50": q(50), "p99": q(99), "max": max(delays_ms) if delays_ms else float("nan")},
    }
