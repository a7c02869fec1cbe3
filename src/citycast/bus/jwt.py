"""NATS nkeys and JWTs (decentralised auth, JWT schema v2), encoded by hand.

There is no maintained Python library for NATS JWTs (the reference is the Go `nats-io/jwt` module; the `nkeys`
package does keys and signatures only), and the format is small: a JWT is
``base64url(header) "." base64url(claims) "." base64url(ed25519 signature of the first two parts)``, no padding,
header ``{"typ":"JWT","alg":"ed25519-nkey"}``, signed by the issuer's nkey. Claims carry ``jti`` (a hash of the
claims), ``iat`` (seconds), ``iss`` (issuer public key), ``sub`` (subject public key), ``name`` and ``nats``
(``type``, ``version: 2`` and the type's own fields). nats-server checks the signature and that the issuer is
trusted (operator → account → user); it does not recompute ``jti``.

A creds file is the user JWT and the user seed between BEGIN/END marker lines, as nats-py and the nats CLI read it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import nacl.exceptions
import nacl.signing
import nkeys

HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}


class JwtError(ValueError):
    pass


class KeyKind(Enum):
    """The role of an nkey, which is also the first letter of its public key."""

    OPERATOR = nkeys.PREFIX_BYTE_OPERATOR  # O...
    ACCOUNT = nkeys.PREFIX_BYTE_ACCOUNT  # A...
    USER = nkeys.PREFIX_BYTE_USER  # U...


def new_seed(kind: KeyKind) -> str:
    """A fresh nkey seed (``S`` + role letter + ...), from the OS's random source."""
    return bytes(nkeys.encode_seed(os.urandom(32), kind.value)).decode()


def public_key(seed: str) -> str:
    try:
        return bytes(nkeys.from_seed(seed.encode()).public_key).decode()
    except (nkeys.NkeysError, ValueError, TypeError, binascii.Error) as e:
        raise JwtError("not a valid nkey seed") from e


def seed_kind(seed: str) -> KeyKind:
    try:
        prefix, _ = nkeys.decode_seed(seed.encode())
    except (nkeys.NkeysError, ValueError, TypeError, binascii.Error) as e:
        raise JwtError("not a valid nkey seed") from e
    return KeyKind(prefix)


def _crc16(data: bytes) -> int:
    return int(nkeys.crc16(bytearray(data)))


def decode_public_key(key: str, kind: KeyKind) -> bytes:
    """The raw 32-byte ed25519 key of an encoded public nkey, checked for role and checksum."""
    if not isinstance(key, str) or len(key) != 56 or not re.fullmatch(r"[A-Z2-7]+", key):
        raise JwtError(f"not an nkey public key: {str(key)[:60]!r}")
    raw = base64.b32decode(key)
    body, crc = raw[:-2], int.from_bytes(raw[-2:], "little")
    if _crc16(body) != crc:
        raise JwtError("nkey public key checksum does not match")
    if body[0] != kind.value:
        raise JwtError(f"nkey {key[:8]}… is not a {kind.name.lower()} key")
    return body[1:]


def is_public_key(key: str, kind: KeyKind) -> bool:
    try:
        decode_public_key(key, kind)
    except JwtError:
        return False
    return True


def sign(seed: str, data: bytes) -> bytes:
    return bytes(nkeys.from_seed(seed.encode()).sign(data))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as e:
        raise JwtError("JWT part is not base64url") from e


def _claims_id(claims: dict[str, Any]) -> str:
    body = json.dumps({**claims, "jti": ""}, separators=(",", ":"), sort_keys=True).encode()
    return base64.b32encode(hashlib.new("sha512_256", body).digest()).rstrip(b"=").decode()


def encode(
    issuer_seed: str,
    subject: str,
    name: str,
    nats: dict[str, Any],
    *,
    iat: int | None = None,
    exp: int | None = None,
) -> str:
    """Sign a claim set with the issuer's seed. `exp` (seconds): nats-server refuses the JWT from then on and
    closes a connection made with it at that second."""
    claims: dict[str, Any] = {
        "iat": int(time.time()) if iat is None else iat,
        "iss": public_key(issuer_seed),
        "name": name,
        "sub": subject,
        "nats": nats,
    }
    if exp is not None:
        claims["exp"] = exp
    claims["jti"] = _claims_id(claims)
    head = _b64(json.dumps(HEADER, separators=(",", ":")).encode())
    body = _b64(json.dumps(claims, separators=(",", ":")).encode())
    signed = f"{head}.{body}"
    return f"{signed}.{_b64(sign(issuer_seed, signed.encode()))}"


def decode(token: str, *, verify: bool = True) -> dict[str, Any]:
    """The claims of a NATS JWT; with `verify`, only if the signature is the issuer's (``iss``)."""
    parts = token.strip().split(".") if isinstance(token, str) else []
    if len(parts) != 3:
        raise JwtError("not a JWT (three dot-separated parts expected)")
    try:
        header = json.loads(_unb64(parts[0]))
        claims = json.loads(_unb64(parts[1]))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise JwtError("JWT header or claims are not JSON") from e
    if header != HEADER:
        raise JwtError(f"not a NATS v2 JWT header: {header!r}")
    if not isinstance(claims, dict) or not isinstance(claims.get("nats"), dict):
        raise JwtError("JWT claims lack the 'nats' section")
    if verify:
        issuer = claims.get("iss", "")
        kind = {"operator": KeyKind.OPERATOR, "account": KeyKind.OPERATOR, "user": KeyKind.ACCOUNT}.get(
            str(claims["nats"].get("type"))
        )
        if kind is None:
            raise JwtError(f"unknown JWT type {claims['nats'].get('type')!r}")
        raw = decode_public_key(issuer, kind)
        try:
            nacl.signing.VerifyKey(raw).verify(f"{parts[0]}.{parts[1]}".encode(), _unb64(parts[2]))
        except nacl.exceptions.BadSignatureError as e:
            raise JwtError("JWT signature does not match its issuer") from e
    return dict(claims)


