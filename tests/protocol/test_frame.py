from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from citycast.media.audio import FRAME_NS
from citycast.media.keys import key_id, parse_public_key
from citycast.protocol.channel import CHANNEL_MAX
from citycast.protocol.delay import DelaySchedule
from citycast.protocol.frame import (
    MAX_FRAME_SIZE,
    MIN_FRAME_SIZE,
    BadSignature,
    Frame,
    FrameError,
    FrameSigner,
    FrameVerifier,
    MalformedFrame,
    ReplayWindow,
    UntrustedKey,
    is_fresh,
    pack_frame_body,
    parse_frame,
)

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
SIGNER = FrameSigner(KEY)
VERIFIER = FrameVerifier([KEY.public_key()])
SILENCE = b"\xf8\xff\xfe"  # a 20 ms silent Opus (CELT) packet

VALID_FIELDS: dict[str, object] = dict(
    channel=3, stream=0xDEADBEEF, seq=41, ts_ns=1_234_567_890_000, packets=[SILENCE, b"\x01\x02\x03\x04\x05"]
)
VALID = SIGNER.sign(**VALID_FIELDS)  # type: ignore[arg-type]
VALID_FRAME = VERIFIER.verify(VALID)

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def raw_frame(
    *,
    count: int | None = None,
    lengths: list[int] | None = None,
    packets: list[bytes] | None = None,
    magic: bytes = b"CC",
    version: int = 1,
    channel: int = 1,
    stream: int = 2,
    seq: int = 3,
    ts_ns: int = 4,
    packet_ns: int = FRAME_NS,
    kid: bytes | None = None,
    extra: bytes = b"",
    key: Ed25519PrivateKey = KEY,
) -> bytes:
    """Build a frame by hand, bypassing the signer's checks, and sign it properly: only structure is wrong."""
    packets = [SILENCE] if packets is None else packets
    lengths = [len(p) for p in packets] if lengths is None else lengths
    count = len(packets) if count is None else count
    kid = key_id(key.public_key()) if kid is None else kid
    body = struct.pack(">2sBBIIQqI8s", magic, version, count, channel, stream, seq, ts_ns, packet_ns, kid)
    for n, p in zip(lengths, packets, strict=True):
        body += struct.pack(">H", n) + p
    body += extra
    return body + key.sign(body)


# --- round trip and fields ---------------------------------------------------------------------------------


def test_round_trip() -> None:
    frame = VERIFIER.verify(VALID)
    assert frame == Frame(
        channel=3,
        stream=0xDEADBEEF,
        seq=41,
        ts_ns=1_234_567_890_000,
        packet_ns=FRAME_NS,
        key_id=SIGNER.key_id,
        packets=(SILENCE, b"\x01\x02\x03\x04\x05"),
    )
    parsed, signature = parse_frame(VALID)
    assert parsed == frame
    assert len(signature) == 64
    assert pack_frame_body(parsed) + signature == VALID
    assert len(VALID) == 40 + 2 + 3 + 2 + 5 + 64


def test_header_layout() -> None:
    assert VALID[0:2] == b"CC"
    assert VALID[2] == 1
    assert VALID[3] == 2
    assert VALID[4:8] == (3).to_bytes(4, "big")
    assert VALID[8:12] == bytes.fromhex("deadbeef")
    assert VALID[12:20] == (41).to_bytes(8, "big")
    assert VALID[20:28] == (1_234_567_890_000).to_bytes(8, "big")
    assert VALID[28:32] == FRAME_NS.to_bytes(4, "big")
    assert VALID[32:40] == SIGNER.key_id == key_id(KEY.public_key())
    assert VALID[40:42] == b"\x00\x03" and VALID[42:45] == SILENCE
    assert VALID[45:47] == b"\x00\x05" and VALID[47:52] == b"\x01\x02\x03\x04\x05"
    KEY.public_key().verify(VALID[52:], VALID[:52])


