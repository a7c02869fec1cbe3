"""RTP Bleed, played for real: sipp calls the telephone and speaks (one RTP stream: the PIN as RFC 4733 events,
then speech) while strangers spray the call's RTP and RTCP ports with a 1 kHz tone — from another address
(127.0.0.2), from the caller's IP on another port, with the caller's exact address forged (a raw socket) under
another SSRC, and in a burst before the caller's first packet. The site must play the caller's speech and no tone,
no stranger may receive a single packet back, and every stranger's datagram is counted as dropped. A second call
whose SDP names a third address (127.0.0.3, listening) must send nothing there.

All of 127/8 is loopback on Linux, so the strangers are real other addresses on this host."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from tests.helpers import wait_until
from tests.hub.telephone.rig import Rig, free_rtp_range, run_sipp

from citycast.hub.metrics import render_metrics
from citycast.hub.telephone.call import CallState
from citycast.hub.telephone.return_stream import Pacer
from citycast.media.sources import read_audio
from citycast.rtp.codecs import encoder_for
from citycast.rtp.latch import parse_networks
from citycast.rtp.packet import RtpPacket
from citycast.rtp.rtcp import SenderInfo, build_sr
from citycast.sip.sdp import CodecSpec
from citycast.tooling.demo import speech_asset
from citycast.tooling.markers import correlate_lag

PCMA = CodecSpec("PCMA", 8, 8000)
CALLER_SSRC = 0x5EED5EED
SPEECH_S = 6.0
TONE_HZ = 1000.0


# -- the caller's media, as a pcap sipp plays -----------------------------------------------------------------------
def _udp_frame(src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> bytes:
    udp_len = 8 + len(payload)
    s, d = socket.inet_aton(src[0]), socket.inet_aton(dst[0])
    pseudo = s + d + struct.pack("!BBH", 0, 17, udp_len) + struct.pack("!HHHH", src[1], dst[1], udp_len, 0) + payload
    if len(pseudo) % 2:
        pseudo += b"\0"
    total = sum(struct.unpack(f"!{len(pseudo) // 2}H", pseudo))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    udp = struct.pack("!HHHH", src[1], dst[1], udp_len, (~total & 0xFFFF) or 0xFFFF) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 0, 0x4000, 64, 17, 0, s, d)
    ip_sum = sum(struct.unpack("!10H", ip))
    while ip_sum >> 16:
        ip_sum = (ip_sum & 0xFFFF) + (ip_sum >> 16)
    ip = ip[:10] + struct.pack("!H", ~ip_sum & 0xFFFF) + ip[12:]
    return bytes(12) + b"\x08\x00" + ip + udp


def write_caller_pcap(path: Path, speech: np.ndarray) -> float:
    """PIN 2468# as RFC 4733 events, then `speech` (48 kHz) as PCMA, all one SSRC at a 20 ms pace; its length (s)."""
    payloads: list[tuple[int, int, bytes, bool]] = []  # (payload type, timestamp, payload, marker) per 20 ms tick
    ts = 1000
    for digit in "2468#":
        event = 11 if digit == "#" else int(digit)
        for k in range(1, 7):
            end = k > 3
            payloads.append((101, ts, struct.pack("!BBH", event, (0x80 if end else 0) | 10, min(k, 4) * 160), k == 1))
        ts += 12 * 160  # the key press and a pause: 240 ms of RTP clock per digit
    encoder = encoder_for(PCMA, ptime_ms=20)
    for start in range(0, speech.size - 960 + 1, 960):
        for payload in encoder.encode(speech[start : start + 960]):
            payloads.append((8, ts, payload, False))
            ts += 160
    records = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for seq, (pt, stamp, payload, marker) in enumerate(payloads):
        rtp = RtpPacket(pt, (100 + seq) & 0xFFFF, stamp & 0xFFFFFFFF, CALLER_SSRC, payload, marker).build()
        frame = _udp_frame(("10.0.0.1", 5000), ("10.0.0.2", 6000), rtp)
        t = seq * 0.02
        records.append(struct.pack("<IIII", int(t), int((t % 1) * 1e6), len(frame), len(frame)) + frame)
    path.write_bytes(b"".join(records))
    return len(payloads) * 0.02


