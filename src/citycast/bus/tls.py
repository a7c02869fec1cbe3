"""The hub's own certificate authority: TLS for its NATS ports and its HTTPS, trusted by pinning, not by the web.

At first start the hub makes a CA (an EC P-256 key kept 0600 in its data directory) and, at every start, a
server certificate signed by it for the names it is reached by. Nothing else is ever signed by this CA, so a
client that trusts exactly this CA (never the system store) talks to this hub and no other. Sites learn the CA
at enrolment, where the token carries its fingerprint (`TOKEN.FINGERPRINT`): a man in the middle of the
enrolment cannot substitute his own.

A NATS creds file handed to a citycast process carries the hub's CA as a PEM block after the seed (nats-py and
nats-server read only their two marked blocks), so one file says who the process is and which hub it talks to:
`connect()` and `open_wire()` given such a file dial TLS first (`handshake_first`, so no plaintext INFO can be
stripped of its "TLS required") and verify the hub against that CA alone.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import os
import re
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CA's side only: a site (client contexts) never loads `cryptography` (≈ 8 MB resident)
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"
CA_DAYS = 20 * 365  # a loudspeaker box is enrolled once and runs for years; the pin is the CA, not a date
SERVER_DAYS = 825
RENEW_BEFORE = dt.timedelta(days=60)
LOOPBACK_NAMES = ("127.0.0.1", "::1", "localhost")
_PEM_CERT = re.compile(r"-----BEGIN CERTIFICATE-----\r?\n[A-Za-z0-9+/=\r\n]+-----END CERTIFICATE-----\r?\n?")


class TlsError(RuntimeError):
    pass


def fingerprint(ca_pem: str | bytes) -> str:
    """SHA-256 of the certificate's DER, base64url without padding (43 characters, copy-pasteable)."""
    from cryptography.hazmat.primitives import serialization

    cert = _load_cert(ca_pem)
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def der_fingerprint(der: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


def _load_cert(pem: str | bytes) -> x509.Certificate:
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificate(pem.encode() if isinstance(pem, str) else pem)
    except ValueError as e:
        raise TlsError(f"not a PEM certificate: {e}") from None


def client_context(ca_pem: str) -> ssl.SSLContext:
    """A client context that trusts `ca_pem` and nothing else (no system store), with host names checked."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:  # OpenSSL parses it here: a garbled or non-certificate PEM is refused as `_load_cert` would
        ctx.load_verify_locations(cadata=ssl.PEM_cert_to_DER_cert(ca_pem.strip()))
    except (ssl.SSLError, ValueError) as e:
        raise TlsError(f"not a PEM certificate: {e}") from None
    return ctx


def creds_with_ca(creds_text: str, ca_pem: str | None) -> str:
    """A creds file's text with the hub's CA appended (or as it is, when the hub runs without TLS)."""
    if not ca_pem:
        return creds_text
    return creds_text.rstrip("\n") + "\n\n" + ca_pem.strip() + "\n"


def ca_in_creds(creds_text: str) -> str | None:
    """The hub CA a creds file carries, if any."""
    match = _PEM_CERT.search(creds_text)
    return match.group(0) if match else None


def creds_context(creds: Path | None) -> ssl.SSLContext | None:
    """The TLS context for the hub a creds file belongs to, None if the file carries no CA (a plaintext bus)."""
    if creds is None:
        return None
    try:
        text = creds.read_text()
    except OSError as e:
        raise TlsError(f"cannot read creds file {creds}: {e.strerror or e}") from e
    ca = ca_in_creds(text)
    return client_context(ca) if ca else None


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def _san(names: Iterable[str]) -> list[x509.GeneralName]:
    from cryptography import x509

    out: list[x509.GeneralName] = []
    for name in dict.fromkeys(n.strip("[]") for n in names if n and n not in ("0.0.0.0", "::")):
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


@dataclass(frozen=True)
class HubTls:
    """The hub's CA and server certificate in `dir` (0700). Build with `load_or_create`."""

    dir: Path

    @property
    def ca_path(self) -> Path:
        return self.dir / CA_CERT

    @property
    def cert_path(self) -> Path:
        return self.dir / SERVER_CERT

    @property
    def key_path(self) -> Path:
        return self.dir / SERVER_KEY

    def ca_pem(self) -> str:
        return self.ca_path.read_text()

    def fingerprint(self) -> str:
        return fingerprint(self.ca_pem())

    def client_context(self) -> ssl.SSLContext:
        return client_context(self.ca_pem())

    def server_names(self) -> list[str]:
        from cryptography import x509

        cert = _load_cert(self.cert_path.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return [str(v) for v in san.get_values_for_type(x509.IPAddress)] + san.get_values_for_type(x509.DNSName)

    @classmethod
    def load_or_create(cls, dir: Path, names: Iterable[str], now: dt.datetime | None = None) -> HubTls:
        """The CA is made once (its loss means re-enrolling every site); the server certificate is made again
        whenever the names it must carry change or it nears its end, so `--public-nats` can change freely."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        now = now or dt.datetime.now(dt.UTC)
        dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(dir, 0o700)
        tls = cls(dir)
        if not (dir / CA_KEY).exists() or not tls.ca_path.exists():
            tls._make_ca(now)
        ca_key = serialization.load_pem_private_key((dir / CA_KEY).read_bytes(), password=None)
        if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
            raise TlsError(f"{dir / CA_KEY} is not an EC private key")
        ca = _load_cert(tls.ca_path.read_bytes())
        wanted = _san([*LOOPBACK_NAMES, *names])
        if not tls._server_cert_fits(wanted, now):
            cert_pem, key_pem = _server_cert(ca, ca_key, wanted, now, "citycast hub")
            _write_private(tls.key_path, key_pem.encode())
            tls.cert_path.write_text(cert_pem)
        return tls

    def issue_server_cert(
        self, names: Iterable[str], common_name: str, now: dt.datetime | None = None
    ) -> tuple[str, str]:
        """A server certificate and its key (PEM) for a city server's NATS, signed by this CA, so the sites of
        that city verify it with the CA they already pin. It carries only the names given (and loopback)."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        ca_key = serialization.load_pem_private_key((self.dir / CA_KEY).read_bytes(), password=None)
        if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
            raise TlsError(f"{self.dir / CA_KEY} is not an EC private key")
        ca = _load_cert(self.ca_path.read_bytes())
        return _server_cert(ca, ca_key, _san([*LOOPBACK_NAMES, *names]), now or dt.datetime.now(dt.UTC), common_name)

    def _make_ca(self, now: dt.datetime) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "citycast hub CA")])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        _write_private(self.dir / CA_KEY, key_pem)
        self.ca_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (self.dir / SERVER_CERT).unlink(missing_ok=True)  # signed by a CA that is gone

    def _server_cert_fits(self, wanted: list[x509.GeneralName], now: dt.datetime) -> bool:
        from cryptography import x509

        if not self.cert_path.exists() or not self.key_path.exists():
            return False
        try:
            cert = _load_cert(self.cert_path.read_bytes())
            ca = _load_cert(self.ca_path.read_bytes())
            cert.verify_directly_issued_by(ca)
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except (TlsError, ValueError, TypeError, x509.ExtensionNotFound, Exception):
            return False
        return set(san) == set(wanted) and cert.not_valid_after_utc - RENEW_BEFORE > now


def _server_cert(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    san: list[x509.GeneralName],
    now: dt.datetime,
    common_name: str,
) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem.decode()