def test_signing_is_deterministic() -> None:
    assert SIGNER.sign(**VALID_FIELDS) == VALID  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("channel", 0),
        ("channel", CHANNEL_MAX),
        ("stream", 0),
        ("stream", 2**32 - 1),
        ("seq", 0),
        ("seq", 2**64 - 2),  # two packets: the last has seq 2**64 - 1
        ("ts_ns", 0),
        ("ts_ns", -(2**63)),
        ("ts_ns", -1),
        ("ts_ns", 2**63 - 1 - 2 * FRAME_NS),
        ("packet_ns", 1),
        ("packet_ns", 2_500_000),
        ("packet_ns", 60_000_000),
        ("packet_ns", 120_000_000),
    ],
)
def test_each_field_round_trips(field: str, value: int) -> None:
    fields = dict(VALID_FIELDS, packet_ns=FRAME_NS)
    fields[field] = value
    frame = VERIFIER.verify(SIGNER.sign(**fields))  # type: ignore[arg-type]
    assert getattr(frame, field) == value
    for other in ("channel", "stream", "seq", "ts_ns", "packet_ns"):
        assert getattr(frame, other) == fields[other]


@pytest.mark.parametrize(
    "packets",
    [
        [b"\x00"],
        [SILENCE] * 2,
        [b"a", b"bb", b"ccc"],
        [bytes([i]) * 1275 for i in range(4)],
        [b"x" * 1275, b"y", b"z" * 600, b"w" * 2],
    ],
)
def test_multi_packet_frames(packets: list[bytes]) -> None:
    data = SIGNER.sign(channel=9, stream=5, seq=100, ts_ns=10_000, packets=packets, packet_ns=FRAME_NS)
    frame = VERIFIER.verify(data)
    assert frame.packets == tuple(packets)
    assert len(data) == 40 + sum(2 + len(p) for p in packets) + 64
    for i in range(len(packets)):
        assert frame.packet_seq(i) == 100 + i
        assert frame.packet_ts(i) == 10_000 + i * FRAME_NS
    assert frame.end_ns == 10_000 + len(packets) * FRAME_NS
    assert frame.duration_ns == len(packets) * FRAME_NS
    with pytest.raises(IndexError):
        frame.packet_seq(len(packets))
    with pytest.raises(IndexError):
        frame.packet_ts(-1)


def test_largest_frame_is_accepted() -> None:
    data = SIGNER.sign(channel=1, stream=1, seq=1, ts_ns=1, packets=[b"\x55" * 1275] * 4)
    assert len(data) == 40 + 4 * (2 + 1275) + 64
    assert VERIFIER.verify(data).packets == (b"\x55" * 1275,) * 4
    # The largest of all carries its channel's delay schedule (citycast.protocol.delay) too.
    scheduled = FrameSigner(KEY)
    scheduled.delays[1] = DelaySchedule(1, 80_000_000, 100_000_000, 2_000_000_000)
    data = scheduled.sign(channel=1, stream=1, seq=1, ts_ns=1, packets=[b"\x55" * 1275] * 4)
    assert len(data) == MAX_FRAME_SIZE == 40 + 24 + 4 * (2 + 1275) + 64
    assert VERIFIER.verify(data).delay == scheduled.delays[1]


def test_smallest_frame_is_accepted() -> None:
    data = SIGNER.sign(channel=1, stream=1, seq=1, ts_ns=1, packets=[b"\x00"])
    assert len(data) == MIN_FRAME_SIZE
    assert VERIFIER.verify(data).packets == (b"\x00",)


def test_accepts_bytearray_and_memoryview() -> None:
    assert VERIFIER.verify(bytearray(VALID)) == VALID_FRAME  # type: ignore[arg-type]
    assert VERIFIER.verify(memoryview(VALID)) == VALID_FRAME  # type: ignore[arg-type]
    with pytest.raises(MalformedFrame, match="expected bytes"):
        parse_frame("CC" * 60)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"packets": []}, "packet_count 0"),
        ({"packets": [SILENCE] * 5}, "packet_count 5"),
        ({"packets": [b""]}, "packet 0 is 0 bytes"),
        ({"packets": [b"x" * 1276]}, "1276 bytes"),
        ({"channel": -1}, "channel"),
        ({"channel": CHANNEL_MAX + 1}, "channel"),
        ({"channel": 2**32 - 1}, "channel"),
        ({"stream": 2**32}, "stream"),
        ({"seq": -1}, "seq"),
        ({"seq": 2**64 - 1, "packets": [SILENCE] * 2}, "seq"),
        ({"ts_ns": 2**63}, "ts_ns"),
        ({"ts_ns": 2**63 - FRAME_NS, "packets": [SILENCE]}, "ts_ns"),
        ({"packet_ns": 0}, "packet_ns"),
        ({"packet_ns": 120_000_001}, "packet_ns"),
    ],
)
def test_signer_refuses_bad_fields(change: dict[str, object], reason: str) -> None:
    fields = dict(VALID_FIELDS, **change)
    with pytest.raises(ValueError, match=reason):
        SIGNER.sign(**fields)  # type: ignore[arg-type]