# -- the strangers ------------------------------------------------------------------------------------------------
@dataclass
class Stranger:
    """A UDP socket somewhere on this host: sprays, and records anything that comes back."""

    host: str
    got: list[tuple[bytes, tuple[str, int]]] = field(default_factory=list)
    times: list[tuple[float, int]] = field(default_factory=list)  # (arrival, size) of what came back
    transport: asyncio.DatagramTransport | None = None
    sent: dict[int, int] = field(default_factory=dict)  # datagrams sent, by destination port

    async def open(self) -> Stranger:
        stranger = self

        class Proto(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                stranger.got.append((data, addr))
                stranger.times.append((time.monotonic(), len(data)))

        self.transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(Proto, local_addr=(self.host, 0))
        return self

    def send(self, data: bytes, dest: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data, dest)
        self.sent[dest[1]] = self.sent.get(dest[1], 0) + 1

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def tone_packets(ssrc: int) -> list[bytes]:
    """One second of a loud 1 kHz tone as PCMA RTP packets."""
    t = np.arange(48_000) / 48_000
    pcm = (0.5 * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32)
    encoder = encoder_for(PCMA, ptime_ms=20)
    out: list[bytes] = []
    for i, start in enumerate(range(0, pcm.size, 960)):
        for payload in encoder.encode(pcm[start : start + 960]):
            out.append(RtpPacket(8, i, i * 160, ssrc, payload, i == 0).build())
    return out


def forged(src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> bytes:
    """An IPv4+UDP datagram with `src` forged (UDP checksum 0: none), for a raw socket."""
    udp = struct.pack("!HHHH", src[1], dst[1], 8 + len(payload), 0) + payload
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
                       socket.inet_aton(src[0]), socket.inet_aton(dst[0])) + udp  # fmt: skip


def tone_level(x: np.ndarray, rate: int = 48_000) -> float:
    """The loudest 1 kHz amplitude over 0.5 s windows of `x`."""
    n = rate // 2
    ref = np.exp(-2j * np.pi * TONE_HZ * np.arange(n) / rate)
    return max((2 * abs(np.dot(x[i : i + n], ref)) / n for i in range(0, x.size - n + 1, n // 2)), default=0.0)


# -- tests --------------------------------------------------------------------------------------------------------
@pytest.mark.skipif(os.geteuid() != 0, reason="forging the caller's address needs a raw socket (root)")
async def test_strangers_spraying_a_live_call_are_never_heard_nor_answered(rig: Rig) -> None:
    speech = read_audio(speech_asset())[: int(SPEECH_S * 48_000)]
    assert tone_level(speech) < 0.02  # the clip itself has no strong 1 kHz: a tone heard would be the stranger's
    length = write_caller_pcap(rig.tmp / "caller.pcap", speech)
    media_port = free_rtp_range()[0]
    caller = ("127.0.0.1", media_port)
    run = asyncio.create_task(
        run_sipp(
            rig.tmp,
            rig.phone.port,
            "caller_pcap.xml",
            "u1",
            media_port=media_port,
            timeout_s=40,
            grace_s=15,
            keys=("-d", str(int(length * 1000) + 1500)),
        )
    )
    other_host = await Stranger("127.0.0.2").open()  # (a) another address
    same_host = await Stranger("127.0.0.1").open()  # (b) the caller's IP, another port
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)  # (b) the caller's address forged
    tone = tone_packets(0xBAD0BAD0)
    stranger_sr = build_sr(0xBAD0BAD0, SenderInfo(0, 0, 1, 160), [], "stranger")
    caller_sr = build_sr(CALLER_SSRC, SenderInfo(0, 0, 1, 160), [], "forged")
    seen: dict[str, object] = {}
    after_burst: tuple[str, int] | None = None
    try:
        await wait_until(
            lambda: any(c.state is CallState.answered for c in rig.phone.calls.values()),
            "the call to be answered",
            timeout=20,
        )
        call = next(iter(rig.phone.calls.values()))
        assert call.media is not None
        latch, port = call.media.latch, call.media.port
        rtp_to, rtcp_to = ("127.0.0.1", port), ("127.0.0.1", port + 1)
        # (c) a burst before the caller's first packet (sipp waits 1.5 s after its ACK), and (d) RTCP.
        for i in range(100):
            other_host.send(tone[i % len(tone)], rtp_to)
            same_host.send(tone[i % len(tone)], rtp_to)
            if i % 10 == 0:
                other_host.send(caller_sr, rtcp_to)
                same_host.send(caller_sr, rtcp_to)
            await asyncio.sleep(0.001)
        after_burst = latch.latched
        # Then a stream of tone from everyone, for the whole call, paced like a phone.
        i = 0
        while not run.done() and call.state is not CallState.ended:
            pkt = tone[i % len(tone)]
            other_host.send(pkt, rtp_to)
            same_host.send(pkt, rtp_to)
            if latch.latched is not None:  # forged only once the caller has latched: see docs/sip-internals.md
                raw.sendto(forged(caller, rtp_to, pkt), rtp_to)
                if i % 5 == 0:
                    raw.sendto(forged(("127.0.0.1", media_port + 1), rtcp_to, stranger_sr), rtcp_to)
            if i % 5 == 0:
                other_host.send(caller_sr, rtcp_to)
                same_host.send(stranger_sr, rtcp_to)
            seen = {"latched": latch.latched, "ssrc": latch.ssrc, "dropped": dict(latch.dropped),
                    "accepted": latch.accepted, "live": call.state is CallState.live}  # fmt: skip
            i += 1
            await asyncio.sleep(0.02)
        code, out, _ = await run
        assert code == 0, out
    finally:
        raw.close()
        await asyncio.sleep(0.5)  # anything in flight back to the strangers arrives
        other_host.close()
        same_host.close()
    # Not one packet back to a stranger (no talkback, no RTCP).
    assert other_host.got == [] and same_host.got == [], (len(other_host.got), len(same_host.got))
    # The site played the caller's speech, and no tone.
    await wait_until(
        lambda: rig.addresses() and rig.addresses()[-1].ended_at is not None, "the address to end", timeout=10
    )
    await asyncio.sleep(0.6)  # the sink rewrites its WAV header every half second
    heard = read_audio(rig.tmp / "saddar-1.wav")
    _, peak = correlate_lag(speech[: 5 * 48_000], heard)
    assert tone_level(heard) < 0.02, tone_level(heard)
    assert peak > 0.5, peak
    # The burst did not latch; the caller latched, by its address and SSRC; its PIN (RFC 4733 in the stream) worked.
    assert after_burst is None, after_burst
    assert seen["latched"] == caller and seen["ssrc"] == CALLER_SSRC and seen["live"], seen
    dropped = seen["dropped"]
    assert isinstance(dropped, dict)
    # Every stranger's datagram that arrived while the call lasted was counted (a few may land after its end).
    sprayed = other_host.sent[port] + same_host.sent[port]
    assert rig.phone.rtp_dropped["foreign_source"] >= sprayed - 20, (rig.phone.rtp_dropped, sprayed)
    sprayed_rtcp = other_host.sent[port + 1] + same_host.sent[port + 1]
    assert rig.phone.rtp_dropped["rtcp_foreign"] >= sprayed_rtcp - 5, (rig.phone.rtp_dropped, sprayed_rtcp)
    assert dropped["foreign_ssrc"] > 50 and dropped["rtcp_foreign"] > 50, dropped
    # The counters reach /metrics.
    counters = rig.phone.counters()
    assert counters["rtp_dropped_foreign_source"] == rig.phone.rtp_dropped["foreign_source"]
    text = render_metrics(rig.hub.fleet, sip=rig.phone.counters).decode()
    n = float(rig.phone.rtp_dropped["foreign_ssrc"])
    assert n >= dropped["foreign_ssrc"] and f'citycast_rtp_dropped_total{{reason="foreign_ssrc"}} {n}' in text, text


async def test_a_foreign_c_line_gets_nothing_sent_to_it(rig: Rig) -> None:
    victim_rtp = await Stranger("127.0.0.3").open()
    assert victim_rtp.transport is not None
    victim_port = victim_rtp.transport.get_extra_info("sockname")[1]
    loop = asyncio.get_running_loop()
    victim_rtcp = Stranger("127.0.0.3")
    try:
        victim_rtcp.transport, _ = await loop.create_datagram_endpoint(
            lambda: _Recorder(victim_rtcp), local_addr=("127.0.0.3", victim_port + 1)
        )
    except OSError:
        victim_rtcp.transport = None
    keys = ("-key", "media_host", "127.0.0.3", "-key", "rtp_port", str(victim_port))
    run = asyncio.create_task(run_sipp(rig.tmp, rig.phone.port, "media_call.xml", "u1", media_port=free_rtp_range()[0],
                                       timeout_s=30, grace_s=10, keys=keys))  # fmt: skip
    try:
        await wait_until(
            lambda: rig.hub.addresses is not None and rig.hub.addresses.live(), "the call to go on air", timeout=20
        )
        call = next(iter(rig.phone.calls.values()))
        assert call.media is not None and call.media.latch.acked
        t0 = time.monotonic()
        await asyncio.sleep(6.0)  # the welcome, the live prompt and an RTCP interval would all have gone there
        target, streamed = call.media.latch.rtp_target(), call.media.back.packets >= (time.monotonic() - t0) * 40
        assert rig.hub.addresses is not None
        await rig.hub.addresses.stop(rig.hub.addresses.live()[0]["id"], "test over")
        code, out, _ = await run
        assert code == 0, out
    finally:
        victim_rtp.close()
        victim_rtcp.close()
    assert victim_rtp.got == [] and victim_rtcp.got == [], (len(victim_rtp.got), len(victim_rtcp.got))
    assert target is None and streamed  # the return stream ran all along: it just had nowhere it may go
    assert call.rtcp_sent == 0


class _Recorder(asyncio.DatagramProtocol):
    def __init__(self, into: Stranger) -> None:
        self.into = into

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.into.got.append((data, addr))


def test_the_return_pacer_skips_late_ticks_instead_of_bursting() -> None:
    pacer = Pacer(0.0, 0.02)
    assert pacer.next(0.0) == (pytest.approx(0.02), 0)
    assert pacer.next(0.04) == (0.0, 0)  # on time for tick 2
    delay, skipped = pacer.next(0.25)  # the loop stalled 190 ms: the 9 ticks missed are skipped, not sent
    assert delay == 0.0 and skipped == 9
    assert pacer.next(0.25) == (pytest.approx(0.01), 0)  # and the next one waits for its time


async def test_a_trusted_trunk_range_gets_media_at_its_c_address_and_nobody_else(rig: Rig) -> None:
    """The trunk signals from 127.0.0.1 and carries media on 127.0.0.5, both inside the operator's range: the return
    stream reaches the c= address after the ACK, within the call's own rate; another address in the range that was
    not named (127.0.0.6) gets nothing and is not heard."""
    rig.phone.trusted_media = parse_networks(["127.0.0.0/29"])
    trunk_media = await Stranger("127.0.0.5").open()
    neighbour = await Stranger("127.0.0.6").open()
    assert trunk_media.transport is not None
    trunk_port = trunk_media.transport.get_extra_info("sockname")[1]
    keys = ("-key", "media_host", "127.0.0.5", "-key", "rtp_port", str(trunk_port))
    run = asyncio.create_task(run_sipp(rig.tmp, rig.phone.port, "media_call.xml", "u1", media_port=free_rtp_range()[0],
                                       timeout_s=30, grace_s=10, keys=keys))  # fmt: skip
    try:
        await wait_until(
            lambda: rig.hub.addresses is not None and rig.hub.addresses.live(), "the call to go on air", timeout=20
        )
        call = next(iter(rig.phone.calls.values()))
        assert call.media is not None
        rtp_to = ("127.0.0.1", call.media.port)
        await wait_until(lambda: len(trunk_media.got) > 25, "the return stream at the trunk's c= address", timeout=5)
        assert call.media.latch.latched is None  # sent to before it spoke: the range vouches for it
        tone = tone_packets(0x7777)
        for i in range(150):  # the trunk speaks from its c= address while its neighbour sprays
            trunk_media.send(RtpPacket(8, i, i * 160, 0x1234, b"\xd5" * 160).build(), rtp_to)
            neighbour.send(tone[i % len(tone)], rtp_to)
            await asyncio.sleep(0.02)
        assert call.media.latch.latched == ("127.0.0.5", trunk_port) and call.media.latch.ssrc == 0x1234
        assert call.media.latch.dropped["foreign_source"] >= 140
        assert rig.hub.addresses is not None
        await rig.hub.addresses.stop(rig.hub.addresses.live()[0]["id"], "test over")
        code, out, _ = await run
        assert code == 0, out
    finally:
        trunk_media.close()
        neighbour.close()
    assert neighbour.got == []
    # Never faster than the call's own packet rate: at most 50 packets (+ timer slack) in any second.
    arrivals = [t for t, _ in trunk_media.times]
    busiest = max(sum(1 for u in arrivals if t <= u < t + 1.0) for t in arrivals)
    assert busiest <= 53, busiest
