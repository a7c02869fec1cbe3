"""Time service messages: the document's example, sizes, the echo, and what is not a time message."""

from __future__ import annotations

import re
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.protocol.protocol_doc import blocks, section

from citycast.protocol.time import (
    CORRECTED_REPLY_SIZE,
    CORRECTED_REQUEST_SIZE,
    REPLY_SIZE,
    REQUEST_SIZE,
    TimeMessageError,
    TimeReply,
    TimeRequest,
)

I64 = st.integers(-(2**63), 2**63 - 1)


def doc_example() -> tuple[bytes, bytes, dict[str, int]]:
    text = section("Time service")
    (request,) = blocks(text, "hex time-request")
    (reply,) = blocks(text, "hex time-reply")
    stamps = {k: int(v) for k, v in re.findall(r"`(t[123])` =\s+(\d+)", text)}
    return bytes.fromhex(request), bytes.fromhex(reply), stamps


def test_the_documented_example_is_what_the_code_writes_and_reads() -> None:
    request_bytes, reply_bytes, stamps = doc_example()
    assert set(stamps) == {"t1", "t2", "t3"}
    request = TimeRequest.decode(request_bytes)
    assert request == TimeRequest(stamps["t1"]) and request.encode() == request_bytes
    reply = TimeReply.decode(reply_bytes)
    assert reply == TimeReply(t1=stamps["t1"], t2=stamps["t2"], t3=stamps["t3"])
    assert request.reply(stamps["t2"], stamps["t3"]).encode() == reply_bytes
    assert request.reply_bytes(stamps["t2"], stamps["t3"]) == reply_bytes
    assert reply_bytes[16:] == request_bytes  # the request's bytes, echoed


def test_the_documented_layout_and_sizes() -> None:
    text = section("Time service")
    rows = re.findall(r"^\| (request|reply) \| (\d+) \| (\d+) \| `(t\d)` \|", text, re.M)
    assert rows == [
        ("request", "0", "8", "t1"),
        ("reply", "0", "8", "t2"),
        ("reply", "8", "8", "t3"),
        ("reply", "16", "8", "t1"),
    ]
    assert f"A request is {REQUEST_SIZE} bytes, a reply {REPLY_SIZE}." in text
    assert (REQUEST_SIZE, REPLY_SIZE) == (8, 24)
    corrected = re.findall(r"^\| (corrected request|corrected reply) \| (\d+) \| (\d+) \| `(\w+)` \|", text, re.M)
    assert corrected == [
        ("corrected request", "0", "8", "t1"),
        ("corrected request", "8", "8", "flags"),
        ("corrected reply", "0", "8", "t2"),
        ("corrected reply", "8", "8", "t3"),
        ("corrected reply", "16", "8", "t1"),
        ("corrected reply", "24", "8", "correction"),
    ]
    assert f"A corrected request is {CORRECTED_REQUEST_SIZE} bytes, its reply {CORRECTED_REPLY_SIZE}." in text
    assert (CORRECTED_REQUEST_SIZE, CORRECTED_REPLY_SIZE) == (16, 32)


@given(I64, I64, I64)
def test_round_trip_and_the_wire_bytes_are_big_endian_i64(t1: int, t2: int, t3: int) -> None:
    request = TimeRequest(t1)
    assert request.encode() == struct.pack(">q", t1)
    assert TimeRequest.decode(request.encode()) == request
    reply = request.reply(t2, t3)
    assert reply.encode() == struct.pack(">qq", t2, t3) + request.encode() == request.reply_bytes(t2, t3)
    assert TimeReply.decode(reply.encode()) == reply


@given(I64, I64, I64, I64)
def test_a_corrected_request_and_its_reply_round_trip(t1: int, t2: int, t3: int, correction: int) -> None:
    request = TimeRequest(t1, wants_correction=True)
    assert request.encode() == struct.pack(">qq", t1, 1)
    assert TimeRequest.decode(request.encode()) == request
    reply = request.reply(t2, t3, correction)
    assert reply.encode() == struct.pack(">qqqq", t2, t3, t1, correction) == request.reply_bytes(t2, t3, correction)
    assert TimeReply.decode(reply.encode()) == reply and reply.correction == correction
    # a plain request gets the plain reply, whatever correction the responder has
    assert TimeRequest(t1).reply(t2, t3, correction).correction is None
    assert len(TimeRequest(t1).reply_bytes(t2, t3, correction)) == REPLY_SIZE


@pytest.mark.parametrize("flags", [0, 2, 3, -1])
def test_a_corrected_request_with_other_flags_is_refused(flags: int) -> None:
    with pytest.raises(TimeMessageError, match=f"flags 1, got {flags}"):
        TimeRequest.decode(struct.pack(">qq", 5, flags))


@pytest.mark.parametrize("size", [0, 1, 7, 9, 15, 17, 24, 4096])
def test_a_request_of_another_size_is_refused(size: int) -> None:
    with pytest.raises(TimeMessageError, match=f"a time request is 8 or 16 bytes, got {size}"):
        TimeRequest.decode(bytes(size))


@pytest.mark.parametrize("size", [0, 8, 16, 23, 25, 31, 33, 40])
def test_a_reply_of_another_size_is_refused(size: int) -> None:
    with pytest.raises(TimeMessageError, match=f"a time reply is 24 or 32 bytes, got {size}"):
        TimeReply.decode(bytes(size))


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 1.5, True, "1"])
def test_a_stamp_that_is_no_i64_is_refused_before_it_is_sent(value: object) -> None:
    with pytest.raises(TimeMessageError, match="i64"):
        TimeRequest(value)  # type: ignore[arg-type]
    with pytest.raises(TimeMessageError, match="i64"):
        TimeRequest(0).reply(value, 0)  # type: ignore[arg-type]
    with pytest.raises(TimeMessageError, match="i64"):
        TimeReply(t1=0, t2=0, t3=value)  # type: ignore[arg-type]
    if isinstance(value, bool):  # struct packs a bool as 0/1; only the dataclasses refuse it
        return
    with pytest.raises(TimeMessageError, match="i64"):
        TimeRequest(0).reply_bytes(0, value)