# --- signature covers everything ---------------------------------------------------------------------------


@pytest.mark.parametrize("xor", [0x01, 0x80, 0xFF])
def test_any_single_byte_change_is_rejected(xor: int) -> None:
    for pos in range(len(VALID)):
        data = bytearray(VALID)
        data[pos] ^= xor
        with pytest.raises(FrameError):
            VERIFIER.verify(bytes(data))


def test_payload_and_header_changes_are_bad_signatures() -> None:
    """Changes that keep the structure valid are caught by the signature, in the header and in the payload."""
    for pos in [*range(4, 40), *range(42, 45), *range(47, 52)]:
        data = bytearray(VALID)
        data[pos] ^= 0x01
        if pos in (4, 5):  # the channel's high bytes: above CHANNEL_MAX, refused before the signature
            with pytest.raises(MalformedFrame, match="channel"):
                VERIFIER.verify(bytes(data))
        elif 32 <= pos < 40:  # key_id: now names a key nobody trusts
            with pytest.raises(UntrustedKey):
                VERIFIER.verify(bytes(data))
        else:
            with pytest.raises(BadSignature, match="bad signature"):
                VERIFIER.verify(bytes(data))


def test_signature_from_the_wrong_key_with_a_trusted_key_id() -> None:
    data = raw_frame(kid=SIGNER.key_id, key=OTHER_KEY)
    with pytest.raises(BadSignature):
        VERIFIER.verify(data)


def test_untrusted_key() -> None:
    data = FrameSigner(OTHER_KEY).sign(channel=1, stream=1, seq=1, ts_ns=1, packets=[SILENCE])
    with pytest.raises(UntrustedKey, match=key_id(OTHER_KEY.public_key()).hex()):
        VERIFIER.verify(data)
    with pytest.raises(UntrustedKey):
        FrameVerifier([]).verify(VALID)
    both = FrameVerifier([KEY.public_key(), OTHER_KEY.public_key()])
    assert both.verify(data).key_id == key_id(OTHER_KEY.public_key())
    assert both.verify(VALID) == VALID_FRAME
    assert both.key_ids == {SIGNER.key_id, key_id(OTHER_KEY.public_key())}


def test_swapped_signature_is_rejected() -> None:
    other = SIGNER.sign(**dict(VALID_FIELDS, seq=42))  # type: ignore[arg-type]
    with pytest.raises(BadSignature):
        VERIFIER.verify(VALID[:-64] + other[-64:])


# --- malformed ---------------------------------------------------------------------------------------------


def test_every_truncation_is_rejected() -> None:
    for n in range(len(VALID)):
        with pytest.raises(MalformedFrame):
            parse_frame(VALID[:n])
        with pytest.raises(MalformedFrame):
            VERIFIER.verify(VALID[:n])


@pytest.mark.parametrize("extra", [b"\x00", b"garbage", bytes(64)])
def test_trailing_garbage_is_rejected(extra: bytes) -> None:
    with pytest.raises(MalformedFrame):
        VERIFIER.verify(VALID + extra)
    # garbage inside the signed part, properly signed: still not a frame
    with pytest.raises(MalformedFrame, match="unexpected bytes"):
        VERIFIER.verify(raw_frame(extra=extra))


