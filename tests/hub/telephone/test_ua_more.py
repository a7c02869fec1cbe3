"""More of the telephone against sipp and raw datagrams: talkback heard in the caller's ear, hold and resume,
a blocked source refused with 403, the spoken site count, RTCP receiver reports, OPTIONS, and the SIP errors a
malformed request gets.

The call's media goes to this test's own UDP sockets (the scenario's SDP points there, `-key`), so what the
telephone sends back is decoded here, and what the "phone" says is sent from here."""

from __future__ import annotations

import asyncio
import random
import re
import shutil
import socket
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy import select
from tests.helpers import wait_until
from tests.hub.telephone.rig import PIN, run_sipp

from citycast.bus.server import free_port
from citycast.clock.local import SystemClock
from citycast.hub.auth.passwords import hash_password
from citycast.hub.db.models import Address, Priority, SpeakerPin
from citycast.hub.runtime import Hub, HubOptions
from citycast.hub.telephone.call import Call
from citycast.hub.telephone.limiter import Limiter
from citycast.hub.telephone.pins import PinGuard, hint_of
from citycast.hub.telephone.service import Telephone
from citycast.media.sinks import TimedSink
from citycast.media.sources import read_audio
from citycast.rtp.codecs import decoder_for, encoder_for
from citycast.rtp.packet import RtpPacket
from citycast.rtp.rtcp import ReceiverReport, RtcpPacket, parse_compound
from citycast.sip.message import parse
from citycast.sip.sdp import CodecSpec
from citycast.site.agent import SiteAgent
from citycast.site.enrol import enrol
from citycast.site.run import SiteOptions, build_site
from citycast.tooling.demo import speech_asset
from citycast.tooling.markers import correlate_lag

PCMA = CodecSpec("PCMA", 8, 8000)

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp not installed")]


def free_pair() -> int:
    """An even port whose odd neighbour is free too (RTP and RTCP)."""
    for _ in range(100):
        port = random.randrange(30_000, 60_000, 2)
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b,
        ):
            try:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise OSError("no free port pair")


@dataclass
class Rig:
    hub: Hub
    phone: Telephone
    api: httpx.AsyncClient
    site_ids: dict[str, int]
    agents: list[SiteAgent]
    tmp: Path

    def addresses(self) -> list[Address]:
        with self.hub.db.session() as s:
            rows = list(s.scalars(select(Address).order_by(Address.id)))
            s.expunge_all()
            return rows

    def the_call(self) -> Call:
        assert len(self.phone.calls) == 1, self.phone.calls
        return next(iter(self.phone.calls.values()))


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    """A hub with two zones: saddar-1 (running, its "microphone" the speech clip) and saddar-2 (enrolled, never
    connected) in the first, clifton-1 (running) in the second; PIN 2468 for the first zone; the telephone."""
    hub = Hub(HubOptions(data_dir=tmp_path / "hub", http_port=free_port(), nats_port=free_port(), delay_ms=120))
    await hub.start()
    agents: list[SiteAgent] = []
    phone: Telephone | None = None
    api = httpx.AsyncClient(base_url=hub.http_url, timeout=20)
    try:
        assert hub.admin_password
        r = await api.post("/api/login", json={"username": "admin", "password": hub.admin_password})
        api.headers["Authorization"] = f"Bearer {r.json()['token']}"
        zones = [
            (await api.post("/api/zones", json={"name": n, "channel": c})).json()["id"]
            for n, c in (("saddar", 1), ("clifton", 2))
        ]
        site_ids: dict[str, int] = {}
        for name, zone, run in (
            ("saddar-1", zones[0], True),
            ("saddar-2", zones[0], False),
            ("clifton-1", zones[1], True),
        ):
            r = await api.post("/api/sites", json={"name": name, "lat": 24.86, "lon": 67.02, "zone_id": zone})
            assert r.status_code in (200, 201), r.text
            site_ids[name] = r.json()["site"]["id"]
            path = tmp_path / f"{name}.json"
            cred = await enrol(hub.http_url, r.json()["enrol_token"], path)
            if not run:
                continue
            opts = SiteOptions(name="ignored", nats_url="", trust=Path("/nonexistent"), sink="timed", credentials=cred,
                               credentials_path=path, talkback_source=str(speech_asset()))  # fmt: skip
            agent = build_site(opts)
            agent.sink = TimedSink(SystemClock(), block=480)
            await agent.start()
            agents.append(agent)
        with hub.db.session() as s:
            s.add(SpeakerPin(label="Imam Saddar", pin_hash=hash_password(PIN), pin_hint=hint_of(PIN),
                             zone_ids=[zones[0]], priority=Priority.live))  # fmt: skip
        await wait_until(
            lambda: sum(v["state"] == "idle" for v in hub.fleet.snapshot()) == 2, "both sites to come up", timeout=30
        )
        rtp = free_port() & ~1
        ports = (max(rtp, 10_000), max(rtp, 10_000) + 40)
        phone = Telephone(hub.telephone_services(), "127.0.0.1", free_port(), ports, ring_s=0.2, guard=PinGuard())
        await phone.start()
        yield Rig(hub, phone, api, site_ids, agents, tmp_path)
    finally:
        if phone is not None:
            await phone.stop()
        for agent in agents:
            await agent.stop()
        await api.aclose()
        await hub.stop()


