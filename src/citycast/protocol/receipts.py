"""Proof of play: what a site swears it played, on `<prefix>.receipts.<site>` (docs/protocol.md "Receipts").

A receipt is one JSON object (the body) followed by the 64-byte Ed25519 signature of exactly those bytes, made
with the site's own key (the one inside its NATS seed, whose public half the hub holds from enrolment): like a
frame, the signature covers the bytes as sent, so nothing has to be re-serialised to check it. The hub answers
on the site's inbox with `ReceiptAck`; a site keeps a receipt until it is acknowledged.

A receipt names the stream it played (channel, stream id) and the span of stream time it played, stamped as the
frames were (broadcast-clock ns of the first sample played and of the end of the last): the hub gives each address
a channel of its own while it is on air, so channel and time name the address, and since they are signed a
receipt cannot be re-aimed at another address. Counters cover the span, from its first sample to the receipt.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields

from citycast.media.keys import PrivateKey, PublicKey, verify
from citycast.protocol.channel import CHANNEL_MAX

__all__ = [
    "MAX_RECEIPT_BYTES",
    "RECEIPT_VERSION",
    "SIGNATURE_SIZE",
    "BadReceiptSignature",
    "MalformedReceipt",
    "PlayReceipt",
    "ReceiptAck",
    "ReceiptError",
    "decode_ack",
    "parse_receipt",
    "sign_receipt",
    "verify_receipt",
]

RECEIPT_VERSION = 1
SIGNATURE_SIZE = 64
MAX_RECEIPT_BYTES = 1024  # a receipt is ~400 bytes; anything bigger is refused before it is parsed
MAX_ACK_BYTES = 512
_I64 = 2**63 - 1


class ReceiptError(ValueError):
    """Bytes on a receipts subject that are not a receipt the hub may take. ``str(e)`` says why."""


class MalformedReceipt(ReceiptError):
    pass


class BadReceiptSignature(ReceiptError):
    pass


@dataclass(frozen=True, slots=True)
class PlayReceipt:
    site: str
    channel: int
    stream: int  # the frames' stream id (u32, random per broadcast)
    seq: int  # 0, 1, 2 … per span (a span: one stream played without a long gap); each covers it from its start
    final: bool  # the span is over (the stream ended, stopped, or the site moved to another channel)
    first_ns: int  # stream time of the first sample played
    last_ns: int  # stream time of the end of the last sample played
    concealed: int  # packets replaced by loss concealment within the span
    fallback_s: float  # seconds between first and last sample the site played fallback: the stream had stopped
    sync_error_ms: float  # the worst sync error the site reported over the span
    level_rms_dbfs: float  # what the loudspeaker played over the span (after volume and mute)
    level_peak_dbfs: float
    sent_ns: int  # broadcast time when the receipt was written (0 if the site had no clock)
    v: int = RECEIPT_VERSION

    def __post_init__(self) -> None:
        problem = _check(self)
        if problem:
            raise MalformedReceipt(problem)

    @property
    def played_s(self) -> float:
        return (self.last_ns - self.first_ns) / 1e9

    def body(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()


def _check(r: PlayReceipt) -> str | None:
    ints = ("channel", "stream", "seq", "first_ns", "last_ns", "concealed", "sent_ns", "v")
    for name in ints:
        value = getattr(r, name)
        if type(value) is not int:
            return f"{name} must be an integer, got {type(value).__name__}"
    if not isinstance(r.site, str) or not 1 <= len(r.site) <= 64:
        return "site must be a name of 1 to 64 characters"
    if type(r.final) is not bool:
        return "final must be true or false"
    for name in ("fallback_s", "sync_error_ms", "level_rms_dbfs", "level_peak_dbfs"):
        value = getattr(r, name)
        if type(value) not in (int, float) or not math.isfinite(value):
            return f"{name} must be a finite number"
    if r.v != RECEIPT_VERSION:
        return f"not a citycast receipt v{RECEIPT_VERSION}"
    if not 0 <= r.channel <= CHANNEL_MAX:
        return f"channel must be 0..{CHANNEL_MAX}"
    if not 0 <= r.stream < 2**32:
        return "stream must be a u32"
    if not (0 <= r.seq < 2**32 and 0 <= r.concealed < 2**32):
        return "seq and concealed must be 0..2^32-1"
    if not (0 <= r.first_ns <= r.last_ns <= _I64 and 0 <= r.sent_ns <= _I64):
        return "first_ns <= last_ns, both broadcast-clock ns"
    if r.fallback_s < 0 or r.sync_error_ms < 0:
        return "fallback_s and sync_error_ms cannot be negative"
    return None


def sign_receipt(key: PrivateKey, receipt: PlayReceipt) -> bytes:
    """The bytes a site publishes: the body, then its signature."""
    body = receipt.body()
    return body + key.sign(body)


def parse_receipt(data: bytes) -> tuple[PlayReceipt, bytes, bytes]:
    """(receipt, body, signature) from the bytes on the bus, signature not checked; MalformedReceipt saying why."""
    if len(data) > MAX_RECEIPT_BYTES:
        raise MalformedReceipt(f"a receipt is at most {MAX_RECEIPT_BYTES} bytes, got {len(data)}")
    if len(data) <= SIGNATURE_SIZE + 2:
        raise MalformedReceipt(f"a receipt is a JSON body and a {SIGNATURE_SIZE}-byte signature")
    body, signature = data[:-SIGNATURE_SIZE], data[-SIGNATURE_SIZE:]
    try:
        obj = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MalformedReceipt(f"the body is not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise MalformedReceipt("the body is not a JSON object")
    names = {f.name for f in fields(PlayReceipt)}
    if set(obj) != names:
        missing, extra = sorted(names - set(obj)), sorted(set(obj) - names)
        raise MalformedReceipt(f"fields missing {missing}, unknown {extra!r:.80}")
    try:
        return PlayReceipt(**obj), body, signature
    except TypeError as e:
        raise MalformedReceipt(str(e)) from None


def verify_receipt(data: bytes, key: PublicKey) -> PlayReceipt:
    """The receipt, only if `key` signed exactly these bytes."""
    receipt, body, signature = parse_receipt(data)
    try:
        verify(key, signature, body)
    except ValueError:
        raise BadReceiptSignature("the signature is not the site's") from None
    return receipt


@dataclass(frozen=True, slots=True)
class ReceiptAck:
    """The hub's answer: `ok` (stored now or before), else `error` says why the receipt was refused."""

    ok: bool
    error: str | None = None

    def encode(self) -> bytes:
        body: dict[str, object] = {"v": RECEIPT_VERSION, "ok": self.ok}
        if self.error is not None:
            body["error"] = self.error[:200]
        return json.dumps(body, separators=(",", ":")).encode()


def decode_ack(data: bytes) -> ReceiptAck:
    if len(data) > MAX_ACK_BYTES:
        raise ReceiptError(f"an answer is at most {MAX_ACK_BYTES} bytes")
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ReceiptError("the answer is not JSON") from None
    if not isinstance(obj, dict) or obj.get("v") != RECEIPT_VERSION or type(obj.get("ok")) is not bool:
        raise ReceiptError(f"not a citycast receipt answer v{RECEIPT_VERSION}")
    error = obj.get("error")
    return ReceiptAck(obj["ok"], str(error)[:200] if error is not None else None)