def test_oversized_is_rejected() -> None:
    biggest = SIGNER.sign(channel=1, stream=1, seq=1, ts_ns=1, packets=[b"\x55" * 1275] * 4)
    with pytest.raises(MalformedFrame, match="too long"):
        parse_frame(biggest + b"\x00")
    with pytest.raises(MalformedFrame, match="too long"):
        VERIFIER.verify(bytes(1 << 20))


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"packets": [b"", SILENCE]}, "packet 0 length 0"),
        ({"packets": [SILENCE, b""]}, "packet 1 length 0"),
        ({"packets": [b"x" * 1276]}, "length 1276"),
        ({"count": 0}, "packet_count 0"),
        ({"count": 5, "packets": [SILENCE] * 5}, "packet_count 5"),
        ({"count": 255}, "packet_count 255"),
        ({"count": 2}, "no length for packet 1"),
        ({"count": 1, "packets": [SILENCE, SILENCE]}, "unexpected bytes"),
        ({"lengths": [200]}, "overruns"),
        ({"lengths": [2]}, "1 unexpected bytes"),  # a length one short leaves a stray byte
        ({"magic": b"CD"}, "magic"),
        ({"version": 0}, "version 0"),
        ({"version": 2}, "version 2"),
        ({"packet_ns": 0}, "packet_ns 0"),
        ({"packet_ns": 2**32 - 1}, "packet_ns"),
        ({"seq": 2**64 - 1, "packets": [SILENCE] * 2}, "seq"),
        ({"ts_ns": 2**63 - 1}, "ts_ns"),
    ],
)
def test_structurally_bad_frames_are_malformed(kwargs: dict[str, object], reason: str | None) -> None:
    data = raw_frame(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(MalformedFrame, match=reason) as e:
        VERIFIER.verify(data)
    assert str(e.value)
    with pytest.raises(MalformedFrame):
        parse_frame(data)


def test_error_hierarchy() -> None:
    for cls in (MalformedFrame, UntrustedKey, BadSignature):
        assert issubclass(cls, FrameError)
    assert issubclass(FrameError, ValueError)


def test_colliding_trusted_key_ids_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import citycast.protocol.frame as frame_module

    monkeypatch.setattr(frame_module, "key_id", lambda pub: b"\x00" * 8)
    with pytest.raises(ValueError, match="share key_id"):
        FrameVerifier([KEY.public_key(), OTHER_KEY.public_key()])


# --- replay window -----------------------------------------------------------------------------------------


def test_replay_duplicate() -> None:
    w = ReplayWindow()
    assert w.check_and_mark(1, 10)
    assert not w.check_and_mark(1, 10)
    assert w.check_and_mark(1, 11)
    assert not w.check_and_mark(1, 11)
    assert not w.check_and_mark(1, 10)


def test_replay_out_of_order_inside_window() -> None:
    w = ReplayWindow()
    assert w.check_and_mark(1, 100)
    assert w.check_and_mark(1, 95)
    assert w.check_and_mark(1, 99)
    assert not w.check_and_mark(1, 95)
    assert w.check_and_mark(1, 101)
    assert not w.check_and_mark(1, 99)


def test_replay_old_beyond_window() -> None:
    w = ReplayWindow(width=4096)
    assert w.check_and_mark(1, 10_000)
    assert not w.check_and_mark(1, 10_000 - 4096)  # just outside
    assert w.check_and_mark(1, 10_000 - 4095)  # oldest inside
    assert not w.check_and_mark(1, 10_000 - 4095)
    assert not w.check_and_mark(1, 0)


def test_replay_far_ahead_jump() -> None:
    w = ReplayWindow(width=4096)
    for s in range(100):
        assert w.check_and_mark(1, s)
    assert w.check_and_mark(1, 1_000_000)
    assert not w.check_and_mark(1, 50)  # now far older than the window
    assert w.check_and_mark(1, 999_999)
    assert not w.check_and_mark(1, 1_000_000)
    assert w.check_and_mark(1, 2**64 - 1)
    assert not w.check_and_mark(1, 2**64 - 1)


def test_replay_jump_of_exactly_one_window() -> None:
    w = ReplayWindow(width=8)
    assert w.check_and_mark(1, 0)
    assert w.check_and_mark(1, 8)
    assert not w.check_and_mark(1, 0)
    assert w.check_and_mark(1, 1)
    assert not w.check_and_mark(1, 1)


def test_replay_streams_are_independent() -> None:
    w = ReplayWindow()
    assert w.check_and_mark(1, 5)
    assert w.check_and_mark(2, 5)
    assert w.check_and_mark(2, 1_000_000)
    assert w.check_and_mark(1, 6)  # stream 1's window did not move with stream 2's
    assert w.check_and_mark(1, 4)
    assert not w.check_and_mark(1, 5)
    assert not w.check_and_mark(2, 5)


def test_replay_lru_of_streams() -> None:
    w = ReplayWindow(max_streams=3)
    for stream in (1, 2, 3):
        assert w.check_and_mark(stream, 0)
    assert not w.check_and_mark(1, 0)  # touches stream 1: 2 is now least recently used
    assert w.check_and_mark(4, 0)
    assert len(w) == 3
    assert 2 not in w and 1 in w and 3 in w and 4 in w
    assert not w.check_and_mark(1, 0)
    assert not w.check_and_mark(3, 0)
    assert w.check_and_mark(2, 0)  # forgotten, so new again (freshness bounds what this lets through)


def test_replay_window_defaults_and_bad_arguments() -> None:
    w = ReplayWindow()
    assert w.width == 4096 and w.max_streams == 16
    for s in range(20):
        w.check_and_mark(s, 0)
    assert len(w) == 16
    with pytest.raises(ValueError):
        ReplayWindow(width=0)
    with pytest.raises(ValueError):
        ReplayWindow(max_streams=0)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 200), max_size=300), st.integers(1, 64))