# -- the phone's media end --------------------------------------------------------------------------------------
@dataclass
class MediaPeer:
    """The caller's RTP and RTCP sockets: records what the telephone sends, sends speech when asked."""

    port: int
    rtp: list[tuple[float, RtpPacket]] = field(default_factory=list)
    rtcp: list[RtcpPacket] = field(default_factory=list)
    rtp_transport: asyncio.DatagramTransport | None = None
    rtcp_transport: asyncio.DatagramTransport | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        peer = self

        class Rtp(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                peer.rtp.append((time.monotonic(), RtpPacket.parse(data)))

        class Rtcp(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                peer.rtcp.extend(parse_compound(data))

        self.rtp_transport, _ = await loop.create_datagram_endpoint(Rtp, local_addr=("127.0.0.1", self.port))
        self.rtcp_transport, _ = await loop.create_datagram_endpoint(Rtcp, local_addr=("127.0.0.1", self.port + 1))

    def close(self) -> None:
        for t in (self.rtp_transport, self.rtcp_transport):
            if t is not None:
                t.close()

    def audio_since(self, t0: float) -> np.ndarray:
        decoder = decoder_for(PCMA)
        pkts = sorted((p for t, p in self.rtp if t >= t0), key=lambda p: p.timestamp)
        return np.concatenate([decoder.decode(p.payload) for p in pkts]) if pkts else np.zeros(0, np.float32)

    async def talk(self, pcm: np.ndarray, dest: tuple[str, int], ssrc: int) -> None:
        """Send `pcm` (48 kHz) as PCMA RTP from our RTP port, paced at 20 ms."""
        assert self.rtp_transport is not None
        encoder = encoder_for(PCMA, ptime_ms=20)
        seq, ts, t0, n = 1000, 5000, time.monotonic(), 0
        for start in range(0, pcm.size - 960, 960):
            for payload in encoder.encode(pcm[start : start + 960]):
                pkt = RtpPacket(payload_type=8, seq=seq, timestamp=ts, ssrc=ssrc, payload=payload, marker=n == 0)
                self.rtp_transport.sendto(pkt.build(), dest)
                seq, ts, n = seq + 1, ts + 160, n + 1
                await asyncio.sleep(max(0.0, t0 + n * 0.02 - time.monotonic()))


@pytest.fixture
async def media() -> AsyncIterator[MediaPeer]:
    peer = MediaPeer(free_pair())
    await peer.start()
    yield peer
    peer.close()


async def sipp(rig: Rig, scenario: str, *, media: MediaPeer | None = None, timeout_s: int = 25) -> tuple[int, str, str]:
    """One sipp call of `scenario` over UDP, its SDP naming our media peer; (exit code, output, the message trace)."""
    keys = ("-key", "media_host", "127.0.0.1", "-key", "rtp_port", str(media.port if media else 9))
    return await run_sipp(rig.tmp, rig.phone.port, scenario, "u1", media_port=free_pair(), timeout_s=timeout_s,
                          grace_s=10, keys=keys)  # fmt: skip


async def hang_up_from_the_hub(rig: Rig, run: asyncio.Task[tuple[int, str, str]]) -> str:
    assert rig.hub.addresses is not None
    await rig.hub.addresses.stop(rig.hub.addresses.live()[0]["id"], "test over")
    code, out, trace = await run
    assert code == 0, out
    return trace


async def go_live(rig: Rig, scenario: str, media: MediaPeer) -> tuple[asyncio.Task[tuple[int, str, str]], Call]:
    run = asyncio.create_task(sipp(rig, scenario, media=media))
    try:
        await wait_until(
            lambda: rig.hub.addresses is not None and rig.hub.addresses.live(), "the call to go on air", timeout=30
        )
    except AssertionError:
        # Say what the call was doing, so a failure on a loaded CI box explains itself.
        calls = [(c.state, c.failed_pins, c.end_reason) for c in rig.phone.calls.values()]
        sipp_out = (await asyncio.wait_for(run, 30))[1][-2000:] if not run.done() or not run.cancelled() else ""
        raise AssertionError(f"never went on air; calls {calls}; sipp: {sipp_out}") from None
    call = rig.the_call()
    # On air once the broadcaster runs and the caller is told how many sites hear them.
    await wait_until(
        lambda: call.broadcaster is not None and call.sites_live is not None, "the call to settle", timeout=10
    )
    return run, call


# -- tests --------------------------------------------------------------------------------------------------------
async def test_talkback_is_heard_in_the_callers_ear(rig: Rig, media: MediaPeer) -> None:
    run, call = await go_live(rig, "media_call.xml", media)
    r = await rig.api.post(f"/api/sites/{rig.site_ids['saddar-1']}/talkback", json={"on": True})
    assert r.status_code == 200, r.text
    assert rig.hub.talkback is not None and rig.hub.talkback.current is not None
    tap = rig.hub.talkback.current
    await wait_until(lambda: tap.frames >= 25, "talkback audio at the hub", timeout=10)
    assert call.media is not None
    await asyncio.wait_for(call.media.back.played(), 15)  # "you are live to one site" is over
    t0 = time.monotonic()
    await asyncio.sleep(2.5)
    heard = media.audio_since(t0)[: 2 * 48_000]
    assert heard.size == 2 * 48_000, heard.size
    assert float(np.max(np.abs(heard))) <= 1.0
    _, peak = correlate_lag(heard, read_audio(speech_asset()))
    assert peak > 0.5, peak  # the crowd's microphone, through Opus and G.711, in the caller's ear
    await hang_up_from_the_hub(rig, run)
    assert not rig.phone.calls


async def test_the_return_mix_never_clips() -> None:
    """A loud prompt plus a loud microphone through the limiter: the ceiling holds, and quiet audio passes as is."""
    limiter = Limiter()
    rng = np.random.default_rng(1)
    t = np.arange(960) / 48_000
    for k in range(100):
        prompt = (0.9 * np.sin(2 * np.pi * 440 * (t + k * 0.02))).astype(np.float32)
        mic = rng.uniform(-0.9, 0.9, 960).astype(np.float32)
        out = limiter.process(prompt + mic)
        assert float(np.max(np.abs(out))) <= limiter.ceiling + 1e-6 < 1.0
    assert limiter.gain < 0.7
    quiet = (0.1 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    for _ in range(100):  # the gain recovers, without overshooting 1
        out = limiter.process(quiet)
    assert limiter.gain == 1.0 and np.allclose(out, quiet)


async def test_hold_silences_the_broadcast_and_resume_restores_it(rig: Rig, media: MediaPeer) -> None:
    run, call = await go_live(rig, "hold_call.xml", media)
    assert call.media is not None and call.broadcaster is not None
    blocks: list[tuple[bool, float]] = []  # what the broadcast published: (held at the time, RMS)
    audio = call.media.audio
    call.broadcaster.on_block = lambda b: blocks.append(
        (audio.held, float(np.sqrt(np.mean(b.astype(np.float64) ** 2))))
    )
    speech = read_audio(speech_asset())
    talking = asyncio.create_task(media.talk(np.tile(speech, 2), ("127.0.0.1", call.media.port), ssrc=0x1234))
    held_at: list[tuple[float, bool]] = []
    try:
        while not run.done():
            held_at.append((time.monotonic(), audio.held))
            await asyncio.sleep(0.02)
    finally:
        talking.cancel()
    code, out, trace = await run
    assert code == 0, out  # sipp checked the answers: a=recvonly to the hold, a=sendrecv to the resume
    on = [t for t, h in held_at if h]
    assert on and on[-1] - on[0] > 1.5, "the hold was not seen"
    # The broadcast: speech before and after the hold, silence during it.
    held_rms = [rms for h, rms in blocks if h]
    assert len(held_rms) > 50 and max(held_rms) == 0.0
    i_hold = next(i for i, (h, _) in enumerate(blocks) if h)
    before, after = blocks[:i_hold], blocks[i_hold + len(held_rms) :]
    assert max(rms for _, rms in before) > 0.02 and max(rms for _, rms in after) > 0.02
    # The caller on hold is sent no RTP; after the resume the return stream flows again.
    during = [t for t, _ in media.rtp if on[0] + 0.1 < t < on[-1] - 0.1]
    resumed = [t for t, _ in media.rtp if t > on[-1] + 0.1]
    assert during == [] and len(resumed) > 20
    assert len(re.findall(r"^INVITE sip:", trace, re.M)) == 3


async def test_rtcp_receiver_reports_reach_the_callers_rtcp_port(rig: Rig, media: MediaPeer) -> None:
    run, call = await go_live(rig, "media_call.xml", media)
    assert call.media is not None
    talking = asyncio.create_task(media.talk(read_audio(speech_asset()), ("127.0.0.1", call.media.port), ssrc=0xC0FFEE))
    try:
        await wait_until(
            lambda: any(isinstance(p, ReceiverReport) and p.reports for p in media.rtcp),
            "an RTCP receiver report",
            timeout=15,
        )
    finally:
        talking.cancel()
    rr = next(p for p in media.rtcp if isinstance(p, ReceiverReport) and p.reports)
    assert rr.ssrc == call.media.back.ssrc  # from the stream the caller hears
    block = rr.reports[0]
    assert block.ssrc == 0xC0FFEE and 1000 < block.highest_seq < 1000 + 500
    assert block.cumulative_lost <= 2
    await hang_up_from_the_hub(rig, run)


async def test_the_spoken_count_is_the_pins_zone_sites_that_are_up(rig: Rig, media: MediaPeer) -> None:
    run, call = await go_live(rig, "media_call.xml", media)
    await wait_until(lambda: call.sites_live is not None, "the count of sites live", timeout=5)
    # saddar-1 is up; saddar-2 never connected; clifton-1 is up but in another zone.
    assert call.sites_live == 1
    assert call.media is not None
    await hang_up_from_the_hub(rig, run)


async def test_a_blocked_source_gets_403_before_any_answer(rig: Rig) -> None:
    now = time.monotonic()
    for _ in range(rig.phone.guard.failures):
        rig.phone.guard.on_failure("127.0.0.1", now)
    assert rig.phone.source_blocked("127.0.0.1")
    code, out, trace = await sipp(rig, "blocked.xml")
    assert code == 0, out
    assert re.search(r"^SIP/2\.0 403", trace, re.M)
    assert not re.search(r"^SIP/2\.0 (180|200)", trace, re.M)
    assert rig.addresses() == []
    await wait_until(lambda: not rig.phone.calls, "the refused call to be gone", timeout=5)


# -- raw datagrams --------------------------------------------------------------------------------------------------
def _request(method: str, *, version: str = "SIP/2.0", extra: str = "", cseq: str | None = None) -> bytes:
    branch = f"z9hG4bK-{random.getrandbits(32):x}"
    lines = [
        f"{method} sip:citycast@127.0.0.1 {version}",
        f"Via: SIP/2.0/UDP 127.0.0.1:5999;branch={branch}",
        "From: <sip:probe@127.0.0.1>;tag=p1",
        "To: <sip:citycast@127.0.0.1>",
        f"Call-ID: raw-{branch}",
        f"CSeq: {cseq or '1 ' + method}",
        "Max-Forwards: 70",
    ]
    if extra:
        lines.append(extra)
    return ("\r\n".join([*lines, "Content-Length: 0", "", ""])).encode()


class Probe(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.got: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.got.put_nowait(data)


async def test_malformed_requests_get_the_right_error_and_garbage_is_dropped(rig: Rig) -> None:
    loop = asyncio.get_running_loop()
    transport, probe = await loop.create_datagram_endpoint(Probe, remote_addr=("127.0.0.1", rig.phone.port))
    try:

        async def ask(data: bytes) -> bytes | None:
            transport.sendto(data)
            try:
                return await asyncio.wait_for(probe.got.get(), 1.0)
            except TimeoutError:
                return None

        sip = rig.phone.transport
        # A header we cannot read, in a request we can answer: 400, with our reason, to the request's Via.
        data = _request("OPTIONS", cseq="one OPTIONS")
        answer = await ask(data)
        assert answer is not None and answer.startswith(b"SIP/2.0 400 "), answer
        text = answer.decode()  # the CSeq is copied as it was, so the response does not parse either: read it
        sent = data.decode()
        for name in ("Via", "Call-ID", "From", "CSeq"):
            line = next(x for x in sent.split("\r\n") if x.startswith(name + ":"))
            assert line in text.split("\r\n"), (name, text)
        assert re.search(r'^Warning: 399 citycast ".*CSeq', text, re.M), text
        # Another SIP version: 505.
        answer = await ask(_request("OPTIONS", version="SIP/3.0"))
        assert answer is not None and parse(answer).status == 505
        # A malformed ACK is never answered; nor is garbage, or a request without a Via. All are counted.
        dropped = sip.dropped
        assert await ask(_request("ACK", cseq="x ACK")) is None
        assert await ask(b"\x00\x01garbage\xff" * 20) is None
        assert await ask(_request("OPTIONS", cseq="zz").replace(b"Via:", b"Xia:")) is None
        assert sip.dropped == dropped + 3
        # OPTIONS, well formed: 200 with what we allow; the listener still serves after all that.
        answer = await ask(_request("OPTIONS"))
        assert answer is not None
        ok = parse(answer)
        assert ok.status == 200
        assert {"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "INFO"} <= {
            m.strip() for m in ",".join(ok.headers_all("Allow")).split(",")
        }
        assert sip.refused == 2
    finally:
        transport.close()


async def test_the_calls_broadcast_keeps_time_while_the_control_loop_stalls(rig: Rig, media: MediaPeer) -> None:
    """The call's media runs on the hub's media plane: a control loop stuck for half a second (a slow request, a
    big query, a PIN hash) does not stop the call's audio reaching the loudspeakers."""
    run, call = await go_live(rig, "media_call.xml", media)
    assert call.broadcaster is not None and rig.hub.media is not None
    beats: list[tuple[float, threading.Thread]] = []
    call.broadcaster.on_block = lambda _: beats.append((time.monotonic(), threading.current_thread()))
    await wait_until(lambda: len(beats) > 10, "the broadcast", timeout=5)
    t0 = time.monotonic()
    time.sleep(0.5)  # the point: this loop (the control plane) is blocked
    t1 = time.monotonic()
    await asyncio.sleep(0.3)
    during = [t for t, _ in beats if t0 <= t <= t1]
    assert len(during) >= 0.6 * (t1 - t0) / 0.02, len(during)  # blocks kept coming while the control loop slept
    assert {thread for _, thread in beats} == {rig.hub.media.thread}
    await hang_up_from_the_hub(rig, run)