# -- claim sets -----------------------------------------------------------------------------------------------


def operator_jwt(operator_seed: str, name: str, system_account: str) -> str:
    """Self-signed: the operator is the root of trust the server is configured with."""
    return encode(
        operator_seed,
        public_key(operator_seed),
        name,
        {"type": "operator", "version": 2, "system_account": system_account},
    )


UNLIMITED_ACCOUNT = {
    "subs": -1,
    "data": -1,
    "payload": -1,
    "imports": -1,
    "exports": -1,
    "wildcards": True,
    "conn": -1,
    "leaf": -1,
}
# JetStream is on for an account when its storage limits are not zero (-1: no limit but the server's own).
JETSTREAM_UNLIMITED = {"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}


def account_jwt(
    operator_seed: str,
    account_public: str,
    name: str,
    *,
    jetstream: bool = False,
    revocations: dict[str, int] | None = None,
    iat: int | None = None,
) -> str:
    limits: dict[str, Any] = dict(UNLIMITED_ACCOUNT)
    if jetstream:
        limits.update(JETSTREAM_UNLIMITED)
    nats: dict[str, Any] = {"type": "account", "version": 2, "limits": limits}
    if revocations:
        # The server refuses (and disconnects) a user whose JWT was issued at or before the given second.
        nats["revocations"] = dict(sorted(revocations.items()))
    return encode(operator_seed, account_public, name, nats, iat=iat)


@dataclass(frozen=True)
class Permissions:
    """Allow lists; an empty `pub` or `sub` list means nothing is allowed in that direction."""

    pub: tuple[str, ...]
    sub: tuple[str, ...]
    # Also allow one reply to each request received (nats-server `allow_responses`), whatever its subject.
    responses: bool = False


@dataclass(frozen=True)
class UserLimits:
    """Per-connection limits in a user JWT (-1: none). nats-server applies `payload` (a bigger PUB is a
    "Maximum Payload Violation" and the connection is closed) and `subs` (one more SUB is refused with
    "Maximum Subscriptions Exceeded"), the lower of the user's, the account's and the server's own. `data` (bytes)
    is carried in the schema but nats-server does not meter it per user (v2.15.1: only `payload` and `subs` are read
    from a user JWT, `client.applyAccountLimits`), so no data-rate limit exists per user; measured in
    tests/bus/test_jwt.py."""

    subs: int = -1
    data: int = -1
    payload: int = -1


def user_jwt(
    account_seed: str,
    user_public: str,
    name: str,
    permissions: Permissions | None = None,
    *,
    limits: UserLimits | None = None,
    expires: int | None = None,
    iat: int | None = None,
) -> str:
    """A user of the account; `permissions` None means everything within the account. `expires`: the second at
    which the server stops taking it (and drops connections made with it); None: never."""
    decode_public_key(user_public, KeyKind.USER)
    lim = limits or UserLimits()
    nats: dict[str, Any] = {"type": "user", "version": 2, "subs": lim.subs, "data": lim.data, "payload": lim.payload}
    if permissions is not None:
        # An allow list that is present but empty would allow all; deny everything explicitly instead.
        nats["pub"] = {"allow": list(permissions.pub)} if permissions.pub else {"deny": [">"]}
        nats["sub"] = {"allow": list(permissions.sub)} if permissions.sub else {"deny": [">"]}
        if permissions.responses:
            nats["resp"] = {"max": 1, "ttl": 0}  # ttl 0: the server's default expiry
    return encode(account_seed, user_public, name, nats, iat=iat, exp=expires)


# -- creds files ----------------------------------------------------------------------------------------------

_JWT_BEGIN, _JWT_END = "-----BEGIN NATS USER JWT-----", "------END NATS USER JWT------"
_SEED_BEGIN, _SEED_END = "-----BEGIN USER NKEY SEED-----", "------END USER NKEY SEED------"


@dataclass(frozen=True)
class Credentials:
    jwt: str
    seed: str

    def sign_nonce(self, nonce: str) -> str:
        """The CONNECT `sig` answering the server INFO's nonce."""
        return _b64(sign(self.seed, nonce.encode()))


def creds_text(jwt: str, seed: str) -> str:
    return (
        f"{_JWT_BEGIN}\n{jwt}\n{_JWT_END}\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n\n"
        f"{_SEED_BEGIN}\n{seed}\n{_SEED_END}\n\n"
        "*************************************************************\n"
    )


def parse_creds(text: str) -> Credentials:
    lines = [line.strip() for line in text.splitlines()]

    def after(marker: str, what: str) -> str:
        try:
            value = lines[lines.index(marker) + 1]
        except (ValueError, IndexError):
            raise JwtError(f"creds file has no {what}") from None
        if not value:
            raise JwtError(f"creds file has an empty {what}")
        return value

    creds = Credentials(after(_JWT_BEGIN, "user JWT"), after(_SEED_BEGIN, "user seed"))
    if seed_kind(creds.seed) is not KeyKind.USER:
        raise JwtError("creds file seed is not a user seed")
    return creds


def write_private(path: Path, text: str) -> None:
    """Write a secret: the directory 0700, the file 0600 from the start (never briefly world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def load_creds(path: Path) -> Credentials:
    try:
        text = path.read_text()
    except OSError as e:
        raise JwtError(f"cannot read creds file {path}: {e.strerror or e}") from e
    return parse_creds(text)