def test_replay_matches_a_simple_model(seqs: list[int], width: int) -> None:
    w = ReplayWindow(width=width)
    seen: set[int] = set()
    top: int | None = None
    for s in seqs:
        expected = s not in seen and (top is None or s > top - width)
        assert w.check_and_mark(7, s) == expected
        if expected:
            seen.add(s)
            top = s if top is None else max(top, s)


# --- freshness ---------------------------------------------------------------------------------------------


def frame_at(ts_ns: int, n: int = 1) -> Frame:
    return Frame(1, 1, 1, ts_ns, FRAME_NS, b"\x00" * 8, (SILENCE,) * n)


def test_fresh_live_frame() -> None:
    now = 10**18
    assert is_fresh(frame_at(now), now, max_age_ns=10**9, max_future_ns=10**9)
    assert is_fresh(frame_at(now - 500_000_000), now, max_age_ns=10**9, max_future_ns=10**9)


def test_freshness_edges() -> None:
    now, age, fut = 10**18, 2 * 10**9, 10**9
    # stale once its last sample ends at or before now - max_age
    assert not is_fresh(frame_at(now - age - FRAME_NS), now, max_age_ns=age, max_future_ns=fut)
    assert is_fresh(frame_at(now - age - FRAME_NS + 1), now, max_age_ns=age, max_future_ns=fut)
    # the duration of every packet counts
    assert is_fresh(frame_at(now - age - FRAME_NS, n=2), now, max_age_ns=age, max_future_ns=fut)
    # future limit
    assert is_fresh(frame_at(now + fut), now, max_age_ns=age, max_future_ns=fut)
    assert not is_fresh(frame_at(now + fut + 1), now, max_age_ns=age, max_future_ns=fut)


def test_recorded_frame_resent_later_is_stale() -> None:
    frame = VERIFIER.verify(VALID)
    then = frame.ts_ns
    assert is_fresh(frame, then + 100_000_000, max_age_ns=10**9, max_future_ns=10**9)
    assert not is_fresh(frame, then + 3600 * 10**9, max_age_ns=10**9, max_future_ns=10**9)


# --- the document's example --------------------------------------------------------------------------------


def doc_example() -> tuple[bytes, dict[str, str], str]:
    text = DOC.read_text()
    frame_section = text.split("## Frame", 1)[1].split("\n## ", 1)[0]
    dump = re.search(r"```hex\n(.*?)```", frame_section, re.S)
    assert dump, "docs/protocol.md must hold a ```hex block with the example frame"
    data = b""
    for line in dump.group(1).splitlines():
        offset, _, hexbytes = line.partition("  ")
        assert int(offset, 16) == len(data)
        data += bytes.fromhex(hexbytes)
    decoded = frame_section.split("Decoded:", 1)[1]
    rows = dict(re.findall(r"^\| ([a-z_0-9 ]+?) \| (\S+) \|$", decoded, re.M))
    pub = re.search(r"`(ed25519:[A-Za-z0-9+/=]+)`", frame_section)
    assert pub
    return data, rows, pub.group(1)


