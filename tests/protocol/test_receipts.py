"""Proof-of-play receipts: the document's example signed again byte for byte, its field table, and refusals."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tests.protocol.protocol_doc import blocks, section

from citycast.protocol.receipts import (
    MAX_RECEIPT_BYTES,
    BadReceiptSignature,
    MalformedReceipt,
    PlayReceipt,
    ReceiptAck,
    ReceiptError,
    decode_ack,
    parse_receipt,
    sign_receipt,
    verify_receipt,
)

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64)))


def documented() -> bytes:
    text = section("Receipts")
    (body,) = blocks(text, "json receipt-body")
    (sig,) = blocks(text, "hex receipt-signature")
    return body.strip().encode() + bytes.fromhex(sig)


def test_the_documented_receipt_is_what_the_code_signs_and_verifies() -> None:
    data = documented()
    receipt = verify_receipt(data, KEY.public_key())
    assert (receipt.site, receipt.channel, receipt.stream, receipt.final) == ("orangi-3", 1004, 0x1234ABCD, True)
    assert receipt.played_s == pytest.approx(31.02)
    assert sign_receipt(KEY, receipt) == data  # Ed25519 is deterministic: the same key and fields, the same bytes


def test_the_field_table_is_every_field() -> None:
    text = section("Receipts")
    table = text.split("| field | meaning |", 1)[1].split("\n\n", 1)[0]
    named = set()
    for row in re.findall(r"^\| ([^|]+) \|", table, re.M):
        named.update(re.findall(r"`([a-z_]+)`", row))
    assert named == {f.name for f in dataclasses.fields(PlayReceipt)}
    assert f"At most {MAX_RECEIPT_BYTES} bytes" in text


def test_another_key_or_any_altered_byte_is_refused() -> None:
    data = documented()
    receipt = verify_receipt(data, KEY.public_key())
    with pytest.raises(BadReceiptSignature):
        verify_receipt(sign_receipt(OTHER, receipt), KEY.public_key())
    # re-aimed at another address (channel), or made longer: the body no longer matches its signature
    for field, value in (("channel", 1005), ("last_ns", receipt.last_ns + 10**9), ("site", "orangi-4")):
        forged = data.replace(
            f'"{field}":{json.dumps(getattr(receipt, field))}'.encode(), f'"{field}":{json.dumps(value)}'.encode()
        )
        assert forged != data
        with pytest.raises(BadReceiptSignature):
            verify_receipt(forged, KEY.public_key())
    for i in (0, len(data) // 2, len(data) - 1):
        flipped = bytearray(data)
        flipped[i] ^= 1
        with pytest.raises(ReceiptError):
            verify_receipt(bytes(flipped), KEY.public_key())


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "a JSON body and a 64-byte signature"),
        (b"not json" + b"\x00" * 64, "not JSON"),
        (b"[1,2]" + b"\x00" * 64, "not a JSON object"),
        (b'{"site":"x"}' + b"\x00" * 64, "fields missing"),
        (b"x" * (MAX_RECEIPT_BYTES + 1), f"at most {MAX_RECEIPT_BYTES} bytes"),
    ],
)
def test_what_is_no_receipt_is_refused_saying_why(body: bytes, reason: str) -> None:
    with pytest.raises(MalformedReceipt, match=reason):
        parse_receipt(body)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"first_ns": 5, "last_ns": 4}, "first_ns <= last_ns"),
        ({"channel": 70000}, "channel must be"),
        ({"stream": -1}, "stream must be a u32"),
        ({"final": 1}, "final must be"),
        ({"fallback_s": float("nan")}, "finite"),
        ({"concealed": "3"}, "concealed must be an integer"),
        ({"v": 2}, "receipt v1"),
        ({"extra": 1}, "unknown"),
    ],
)
def test_a_field_out_of_range_is_refused(change: dict[str, object], reason: str) -> None:
    obj = json.loads(documented()[:-64])
    obj.update(change)
    body = json.dumps(obj).encode() if "nan" not in repr(change) else json.dumps(obj, allow_nan=True).encode()
    with pytest.raises(MalformedReceipt, match=reason):
        parse_receipt(body + KEY.sign(body))


def test_answers_round_trip_and_anything_else_is_refused() -> None:
    assert ReceiptAck(ok=True).encode() == b'{"v":1,"ok":true}'
    refused = ReceiptAck(ok=False, error="bad_signature: the signature is not the site's")
    assert decode_ack(refused.encode()) == refused
    for junk in (b"", b"[]", b'{"v":1}', b'{"v":2,"ok":true}', b"x" * 600):
        with pytest.raises(ReceiptError):
            decode_ack(junk)
