"""Ed25519 keys that sign audio frames: generate, save, load, and the trusted-keys file.

A private key lives in a PEM file (PKCS8, unencrypted) that only its owner may read (mode 0600). A public
key travels as one line of text, ``ed25519:<base64 of the raw 32 bytes>``; a site's trusted-keys file holds
one such line per key that may put a voice on its loudspeakers, with ``#`` comments and blank lines allowed.

A frame names its signing key by ``key_id``: the first 8 bytes of SHA-256 of the raw public key.

Keys are used through two small protocols, `PublicKey` and `PrivateKey`, which `cryptography`'s Ed25519 keys
and this module's libsodium-backed `RawPublicKey` / `SeedPrivateKey` both satisfy. A site's process reads its
trusted keys and signs its receipts with the latter, so `cryptography` (≈ 8 MB resident) never loads on the
box; the hub and ingest, which write PEM key files, keep `cryptography` (imported when first needed).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import secrets
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import nacl.exceptions
import nacl.signing

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = [
    "KEY_ID_SIZE",
    "PUBLIC_KEY_PREFIX",
    "KeyFileError",
    "PrivateKey",
    "PublicKey",
    "RawPublicKey",
    "SeedPrivateKey",
    "generate_private_key",
    "key_id",
    "load_private_key",
    "load_trusted_keys",
    "parse_public_key",
    "public_key_text",
    "save_private_key",
    "verify",
]

log = logging.getLogger(__name__)

KEY_ID_SIZE = 8
PUBLIC_KEY_PREFIX = "ed25519:"
_RAW_KEY_SIZE = 32
_MAX_KEY_FILE_BYTES = 1 << 20  # a key file bigger than this is not a key file


class KeyFileError(ValueError):
    """A key file (or a key's text) is missing, unreadable or garbled.

    ``str(e)`` is ``"<path>: <reason>"`` (just the reason when there is no file, as for `parse_public_key`).
    """

    def __init__(self, path: str | os.PathLike[str] | None, reason: str) -> None:
        self.path = None if path is None else Path(path)
        self.reason = reason
        super().__init__(reason if path is None else f"{path}: {reason}")


class PublicKey(Protocol):
    """An Ed25519 public key: `cryptography`'s, or a `RawPublicKey`."""

    def public_bytes_raw(self) -> bytes: ...


class PrivateKey(Protocol):
    """An Ed25519 private key that signs: `cryptography`'s, or a `SeedPrivateKey`."""

    def sign(self, data: bytes) -> bytes: ...

    def public_key(self) -> PublicKey: ...


class RawPublicKey:
    """An Ed25519 public key as its 32 raw bytes (libsodium verifies with it; see protocol.frame)."""

    __slots__ = ("_raw",)

    def __init__(self, raw: bytes) -> None:
        if len(raw) != _RAW_KEY_SIZE:
            raise ValueError(f"an Ed25519 public key is {_RAW_KEY_SIZE} bytes, got {len(raw)}")
        self._raw = bytes(raw)

    def public_bytes_raw(self) -> bytes:
        return self._raw

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RawPublicKey) and other._raw == self._raw

    def __hash__(self) -> int:
        return hash(self._raw)

    def __repr__(self) -> str:
        return f"RawPublicKey({public_key_text(self)!r})"


class SeedPrivateKey:
    """An Ed25519 private key from its 32-byte seed (a site's nkey seed holds one), signing with libsodium."""

    __slots__ = ("_key",)

    def __init__(self, seed: bytes) -> None:
        if len(seed) != _RAW_KEY_SIZE:
            raise ValueError(f"an Ed25519 seed is {_RAW_KEY_SIZE} bytes, got {len(seed)}")
        self._key = nacl.signing.SigningKey(bytes(seed))

    def sign(self, data: bytes) -> bytes:
        return bytes(self._key.sign(data).signature)

    def public_key(self) -> RawPublicKey:
        return RawPublicKey(bytes(self._key.verify_key))


def verify(pub: PublicKey, signature: bytes, data: bytes) -> None:
    """Raises ValueError unless `signature` is `pub`'s over `data` (libsodium, whichever kind of key)."""
    try:
        nacl.signing.VerifyKey(pub.public_bytes_raw()).verify(data, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError) as e:
        raise ValueError("bad signature") from e


def generate_private_key() -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate()


def key_id(pub: PublicKey) -> bytes:
    """First 8 bytes of SHA-256 of the raw 32-byte public key: how a frame names the key that signed it."""
    return hashlib.sha256(pub.public_bytes_raw()).digest()[:KEY_ID_SIZE]