def test_doc_example_decodes_as_stated() -> None:
    data, rows, pub_text = doc_example()
    pub = parse_public_key(pub_text)
    frame = FrameVerifier([pub]).verify(data)
    _, signature = parse_frame(data)
    assert int(rows["size"]) == len(data)
    assert bytes.fromhex(rows["magic"]) == data[:2] == b"CC"
    assert int(rows["version"]) == data[2] == 1
    assert int(rows["packet_count"]) == len(frame.packets)
    assert int(rows["channel"]) == frame.channel
    assert int(rows["stream"]) == frame.stream
    assert int(rows["seq"]) == frame.seq
    assert int(rows["ts_ns"]) == frame.ts_ns
    assert int(rows["packet_ns"]) == frame.packet_ns
    assert bytes.fromhex(rows["key_id"]) == frame.key_id == key_id(pub)
    for i, packet in enumerate(frame.packets):
        assert bytes.fromhex(rows[f"packet {i}"]) == packet
    head, tail = rows["signature"].split("...")
    assert signature.hex().startswith(head) and signature.hex().endswith(tail)


def test_doc_example_is_what_the_signer_produces() -> None:
    data, rows, pub_text = doc_example()
    assert pub_text == "ed25519:A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg="
    assert (
        FrameSigner(KEY).sign(
            channel=int(rows["channel"]),
            stream=int(rows["stream"]),
            seq=int(rows["seq"]),
            ts_ns=int(rows["ts_ns"]),
            packet_ns=int(rows["packet_ns"]),
            packets=[bytes.fromhex(rows[f"packet {i}"]) for i in range(int(rows["packet_count"]))],
        )
        == data
    )


# --- fuzz --------------------------------------------------------------------------------------------------


@st.composite
def mutations(draw: st.DrawFn) -> bytes:
    """A valid frame with a few random edits: byte changes, insertions, deletions, truncation, extension."""
    data = bytearray(VALID)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["set", "xor", "insert", "delete", "truncate", "extend", "splice"]))
        pos = draw(st.integers(0, len(data)))
        if op == "set" and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif op == "xor" and pos < len(data):
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
        elif op == "truncate":
            del data[pos:]
        elif op == "extend":
            data += draw(st.binary(min_size=1, max_size=64))
        elif op == "splice":  # overwrite a header field with an interesting value
            value = draw(st.sampled_from([b"\x00", b"\xff", b"\x00\x00", b"\xff\xff", b"\x04", b"\x05"]))
            data[pos : pos + len(value)] = value
    return bytes(data)


@st.composite
def forgeries(draw: st.DrawFn) -> bytes:
    """Well-formed frames naming the trusted key but carrying a made-up signature."""
    packets = draw(st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=4))
    frame = Frame(
        channel=draw(st.integers(0, CHANNEL_MAX)),
        stream=draw(st.integers(0, 2**32 - 1)),
        seq=draw(st.integers(0, 2**64 - 4)),
        ts_ns=draw(st.integers(-(2**62), 2**62)),
        packet_ns=draw(st.integers(1, 120_000_000)),
        key_id=draw(st.sampled_from([SIGNER.key_id, bytes(8)])),
        packets=tuple(packets),
    )
    signature = draw(st.one_of(st.binary(min_size=64, max_size=64), st.just(VALID[-64:])))
    return pack_frame_body(frame) + signature


inputs = st.one_of(
    st.binary(max_size=200),
    st.binary(min_size=MAX_FRAME_SIZE - 4, max_size=MAX_FRAME_SIZE + 4),
    st.binary(max_size=160).map(lambda b: b"CC\x01" + b),
    mutations(),
    mutations(),
    forgeries(),
)


@settings(
    max_examples=10_000,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(inputs)
def test_fuzz_only_frame_errors_and_only_the_valid_frame_accepted(data: bytes) -> None:
    try:
        frame, signature = parse_frame(data)
    except MalformedFrame as e:
        assert str(e)
        parsed = False
    else:
        parsed = True
        assert pack_frame_body(frame) + signature == data  # one frame, one encoding
        assert 1 <= len(frame.packets) <= 4
    try:
        accepted = VERIFIER.verify(data)
    except FrameError as e:
        event(type(e).__name__)
        assert str(e)
        assert parsed or isinstance(e, MalformedFrame)
    else:
        assert data == VALID
        assert accepted == VALID_FRAME
