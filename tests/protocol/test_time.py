"""Time service messages: the document's example, sizes, the echo, and what is not a time message."""

from __future__ import annotations

import re
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.protocol.protocol_doc import blocks, section

from citycast.protocol.time import REPLY_SIZE, REQUEST_SIZE, TimeMessageError, TimeReply, TimeRequest

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


@given(I64, I64, I64)
def test_round_trip_and_the_wire_bytes_are_big_endian_i64(t1: int, t2: int, t3: int) -> None:
    request = TimeRequest(t1)
    assert request.encode() == struct.pack(">q", t1)
    assert TimeRequest.decode(request.encode()) == request
    reply = request.reply(t2, t3)
    assert reply.encode() == struct.pack(">qq", t2, t3) + request.encode() == request.reply_bytes(t2, t3)
    assert TimeReply.decode(reply.encode()) == reply


@pytest.mark.parametrize("size", [0, 1, 7, 9, 16, 24, 4096])
def test_a_request_of_another_size_is_refused(size: int) -> None:
    with pytest.raises(TimeMessageError, match=f"a time request is 8 bytes, got {size}"):
        TimeRequest.decode(bytes(size))


@pytest.mark.parametrize("size", [0, 8, 16, 23, 25, 32])
def test_a_reply_of_another_size_is_refused(size: int) -> None:
    with pytest.raises(TimeMessageError, match=f"a time reply is 24 bytes, got {size}"):
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