def save_private_key(key: Ed25519PrivateKey, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
    """Write ``key`` as unencrypted PKCS8 PEM, readable by its owner only (0600) from the first byte on.

    The key is written to a fresh 0600 file beside ``path`` and renamed into place, so a crash never leaves a
    half-written key and an existing file's wider mode is never inherited. Refuses to replace an existing file
    unless ``overwrite`` is true.
    """
    from cryptography.hazmat.primitives import serialization

    target = Path(path)
    if target.exists() and not overwrite:
        raise KeyFileError(target, "already exists; refusing to overwrite a private key")
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
    try:
        # O_EXCL: never open a file someone else created; 0o600 from creation (the umask can only narrow it).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except OSError as e:
        raise KeyFileError(target, f"cannot create: {e.strerror or e}") from e
    try:
        try:
            os.fchmod(fd, 0o600)
            view = memoryview(pem)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise KeyFileError(target, f"cannot write: {e.strerror or e}") from e


def _read(path: Path, what: str) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(_MAX_KEY_FILE_BYTES + 1)
    except FileNotFoundError as e:
        raise KeyFileError(path, f"{what} file not found") from e
    except IsADirectoryError as e:
        raise KeyFileError(path, f"is a directory, expected a {what} file") from e
    except OSError as e:
        raise KeyFileError(path, f"cannot read {what} file: {e.strerror or e}") from e
    if len(data) > _MAX_KEY_FILE_BYTES:
        raise KeyFileError(path, f"too large for a {what} file (> {_MAX_KEY_FILE_BYTES} bytes)")
    return data


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Load an Ed25519 private key from an unencrypted PEM (PKCS8) file written by `save_private_key`."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    p = Path(path)
    data = _read(p, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as e:  # encrypted PEM
        raise KeyFileError(p, f"cannot load private key: {e}") from e
    except ValueError as e:
        raise KeyFileError(p, "not a PEM private key (garbled or wrong format)") from e
    except Exception as e:  # cryptography raises UnsupportedAlgorithm for unknown key types
        raise KeyFileError(p, f"cannot load private key: {e}") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(p, f"expected an Ed25519 private key, found {type(key).__name__}")
    try:
        mode = p.stat().st_mode
    except OSError:
        mode = 0
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s: private key is accessible by group or others (mode %o); use chmod 600", p, mode & 0o777)
    return key


def public_key_text(pub: PublicKey) -> str:
    """One line: ``ed25519:<base64 of the raw 32 bytes>``."""
    return PUBLIC_KEY_PREFIX + base64.b64encode(pub.public_bytes_raw()).decode("ascii")


def parse_public_key(text: str) -> RawPublicKey:
    """Inverse of `public_key_text`. Surrounding whitespace is ignored. Raises `KeyFileError` (path None)."""
    s = text.strip()
    if not s.startswith(PUBLIC_KEY_PREFIX):
        raise KeyFileError(None, f"public key must start with {PUBLIC_KEY_PREFIX!r}: {_preview(s)}")
    body = s[len(PUBLIC_KEY_PREFIX) :]
    try:
        raw = base64.b64decode(body.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as e:
        raise KeyFileError(None, f"public key is not valid base64: {_preview(s)}") from e
    if len(raw) != _RAW_KEY_SIZE:
        raise KeyFileError(None, f"public key must be {_RAW_KEY_SIZE} bytes, got {len(raw)}: {_preview(s)}")
    return RawPublicKey(raw)


def _preview(s: str) -> str:
    return repr(s if len(s) <= 60 else s[:57] + "...")


def load_trusted_keys(path: str | os.PathLike[str]) -> list[RawPublicKey]:
    """Read a trusted-keys file: one ``ed25519:...`` line per key.

    ``#`` starts a comment (a whole line, or after the key); blank lines are ignored; a key listed twice is
    kept once. A file with no key at all is an error: a site trusting nobody would stay silent for a reason
    nobody sees.
    """
    p = Path(path)
    data = _read(p, "trusted keys")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise KeyFileError(p, f"not UTF-8 text (byte {e.start})") from e
    keys: list[RawPublicKey] = []
    seen: set[bytes] = set()
    for lineno, line in enumerate(text.splitlines(), start=1):
        content = line.split("#", 1)[0].strip()
        if not content:
            continue
        try:
            pub = parse_public_key(content)
        except KeyFileError as e:
            raise KeyFileError(p, f"line {lineno}: {e.reason}") from e
        raw = pub.public_bytes_raw()
        if raw not in seen:
            seen.add(raw)
            keys.append(pub)
    if not keys:
        raise KeyFileError(p, "no keys found (expected lines like 'ed25519:<base64>')")
    return keys
