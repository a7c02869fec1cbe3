"""docs/protocol.md "Delay schedule": the example schedule and frame byte for byte, the field table against the
code, and the ways a stranger might try to change a channel's D (all refused)."""

from __future__ import annotations

import re
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tests.protocol.protocol_doc import blocks, first_cells, section

from citycast.protocol import delay as delay_module
from citycast.protocol.delay import DELAY_SCHEDULE_SIZE, DelaySchedule
from citycast.protocol.frame import (
    DELAY_FLAG,
    HEADER_SIZE,
    BadSignature,
    FrameSigner,
    FrameVerifier,
    MalformedFrame,
    UntrustedKey,
)

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
EXAMPLE = DelaySchedule(
    from_ts_ns=1_700_000_005_000_000_000, old_delay_ns=490_000_000, new_delay_ns=550_000_000, ramp_ns=6_000_000_000
)


def hex_bytes(text: str) -> bytes:
    """A hex dump with or without offsets at the start of each line."""
    return bytes.fromhex(" ".join(re.sub(r"^[0-9a-f]{4}  ", "", line) for line in text.strip().splitlines()))


def signed_example() -> bytes:
    signer = FrameSigner(KEY)
    signer.delays[7] = EXAMPLE
    return signer.sign(
        channel=7, stream=0x1234ABCD, seq=1000, ts_ns=1_700_000_000_000_000_000, packets=[b"\xf8\xff\xfe"]
    )


def test_the_documented_schedule_is_what_the_code_writes_and_reads() -> None:
    (text,) = blocks(section("Delay schedule"), "hex delay-schedule")
    data = hex_bytes(text)
    assert DelaySchedule.unpack(data) == EXAMPLE
    assert EXAMPLE.pack() == data
    assert len(data) == DELAY_SCHEDULE_SIZE == 24


def test_the_documented_frame_is_signed_byte_for_byte_and_carries_the_schedule() -> None:
    (text,) = blocks(section("Delay schedule"), "hex delay-frame")
    data = hex_bytes(text)
    assert signed_example() == data
    assert data[3] == DELAY_FLAG | 1
    frame = FrameVerifier([KEY.public_key()]).verify(data)
    assert frame.delay == EXAMPLE and frame.packets == (b"\xf8\xff\xfe",)
    assert data[HEADER_SIZE : HEADER_SIZE + DELAY_SCHEDULE_SIZE] == EXAMPLE.pack()


def test_the_field_table_is_the_struct() -> None:
    text = section("Delay schedule")
    fields = [c for c in first_cells(text) if c.isdigit()]
    assert fields == ["0", "8", "12", "20"]
    rows = re.findall(r"^\| (\d+) \| (\d+) \| (\w+) \|", text, re.M)
    assert [r[2] for r in rows] == ["from_ts_ns", "old_delay_ns", "new_delay_ns", "ramp_ns"]
    assert sum(int(r[1]) for r in rows) == DELAY_SCHEDULE_SIZE
    assert delay_module._SCHEDULE.format == ">qIIQ"
    assert [int(r[0]) for r in rows] == [0, 8, 12, 20]


def test_a_schedule_added_to_a_genuine_frame_by_a_stranger_is_refused() -> None:
    """Someone on the bus takes a genuine frame and puts a schedule of their own into it (D = 4 s): the signature
    covers it, so the frame is refused and D stays."""
    verifier = FrameVerifier([KEY.public_key()])
    genuine = FrameSigner(KEY).sign(channel=7, stream=1, seq=1, ts_ns=10**18, packets=[b"\xf8\xff\xfe"])
    evil = DelaySchedule(10**18, 490_000_000, 4_000_000_000, 100_000_000_000).pack()
    body, sig = genuine[:-64], genuine[-64:]
    forged = body[:3] + bytes([body[3] | DELAY_FLAG]) + body[4:HEADER_SIZE] + evil + body[HEADER_SIZE:] + sig
    with pytest.raises(BadSignature):
        verifier.verify(forged)
    # altering the schedule of a scheduled frame: also refused
    data = bytearray(signed_example())
    struct.pack_into(">I", data, HEADER_SIZE + 12, 520_000_000)  # a valid schedule, just not the signed one
    with pytest.raises(BadSignature):
        verifier.verify(bytes(data))
    # dropping the schedule (flag cleared, bytes removed): also refused
    data = signed_example()
    stripped = data[:3] + bytes([1]) + data[4:HEADER_SIZE] + data[HEADER_SIZE + DELAY_SCHEDULE_SIZE :]
    with pytest.raises(BadSignature):
        verifier.verify(stripped)


def test_a_schedule_signed_by_another_key_is_refused() -> None:
    stranger = FrameSigner(Ed25519PrivateKey.generate())
    stranger.delays[7] = DelaySchedule(10**18, 490_000_000, 80_000_000, 100_000_000_000)
    data = stranger.sign(channel=7, stream=1, seq=1, ts_ns=10**18, packets=[b"\xf8\xff\xfe"])
    with pytest.raises(UntrustedKey):
        FrameVerifier([KEY.public_key()]).verify(data)


@pytest.mark.parametrize(
    ("schedule", "why"),
    [
        (DelaySchedule(0, 80_000_000, 180_000_000, 1_000_000_000), "needs a ramp"),  # 10 %: a pitch jump
        (DelaySchedule(0, 80_000_000, 4_000_000_001, 10**11), "new_delay_ns"),
        (DelaySchedule(0, 80_000_000, 80_000_000, 600_000_000_001), "ramp_ns"),
    ],
)
def test_a_schedule_no_site_may_follow_is_malformed_even_when_signed(schedule: DelaySchedule, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        schedule.pack()
    signer = FrameSigner(KEY)
    data = bytearray(signed_example())
    data[HEADER_SIZE : HEADER_SIZE + DELAY_SCHEDULE_SIZE] = struct.pack(
        ">qIIQ", schedule.from_ts_ns, schedule.old_delay_ns, schedule.new_delay_ns, schedule.ramp_ns
    )
    body = bytes(data[:-64])
    resigned = body + KEY.sign(body)
    assert signer.key_id == FrameVerifier([KEY.public_key()]).verify(signed_example()).key_id
    with pytest.raises(MalformedFrame, match=why):
        FrameVerifier([KEY.public_key()]).verify(resigned)


def test_a_frame_announcing_a_schedule_it_has_no_room_for_is_malformed() -> None:
    data = FrameSigner(KEY).sign(channel=7, stream=1, seq=1, ts_ns=10**18, packets=[b"\xf8\xff\xfe"])
    body = data[:3] + bytes([DELAY_FLAG | 1]) + data[4:-64]
    with pytest.raises(MalformedFrame):
        FrameVerifier([KEY.public_key()]).verify(body + KEY.sign(body))
