from __future__ import annotations

import base64
import hashlib
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tests.helpers import fresh_interpreter

from citycast.media.keys import (
    KeyFileError,
    PublicKey,
    RawPublicKey,
    SeedPrivateKey,
    generate_private_key,
    key_id,
    load_private_key,
    load_trusted_keys,
    parse_public_key,
    public_key_text,
    save_private_key,
    verify,
)

SEED_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
SEED_PUB_TEXT = "ed25519:A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg="


def raw(pub: PublicKey) -> bytes:
    return pub.public_bytes_raw()


@pytest.fixture
def umask_zero() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


# --- private keys ------------------------------------------------------------------------------------------


def test_generate_gives_distinct_ed25519_keys() -> None:
    a, b = generate_private_key(), generate_private_key()
    assert isinstance(a, Ed25519PrivateKey)
    assert raw(a.public_key()) != raw(b.public_key())


def test_save_load_round_trip(tmp_path: Path) -> None:
    key = generate_private_key()
    path = tmp_path / "ingest.key"
    save_private_key(key, path)
    loaded = load_private_key(path)
    assert raw(loaded.public_key()) == raw(key.public_key())
    assert loaded.sign(b"x") == key.sign(b"x")  # Ed25519 is deterministic: same key, same signature
    text = path.read_text()
    assert text.startswith("-----BEGIN PRIVATE KEY-----")  # PKCS8, unencrypted
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_saved_key_is_0600_even_with_umask_zero(tmp_path: Path, umask_zero: None) -> None:
    path = tmp_path / "k.pem"
    save_private_key(generate_private_key(), path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_saved_key_is_created_0600_exclusively(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never world-readable, not even between create and chmod: the file is born 0600 with O_EXCL."""
    calls: list[tuple[int, int]] = []
    real_open = os.open

    def spy(path: Any, flags: int, mode: int = 0o777, *a: Any, **kw: Any) -> int:
        calls.append((flags, mode))
        return real_open(path, flags, mode, *a, **kw)

    monkeypatch.setattr(os, "open", spy)
    save_private_key(generate_private_key(), tmp_path / "k.pem")
    assert calls, "save_private_key must create the file with os.open"
    for flags, mode in calls:
        assert mode == 0o600
        assert flags & os.O_CREAT and flags & os.O_EXCL


def test_save_refuses_to_overwrite_unless_asked(tmp_path: Path, umask_zero: None) -> None:
    path = tmp_path / "k.pem"
    first, second = generate_private_key(), generate_private_key()
    save_private_key(first, path)
    with pytest.raises(KeyFileError, match="already exists"):
        save_private_key(second, path)
    assert raw(load_private_key(path).public_key()) == raw(first.public_key())
    path.chmod(0o644)
    save_private_key(second, path, overwrite=True)
    assert raw(load_private_key(path).public_key()) == raw(second.public_key())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # the old file's wider mode is not inherited


def test_save_into_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "k.pem"
    with pytest.raises(KeyFileError) as e:
        save_private_key(generate_private_key(), path)
    assert str(path) in str(e.value)


def test_load_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.pem"
    with pytest.raises(KeyFileError, match="not found") as e:
        load_private_key(path)
    assert e.value.path == path
    assert str(path) in str(e.value)
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"hello",
        b"-----BEGIN PRIVATE KEY-----\nnot base64!!\n-----END PRIVATE KEY-----\n",
        bytes(range(256)),
        SEED_PUB_TEXT.encode(),
    ],
)
def test_load_garbled_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.pem"
    path.write_bytes(content)
    with pytest.raises(KeyFileError) as e:
        load_private_key(path)
    assert str(path) in str(e.value)


def test_load_directory(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="directory"):
        load_private_key(tmp_path)


def test_load_wrong_key_type(tmp_path: Path) -> None:
    path = tmp_path / "ec.pem"
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(pem)
    with pytest.raises(KeyFileError, match="expected an Ed25519 private key"):
        load_private_key(path)


def test_load_encrypted_key(tmp_path: Path) -> None:
    path = tmp_path / "enc.pem"
    pem = generate_private_key().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    path.write_bytes(pem)
    with pytest.raises(KeyFileError, match="cannot load private key"):
        load_private_key(path)


def test_load_warns_about_a_readable_key(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "k.pem"
    save_private_key(generate_private_key(), path)
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="citycast.media.keys"):
        load_private_key(path)
    assert "chmod 600" in caplog.text


# --- public keys -------------------------------------------------------------------------------------------


def test_public_key_text_format() -> None:
    text = public_key_text(SEED_KEY.public_key())
    assert text == SEED_PUB_TEXT
    assert "\n" not in text
    assert base64.b64decode(text.removeprefix("ed25519:")) == raw(SEED_KEY.public_key())


def test_public_key_text_round_trip() -> None:
    pub = generate_private_key().public_key()
    assert raw(parse_public_key(public_key_text(pub))) == raw(pub)
    assert raw(parse_public_key(f"  {public_key_text(pub)}\n")) == raw(pub)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "must start with"),
        ("A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=", "must start with"),
        ("rsa:A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=", "must start with"),
        ("ed25519:not base64 at all!", "base64"),
        ("ed25519:A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMb", "base64"),
        ("ed25519:" + base64.b64encode(bytes(31)).decode(), "32 bytes"),
        ("ed25519:" + base64.b64encode(bytes(33)).decode(), "32 bytes"),
        ("ed25519:ÄÖÜ", "base64"),
    ],
)
def test_parse_public_key_errors(text: str, reason: str) -> None:
    with pytest.raises(KeyFileError, match=reason):
        parse_public_key(text)


def test_key_id_is_sha256_prefix() -> None:
    pub = SEED_KEY.public_key()
    assert key_id(pub) == hashlib.sha256(raw(pub)).digest()[:8]
    assert key_id(pub).hex() == "56475aa75463474c"


# --- trusted keys file -------------------------------------------------------------------------------------


def test_load_trusted_keys(tmp_path: Path) -> None:
    a, b = generate_private_key().public_key(), generate_private_key().public_key()
    path = tmp_path / "trusted"
    path.write_text(
        "# keys allowed to speak in Karachi\n"
        "\n"
        f"{public_key_text(a)}\n"
        f"   {public_key_text(b)}   # london studio\n"
        "\t\n"
        f"{public_key_text(a)}\n"  # listed twice, kept once
    )
    loaded = load_trusted_keys(path)
    assert [raw(k) for k in loaded] == [raw(a), raw(b)]


def test_trusted_keys_bad_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "trusted"
    path.write_text(f"# ok\n{SEED_PUB_TEXT}\ned25519:garbage!\n")
    with pytest.raises(KeyFileError) as e:
        load_trusted_keys(path)
    assert str(path) in str(e.value)
    assert "line 3" in str(e.value)


def test_trusted_keys_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="not found"):
        load_trusted_keys(tmp_path / "absent")


def test_trusted_keys_empty_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "trusted"
    path.write_text("# nobody yet\n\n")
    with pytest.raises(KeyFileError, match="no keys"):
        load_trusted_keys(path)


def test_trusted_keys_binary_file(tmp_path: Path) -> None:
    path = tmp_path / "trusted"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(KeyFileError, match="UTF-8"):
        load_trusted_keys(path)


def test_libsodium_keys_sign_and_verify_as_cryptography_does() -> None:
    """A site signs and checks with `SeedPrivateKey` / `RawPublicKey` (libsodium), the hub with `cryptography`:
    the same seed makes the same public key and the same (deterministic) signature, each side verifies the
    other's, and a wrong signature is refused."""
    light = SeedPrivateKey(bytes(range(32)))
    assert light.public_key() == RawPublicKey(SEED_KEY.public_key().public_bytes_raw())
    assert public_key_text(light.public_key()) == SEED_PUB_TEXT
    assert key_id(light.public_key()) == key_id(SEED_KEY.public_key())
    message = b"what the loudspeaker played"
    assert light.sign(message) == SEED_KEY.sign(message)
    SEED_KEY.public_key().verify(light.sign(message), message)
    verify(parse_public_key(SEED_PUB_TEXT), SEED_KEY.sign(message), message)
    with pytest.raises(ValueError, match="bad signature"):
        verify(parse_public_key(SEED_PUB_TEXT), SEED_KEY.sign(b"something else"), message)
    with pytest.raises(ValueError, match="32 bytes"):
        RawPublicKey(b"short")


def test_a_site_process_never_loads_cryptography(tmp_path: Path) -> None:
    """`cryptography` is ≈ 8 MB resident: the site's process reads its trusted keys, checks frames, signs receipts
    and dials TLS without it (issue 11: a site ≤ 60 MB)."""
    trusted = tmp_path / "trusted.keys"
    trusted.write_text(SEED_PUB_TEXT + "\n")
    code = f"""
import sys
from pathlib import Path
import citycast.site.main
from citycast.bus.tls import client_context
from citycast.media.keys import load_trusted_keys
from citycast.protocol.frame import FrameVerifier
from citycast.protocol.receipts import PlayReceipt, sign_receipt
from citycast.site.talkback import key_from_seed
import nkeys
FrameVerifier(load_trusted_keys(Path({str(trusted)!r})))
seed = nkeys.encode_seed(bytes(range(32)), nkeys.PREFIX_BYTE_USER).decode()
key_from_seed(seed).sign(b"x")
client_context({_ca_pem()!r})
print(sorted(m for m in sys.modules if m.split(".")[0] == "cryptography"))
"""
    out = fresh_interpreter(code)
    assert out.strip() == "[]", out


def _ca_pem() -> str:
    import tempfile

    from citycast.bus.tls import HubTls

    with tempfile.TemporaryDirectory() as d:
        return HubTls.load_or_create(Path(d), ["127.0.0.1"]).ca_pem()
