"""A fuzz benchmark for the RTP path: random and mutated datagrams through every parser and the jitter buffer.

`python -c "from citycast.tooling.rtp_fuzz import fuzz_rtp; print(fuzz_rtp(100_000, 1))"` runs 100,000 inputs.
Only the documented exceptions (`RtpError`, `RtcpError`, `DtmfError`, all `ValueError`s) are caught; anything else
propagates, so a crash is a failure of the run. The receivers' state is checked to stay bounded throughout.
"""

from __future__ import annotations

import random
import time

from citycast.rtp.dtmf import DtmfError, Rfc4733Decoder, parse_sip_info
from citycast.rtp.jitter import SEEN_WINDOW, RtpReceiver
from citycast.rtp.packet import RtpError, RtpExtension, RtpPacket
from citycast.rtp.rtcp import ReceptionReporter, ReportBlock, RtcpError, build_bye, build_rr, parse_compound

MAX_PACKETS = 64
STATE_BOUND = MAX_PACKETS + 2 * SEEN_WINDOW + 1


def _valid_rtp(rng: random.Random, seq: int, ts: int) -> bytes:
    ext = RtpExtension(rng.randrange(0x10000), rng.randbytes(4 * rng.randrange(3))) if rng.random() < 0.2 else None
    return RtpPacket(
        payload_type=rng.choice((0, 8, 9, 101, 111, rng.randrange(96, 128))),
        seq=seq & 0xFFFF,
        timestamp=ts & 0xFFFFFFFF,
        ssrc=rng.choice((1, 1, 1, 2, rng.randrange(2**32))),
        payload=rng.randbytes(rng.choice((4, 160, 240, rng.randrange(300)))),
        marker=rng.random() < 0.05,
        csrc=tuple(rng.randrange(2**32) for _ in range(rng.choice((0, 0, 0, 1, 15)))),
        extension=ext,
        padding=rng.choice((0, 0, 0, 1, 4, 255)),
    ).build()


def _valid_rtcp(rng: random.Random) -> bytes:
    if rng.random() < 0.5:
        blocks = [ReportBlock(rng.randrange(2**32), rng.randrange(256), rng.randrange(-(2**23), 2**23),
                              rng.randrange(2**32), rng.randrange(2**32)) for _ in range(rng.randrange(3))]  # fmt: skip
        return build_rr(rng.randrange(2**32), blocks, "fuzz")
    return build_bye(rng.randrange(2**32), "fuzz", "bye" * rng.randrange(3))


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(4)
        if op == 0 and buf:
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            del buf[rng.randrange(len(buf)) :]
        elif op == 2:
            buf[rng.randrange(len(buf) + 1) : 0] = rng.randbytes(rng.randrange(1, 8))
        elif buf:
            buf[rng.randrange(len(buf))] = rng.choice((0, 0xFF, 0x80, 0x7F))
    return bytes(buf)


def _info_body(rng: random.Random) -> tuple[str, bytes]:
    ctype = rng.choice(("application/dtmf-relay", "application/dtmf", "application/sdp", "Application/DTMF-Relay;x=1"))
    body = rng.choice((b"Signal=5\r\nDuration=160", b"5", b"Signal=#", b"Signal=10", b"", b"Signal"))
    return ctype, _mutate(rng, body) if rng.random() < 0.7 else body


def fuzz_rtp(n: int, seed: int) -> dict[str, float]:
    """Run `n` inputs; return counts of accepted/rejected inputs per parser and the peak receiver state."""
    rng = random.Random(seed)
    counts = {"rtp_ok": 0, "rtp_rejected": 0, "rtcp_ok": 0, "rtcp_rejected": 0, "dtmf_digits": 0,
              "info_ok": 0, "info_rejected": 0, "played": 0, "max_state": 0}  # fmt: skip
    receivers = [RtpReceiver(8000, 20, 60, max_packets=MAX_PACKETS), RtpReceiver(48000, 20, 40, max_packets=16)]
    dtmf = Rfc4733Decoder()
    reporter = ReceptionReporter(rng=random.Random(seed))
    seq, ts, now = rng.randrange(0x10000), rng.randrange(2**32), 0.0
    start = time.perf_counter()
    for _ in range(n):
        kind = rng.randrange(10)
        now += rng.choice((0.0, 0.001, 0.02, 0.02, 0.02, 0.05, 0.5, 3.0))
        if kind < 6:  # RTP: valid, mutated or random, through the parser, the receivers and the DTMF decoder
            seq += rng.choice((1, 1, 1, 1, 2, 0, -1, 3000, -5000, 40000))
            ts += rng.choice((160, 160, 160, 960, 0, -160, 2**31, 8000 * 100))
            data = _valid_rtp(rng, seq, ts)
            if kind >= 3:
                data = _mutate(rng, data) if kind < 5 else rng.randbytes(rng.randrange(40))
            try:
                pkt = RtpPacket.parse(data)
            except RtpError:
                counts["rtp_rejected"] += 1
                continue
            counts["rtp_ok"] += 1
            if RtpPacket.parse(pkt.build()) != pkt:  # padding content is not kept, so compare parsed forms
                raise AssertionError(f"RTP round trip changed the packet: {data.hex()}")
            for rx in receivers:
                rx.push(pkt, now, media=pkt.payload_type != 101)
                counts["played"] += rx.pop(now) is not None
                counts["max_state"] = max(counts["max_state"], rx.state_size)
                if rx.state_size > STATE_BOUND:
                    raise AssertionError(f"receiver state grew to {rx.state_size}")
            if dtmf.push(pkt) is not None:
                counts["dtmf_digits"] += 1
        elif kind < 8:  # RTCP
            data = _valid_rtcp(rng)
            data = _mutate(rng, data) if kind == 7 else data
            try:
                for packet in parse_compound(data):
                    reporter.on_packet(packet, now)
                counts["rtcp_ok"] += 1
            except RtcpError:
                counts["rtcp_rejected"] += 1
            block = reporter.report_block(receivers[0].stats, now)
            if block is not None:
                parse_compound(build_rr(1, [block], "fuzz"))  # what we report must always encode
        else:  # SIP INFO bodies
            ctype, body = _info_body(rng)
            try:
                parse_sip_info(ctype, body)
                counts["info_ok"] += 1
            except DtmfError:
                counts["info_rejected"] += 1
    elapsed = time.perf_counter() - start
    return {"inputs": n, **counts, "seconds": round(elapsed, 3), "inputs_per_s": round(n / elapsed) if elapsed else 0}
