"""The credentials renewal answer on `<prefix>.creds-renew.<site>` (docs/protocol.md "Credentials").

A site asks with an empty body; the hub answers on the site's own inbox with one JSON object:

    {"v":1,"jwt":"eyJ…"}          a fresh user JWT for the site's own key
    {"v":1,"error":"a sentence"}  no renewal, and why

The hub writes answers with `RenewalAnswer.encode`; a site reads them with `decode_renewal`, which raises
`RenewalAnswerError` saying what is wrong with anything else. Whether the JWT itself may be taken (signature,
subject, issuer, expiry) is the site's business (`citycast.site.credentials`): this module is the envelope.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

__all__ = ["MAX_RENEWAL_BYTES", "RENEWAL_VERSION", "RenewalAnswer", "RenewalAnswerError", "decode_renewal"]

RENEWAL_VERSION = 1
MAX_RENEWAL_BYTES = 8192  # a site's payload limit: nothing bigger can reach it anyway
MAX_ERROR_CHARS = 200  # what a site repeats of the hub's reason in its log


class RenewalAnswerError(ValueError):
    """Bytes on a site's inbox that are not a renewal answer, or a refusal. ``str(e)`` says why."""


@dataclass(frozen=True, slots=True)
class RenewalAnswer:
    """Exactly one of `jwt` (a renewal) and `error` (a refusal)."""

    jwt: str | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        if (self.jwt is None) == (self.error is None):
            raise ValueError("a renewal answer carries either a JWT or an error")

    def encode(self) -> bytes:
        body: dict[str, object] = {"v": RENEWAL_VERSION}
        if self.jwt is not None:
            body["jwt"] = self.jwt
        else:
            body["error"] = self.error
        return json.dumps(body, separators=(",", ":")).encode()


def decode_renewal(data: bytes) -> RenewalAnswer:
    """The answer in `data`; RenewalAnswerError if it is not one (too big, not JSON, wrong version, no JWT)."""
    if len(data) > MAX_RENEWAL_BYTES:
        raise RenewalAnswerError(f"the answer is {len(data)} bytes, more than {MAX_RENEWAL_BYTES}")
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RenewalAnswerError("the answer is not JSON") from e
    if not isinstance(obj, dict) or obj.get("v") != RENEWAL_VERSION:
        raise RenewalAnswerError(f"not a citycast renewal v{RENEWAL_VERSION} answer")
    if "error" in obj:
        return RenewalAnswer(error=str(obj["error"])[:MAX_ERROR_CHARS])
    token = obj.get("jwt")
    if not isinstance(token, str) or not token:
        raise RenewalAnswerError("the answer carries no JWT")
    return RenewalAnswer(jwt=token)
