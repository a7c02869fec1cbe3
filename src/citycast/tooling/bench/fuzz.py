"""Fuzz benchmark of the SIP side's parsers: mutated real messages and random bytes, counted and timed.

`fuzz_sip` feeds each input to `parse` (as a datagram), to a `StreamFramer` (in random chunk sizes, each framed
message then parsed) and to `parse_sdp` (the body, or a mutated SDP) → `negotiate` → `build_answer`. The only
exceptions allowed out are the documented ones (`SipParseError`, `SdpError`); anything else is a crash, and
every message that parses must survive ``parse(m.to_bytes()) == m``. Seeds are a real sipp INVITE (the default
``uac`` scenario), a real baresip INVITE (opus/G722/PCMU/PCMA/telephone-event), and the ACK, BYE, CANCEL,
OPTIONS, INFO and responses of such calls. No randomness outside the given seed, so a run can be replayed.
"""

from __future__ import annotations

import random
import time
import traceback
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

from citycast.sip.message import SipParseError, StreamFramer, parse
from citycast.sip.sdp import Negotiated, SdpError, build_answer, negotiate, parse_sdp

A = TypeVar("A")
T = TypeVar("T")

_SIPP_SDP = (
    b"v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)
_BARESIP_SDP = (
    b"v=0\r\no=- 2086609618 671355111 IN IP4 192.0.2.2\r\ns=-\r\nc=IN IP4 192.0.2.2\r\nt=0 0\r\n"
    b"a=tool:baresip 1.0.0\r\nm=audio 25504 RTP/AVP 96 9 0 8 101\r\na=rtpmap:96 opus/48000/2\r\n"
    b"a=fmtp:96 stereo=1;sprop-stereo=1\r\na=rtpmap:9 G722/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=sendrecv\r\na=label:1\r\na=rtcp-rsize\r\n"
    b"a=ssrc:794974634 cname:sip:speaker@127.0.0.1\r\na=minptime:20\r\na=ptime:20\r\n"
)
_HOLD_SDP = (
    b"v=0\r\no=- 1 2 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\nm=audio 4000 RTP/AVP 8 0 101\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\na=sendonly\r\nm=video 5000 RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\n"
)


def _msg(head: str, body: bytes = b"") -> bytes:
    return head.replace("\n", "\r\n").replace("@LEN@", str(len(body))).encode() + b"\r\n" + body


_DIALOG = (
    "Via: SIP/2.0/UDP 127.0.0.1:5097;branch=z9hG4bK-24163-1-{n}\n"
    "From: sipp <sip:sipp@127.0.0.1:5097>;tag=24163SIPpTag001\n"
    "To: service <sip:service@127.0.0.1:5098>;tag=cc1\n"
    "Call-ID: 1-24163@127.0.0.1\n"
)

SIP_SEEDS: tuple[bytes, ...] = (
    _msg(
        "INVITE sip:service@127.0.0.1:5098 SIP/2.0\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5097;branch=z9hG4bK-24163-1-0\n"
        "From: sipp <sip:sipp@127.0.0.1:5097>;tag=24163SIPpTag001\n"
        "To: service <sip:service@127.0.0.1:5098>\n"
        "Call-ID: 1-24163@127.0.0.1\nCSeq: 1 INVITE\nContact: sip:sipp@127.0.0.1:5097\nMax-Forwards: 70\n"
        "Subject: Performance Test\nContent-Type: application/sdp\nContent-Length:   @LEN@\n",
        _SIPP_SDP,
    ),
    _msg(
        "INVITE sip:live@127.0.0.1:5095 SIP/2.0\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5096;branch=z9hG4bK8440371ca796f7f6;rport\n"
        "Contact: <sip:speaker-0x56156801cd80@127.0.0.1:5096>\nMax-Forwards: 70\nTo: <sip:live@127.0.0.1:5095>\n"
        "From: <sip:speaker@127.0.0.1>;tag=b0603f5a96261343\nCall-ID: bb8763484e902b51\nCSeq: 41866 INVITE\n"
        "User-Agent: baresip v1.0.0 (x86_64/linux)\n"
        "Allow: INVITE,ACK,BYE,CANCEL,OPTIONS,NOTIFY,SUBSCRIBE,INFO,MESSAGE,REFER\nSupported:\n"
        "Content-Type: application/sdp\nContent-Length: @LEN@\n",
        _BARESIP_SDP,
    ),
    _msg("ACK sip:service@127.0.0.1:5098 SIP/2.0\n" + _DIALOG.format(n=1) + "CSeq: 1 ACK\nContent-Length: 0\n"),
    _msg("BYE sip:service@127.0.0.1:5098 SIP/2.0\n" + _DIALOG.format(n=2) + "CSeq: 2 BYE\nMax-Forwards: 70\nl: 0\n"),
    _msg(
        "INFO sip:service@127.0.0.1:5098 SIP/2.0\n" + _DIALOG.format(n=3) + "CSeq: 3 INFO\n"
        "c: application/dtmf-relay\nContent-Length: @LEN@\n",
        b"Signal=5\r\nDuration=160\r\n",
    ),
    _msg(
        "OPTIONS sip:hub.example SIP/2.0\nv: SIP/2.0/TCP [2001:db8::1]:5060;branch=z9hG4bKopt;received=2001:db8::9\n"
        'f: "A \\"quoted\\" name" <sip:a@example.com>;tag=1\nt: sip:hub.example\ni: opt-1@example.com\n'
        "CSeq: 7 OPTIONS\nRoute: <sip:p1.example;lr>, <sip:p2.example;lr>\nAccept: application/sdp\n"
        "Subject: folded\n  across lines\nl: 0\n"
    ),
    _msg("CANCEL sip:service@127.0.0.1:5098 SIP/2.0\n" + _DIALOG.format(n=0) + "CSeq: 1 CANCEL\nContent-Length: 0\n"),
    _msg(
        "SIP/2.0 200 OK\n" + _DIALOG.format(n=0) + "CSeq: 1 INVITE\nContact: <sip:hub@127.0.0.1:5060>\n"
        "Content-Type: application/sdp\nContent-Length: @LEN@\n",
        _HOLD_SDP,
    ),
    _msg("SIP/2.0 486 Busy Here\n" + _DIALOG.format(n=0) + "CSeq: 1 INVITE\nContent-Length: 0\n"),
)
SDP_SEEDS: tuple[bytes, ...] = (_SIPP_SDP, _BARESIP_SDP, _HOLD_SDP)

_INTERESTING = (
    b"\r\n",
    b"\r\n\r\n",
    b"\n",
    b" ",
    b"\t",
    b",",
    b";",
    b":",
    b"<",
    b">",
    b'"',
    b"\\",
    b"\x00",
    b"\xff",
    b"\xc3\xa9",
    b"=",
    b"/",
    b"0",
    b"-1",
    b"4294967296",
    b"99999999999999999999",
    b"65536",
    b"SIP/2.0",
    b"SIP/3.0",
    b"Content-Length: 0\r\n",
    b"l: 99999\r\n",
    b"Via: SIP/2.0/UDP x\r\n",
    b";tag=",
    b"a=rtpmap:",
    b"m=audio 0 RTP/AVP\r\n",
    b"c=IN IP6 ::\r\n",
)


def mutate(rng: random.Random, data: bytes, pool: tuple[bytes, ...]) -> bytes:
    """One to four random edits of `data`: bit flips, byte or token insertions, deletions, duplications,
    truncation, line swaps, and splices with another sample of `pool`."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(9)
        pos = rng.randint(0, len(buf))
        if op == 0 and buf:
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[pos:pos] = bytes([rng.randrange(256)])
        elif op == 2:
            buf[pos:pos] = rng.choice(_INTERESTING)
        elif op == 3 and buf:
            del buf[pos : pos + rng.randint(1, 16)]
        elif op == 4 and buf:
            start = rng.randrange(len(buf))
            chunk = buf[start : start + rng.randint(1, 64)]
            buf[pos:pos] = chunk * rng.randint(1, 8)
        elif op == 5:
            del buf[pos:]
        elif op == 6:
            lines = bytes(buf).split(b"\r\n")
            if len(lines) > 2:
                i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
                lines[i], lines[j] = lines[j], lines[i]
                buf = bytearray(b"\r\n".join(lines))
        elif op == 7:
            other = rng.choice(pool)
            cut = rng.randint(0, len(other))
            buf = buf[:pos] + other[cut:]
        else:
            i = rng.randrange(len(buf) + 1)
            buf[i:i] = bytes(rng.randrange(48, 58) for _ in range(rng.randint(1, 12)))
    return bytes(buf)


def _input(rng: random.Random) -> tuple[bytes, bytes]:
    """A SIP candidate and an SDP candidate."""
    kind = rng.random()
    if kind < 0.05:
        sip = rng.randbytes(rng.randint(0, 512))
    elif kind < 0.15:
        sip = rng.choice(SIP_SEEDS)
    else:
        sip = mutate(rng, rng.choice(SIP_SEEDS), SIP_SEEDS)
    sdp = mutate(rng, rng.choice(SDP_SEEDS), SDP_SEEDS) if rng.random() < 0.8 else rng.choice(SDP_SEEDS)
    return sip, sdp


class _Tally:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.crashes: list[str] = []

    def crash(self, where: str, data: bytes) -> None:
        self.counts["crash"] += 1
        if len(self.crashes) < 5:
            self.crashes.append(f"{where}: {data[:200]!r}\n{traceback.format_exc(limit=4)}")


def _guard(
    tally: _Tally, where: str, data: bytes, allowed: tuple[type[Exception], ...], fn: Callable[[A], T], arg: A
) -> T | None:
    """`fn(arg)`, counting an `allowed` exception as a rejection and any other as a crash."""
    try:
        result = fn(arg)
    except allowed:
        tally.counts[f"{where}.rejected"] += 1
        return None
    except Exception:
        tally.crash(where, data)
        return None
    tally.counts[f"{where}.ok"] += 1
    return result


def _renegotiate(answer: bytes) -> Negotiated:
    return negotiate(parse_sdp(answer))


def _frame(data: bytes, *, rng: random.Random) -> list[bytes]:
    framer = StreamFramer()
    out: list[bytes] = []
    pos = 0
    while pos < len(data):
        step = rng.randint(1, 400)
        out += framer.feed(data[pos : pos + step])
        pos += step
    return out


def fuzz_sip(n: int, seed: int) -> dict[str, Any]:
    """Run `n` inputs through the SIP and SDP parsers; returns counts per outcome, crashes and timing.

    A healthy run has ``crashes == 0`` and ``unstable == 0``.
    """
    rng = random.Random(seed)
    tally = _Tally()
    unstable: list[str] = []
    start = time.perf_counter()
    for _ in range(n):
        sip, sdp = _input(rng)
        msg = _guard(tally, "parse", sip, (SipParseError,), parse, sip)
        if msg is not None:
            try:
                again = parse(msg.to_bytes())
                stable = again == msg
            except Exception:
                stable = False
            if not stable:
                tally.counts["unstable"] += 1
                if len(unstable) < 5:
                    unstable.append(repr(sip[:200]))
        frames = _guard(tally, "framer", sip, (SipParseError,), partial(_frame, rng=rng), sip)
        if frames is not None:
            for frame in frames:
                _guard(tally, "framed_parse", frame, (SipParseError,), parse, frame)
        body = msg.body if msg is not None and rng.random() < 0.3 else sdp
        offer = _guard(tally, "sdp", body, (SdpError,), parse_sdp, body)
        if offer is not None:
            neg = _guard(tally, "negotiate", body, (SdpError,), negotiate, offer)
            if neg is not None:
                answer = build_answer(neg, local_ip="192.0.2.1", local_port=4000, session_id=1, version=1)
                # our own answer must parse and negotiate: any exception here is a crash
                _guard(tally, "answer", answer, (), _renegotiate, answer)
    seconds = time.perf_counter() - start
    return {
        "inputs": n,
        "seed": seed,
        "seconds": round(seconds, 3),
        "inputs_per_second": round(n / seconds) if seconds > 0 else None,
        "outcomes": dict(sorted(tally.counts.items())),
        "crashes": tally.counts["crash"],
        "unstable": tally.counts["unstable"],
        "crash_examples": tally.crashes,
        "unstable_examples": unstable,
    }
