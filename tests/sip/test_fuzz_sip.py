"""Hostile input for the SIP and SDP parsers (hypothesis: 12,000 examples in all, ~15 s).

Only the documented exceptions may escape (`SipParseError`, `SdpError`), a parsed message must come back
unchanged through its wire form, and the framer must cut the same messages however the stream is chunked.
"""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from citycast.sip.message import SipMessage, SipParseError, StreamFramer, parse
from citycast.sip.sdp import SdpError, build_answer, negotiate, parse_sdp
from citycast.tooling.bench.fuzz import SDP_SEEDS, SIP_SEEDS, fuzz_sip, mutate


def fuzz(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def _edited(seeds: tuple[bytes, ...]) -> st.SearchStrategy[bytes]:
    """A seed with a hypothesis-chosen splice (shrinks well) or a burst of random mutations."""
    splice = st.tuples(st.sampled_from(seeds), st.integers(0, 2000), st.integers(0, 64), st.binary(max_size=40)).map(
        lambda t: t[0][: t[1]] + t[3] + t[0][t[1] + t[2] :]
    )
    mutated = st.tuples(st.sampled_from(seeds), st.randoms(use_true_random=False)).map(
        lambda t: mutate(random.Random(t[1].random()), t[0], seeds)
    )
    return st.one_of(splice, mutated)


def _check_parse(data: bytes) -> SipMessage | None:
    try:
        msg = parse(data)
    except SipParseError as e:
        assert str(e) and 400 <= e.status <= 599
        return None
    again = parse(msg.to_bytes())
    assert again == msg
    assert again.to_bytes() == msg.to_bytes()
    # the validated fields never raise on a parsed message
    assert msg.vias and msg.call_id and msg.cseq[0] >= 0
    assert msg.from_.uri and msg.to.uri
    return msg


@fuzz(4000)
@given(st.binary(max_size=600))
def test_parse_random_bytes(data: bytes) -> None:
    _check_parse(data)


@fuzz(4000)
@given(_edited(SIP_SEEDS), st.lists(st.integers(1, 300), min_size=1, max_size=8))
def test_parse_and_frame_mutated_messages(data: bytes, chunks: list[int]) -> None:
    _check_parse(data)
    framer = StreamFramer()
    frames: list[bytes] = []
    pos, i = 0, 0
    try:
        while pos < len(data):
            step = chunks[i % len(chunks)]
            frames += framer.feed(data[pos : pos + step])
            pos, i = pos + step, i + 1
    except SipParseError:
        return
    try:
        whole = StreamFramer().feed(data)
    except SipParseError as e:  # pragma: no cover - a failure here is the bug being looked for
        raise AssertionError(f"chunked framing accepted what whole framing refused: {e}") from e
    assert whole == frames
    for frame in frames:
        _check_parse(frame)


@fuzz(3000)
@given(_edited(SDP_SEEDS))
def test_sdp_mutated_offers(data: bytes) -> None:
    try:
        sd = parse_sdp(data)
    except SdpError as e:
        assert str(e)
        return
    assert parse_sdp(sd.to_bytes()) == sd
    try:
        neg = negotiate(sd)
    except SdpError as e:
        assert str(e)
        return
    answer = build_answer(neg, local_ip="192.0.2.1", local_port=4000, session_id=1, version=1)
    back = negotiate(parse_sdp(answer))
    assert (back.codec.name, back.codec.payload_type, back.dtmf_pt) == (
        neg.codec.name,
        neg.codec.payload_type,
        neg.dtmf_pt,
    )


_SAFE = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters='",;<>\\'), min_size=1)


@fuzz(1000)
@given(
    method=st.sampled_from(["INVITE", "BYE", "OPTIONS", "INFO", "X-CUSTOM"]),
    user=st.from_regex(r"[a-z0-9]{1,12}", fullmatch=True),
    tag=st.from_regex(r"[A-Za-z0-9.-]{1,20}", fullmatch=True),
    number=st.integers(0, 2**31 - 1),
    extra=st.lists(st.tuples(st.from_regex(r"X-[A-Za-z]{1,8}", fullmatch=True), _SAFE), max_size=5),
    body=st.binary(max_size=200),
    compact=st.booleans(),
)
def test_generated_valid_messages_parse_stably(
    method: str,
    user: str,
    tag: str,
    number: int,
    extra: list[tuple[str, str]],
    body: bytes,
    compact: bool,
) -> None:
    names = ("v", "f", "t", "i", "l") if compact else ("Via", "From", "To", "Call-ID", "Content-Length")
    lines = [
        f"{method} sip:{user}@192.0.2.1 SIP/2.0",
        f"{names[0]}: SIP/2.0/UDP 198.51.100.2:5060;branch=z9hG4bK{tag};rport",
        f'{names[1]}: "{user}" <sip:{user}@198.51.100.2>;tag={tag}',
        f"{names[2]}: <sip:live@192.0.2.1>",
        f"{names[3]}: {tag}@198.51.100.2",
        f"CSeq: {number} {method}",
        *(f"{k}: {v}" for k, v in extra),
        f"{names[4]}: {len(body)}",
    ]
    data = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    msg = _check_parse(data)
    assert msg is not None
    assert (msg.method, msg.cseq, msg.from_.tag, msg.body) == (method, (number, method), tag, body)
    assert msg.headers[0] == ("Via", f"SIP/2.0/UDP 198.51.100.2:5060;branch=z9hG4bK{tag};rport")
    assert StreamFramer().feed(data + data) == [data, data]


def test_fuzz_benchmark_runner_finds_nothing() -> None:
    report = fuzz_sip(3000, seed=7)
    assert report["inputs"] == 3000
    assert report["crashes"] == 0, report["crash_examples"]
    assert report["unstable"] == 0, report["unstable_examples"]
    outcomes = report["outcomes"]
    # the mix exercises both sides of every parser
    for stage in ("parse", "framer", "sdp", "negotiate"):
        assert outcomes.get(f"{stage}.ok", 0) > 0 and outcomes.get(f"{stage}.rejected", 0) > 0, stage
    assert outcomes.get("answer.ok", 0) == outcomes["negotiate.ok"]
