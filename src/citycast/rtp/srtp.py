"""SRTP keyed by SDES (RFC 4568): the ``a=crypto`` attribute and the protect/unprotect contexts (libsrtp, through
pylibsrtp).

Each side announces the key it *sends* with: we decrypt the caller's packets with the key of the offer's
``a=crypto`` we accept, and answer with the same tag and suite and a fresh key of our own, which protects what we
send (RFC 4568 §6.1). Suites: AES_CM_128_HMAC_SHA1_80 and AES_CM_128_HMAC_SHA1_32 (RTCP keeps the 80-bit tag,
§6.2). Key lifetimes are accepted and ignored (a call re-keys long before 2^31 packets); an MKI or a session
parameter (UNENCRYPTED_SRTP…) makes that crypto line unusable, and another one of the offer may be taken.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from dataclasses import dataclass

import pylibsrtp

KEY_SALT_LEN = 30  # 128-bit master key + 112-bit master salt
SUITES: dict[str, int] = {
    "AES_CM_128_HMAC_SHA1_80": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    "AES_CM_128_HMAC_SHA1_32": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
}
_CRYPTO_RE = re.compile(r"([0-9]{1,9})[ \t]+([A-Za-z0-9_]+)[ \t]+inline:([A-Za-z0-9+/=]+)((?:\|[^ \t|]+)*)(.*)")


class SrtpError(ValueError):
    """An ``a=crypto`` line we cannot use, or a packet that fails SRTP authentication."""


@dataclass(frozen=True, slots=True)
class SdesCrypto:
    tag: int
    suite: str
    key: bytes  # master key and salt, KEY_SALT_LEN bytes

    def attribute(self) -> str:
        """The value of an ``a=crypto:`` line announcing this key."""
        return f"{self.tag} {self.suite} inline:{base64.b64encode(self.key).decode()}"


def parse_crypto(value: str) -> SdesCrypto:
    """One ``a=crypto`` value (after the colon); raises `SrtpError` saying why it cannot be used."""
    m = _CRYPTO_RE.fullmatch(value.strip())
    if m is None:
        raise SrtpError(f"malformed a=crypto {value[:80]!r}")
    tag, suite, key_text, params, session = int(m.group(1)), m.group(2), m.group(3), m.group(4), m.group(5)
    if suite not in SUITES:
        raise SrtpError(f"crypto suite {suite[:40]} is not supported")
    if session.strip():
        raise SrtpError(f"session parameters {session.strip()[:40]!r} are not supported")
    for p in params.split("|")[1:]:
        if ":" in p:
            raise SrtpError("an MKI is not supported")
    try:
        key = base64.b64decode(key_text, validate=True)
    except (binascii.Error, ValueError):
        raise SrtpError("a=crypto key is not base64") from None
    if len(key) != KEY_SALT_LEN:
        raise SrtpError(f"a=crypto key is {len(key)} bytes, want {KEY_SALT_LEN}")
    return SdesCrypto(tag, suite, key)


def answer_crypto(offer: SdesCrypto) -> SdesCrypto:
    """Our answer to `offer`: its tag and suite, a fresh random key."""
    return SdesCrypto(offer.tag, offer.suite, secrets.token_bytes(KEY_SALT_LEN))


class SrtpContext:
    """Both directions of one call: `protect*` with our key, `unprotect*` with the peer's. Unprotect raises
    `SrtpError` for a packet that fails authentication or is a replay (libsrtp's replay window)."""

    def __init__(self, local: SdesCrypto, remote: SdesCrypto) -> None:
        if local.suite != remote.suite:
            raise SrtpError(f"suites differ: {local.suite} / {remote.suite}")
        profile = SUITES[local.suite]
        self.local, self.remote = local, remote
        self._tx = pylibsrtp.Session(
            pylibsrtp.Policy(key=local.key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile)
        )
        self._rx = pylibsrtp.Session(
            pylibsrtp.Policy(key=remote.key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND, srtp_profile=profile)
        )

    def protect(self, rtp: bytes) -> bytes:
        return bytes(self._tx.protect(rtp))

    def protect_rtcp(self, rtcp: bytes) -> bytes:
        return bytes(self._tx.protect_rtcp(rtcp))

    def unprotect(self, srtp: bytes) -> bytes:
        try:
            return bytes(self._rx.unprotect(srtp))
        except pylibsrtp.Error as e:
            raise SrtpError(f"SRTP: {e}") from None

    def unprotect_rtcp(self, srtcp: bytes) -> bytes:
        try:
            return bytes(self._rx.unprotect_rtcp(srtcp))
        except pylibsrtp.Error as e:
            raise SrtpError(f"SRTCP: {e}") from None
