"""The CAP rig: a real database with two zones and four sites in Karachi, a real nats-server and address
manager, and the CAP service over them; and an authority's key and certificate to sign alerts with."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from lxml import etree
from signxml import methods
from signxml.signer import XMLSigner

from citycast.bus.server import EmbeddedNats
from citycast.hub.addresses import AddressManager
from citycast.hub.cap import settings as cap_settings
from citycast.hub.cap.service import CapService
from citycast.hub.db.engine import Database
from citycast.hub.db.models import Site, Zone
from citycast.hub.desired import DesiredStore
from citycast.media.keys import generate_private_key
from citycast.protocol.frame import FrameSigner
from citycast.protocol.subjects import Subjects

FIXTURES = Path(__file__).parent / "fixtures"


@dataclass
class Authority:
    key_pem: bytes
    cert_pem: str

    def sign(self, data: bytes) -> bytes:
        """Enveloped XML-DSig over the whole alert, as national feeds sign."""
        root = etree.fromstring(data)
        signer = XMLSigner(method=methods.enveloped, signature_algorithm="ecdsa-sha256", digest_algorithm="sha256")
        signed = signer.sign(root, key=self.key_pem, cert=self.cert_pem)
        return bytes(etree.tostring(signed, xml_declaration=True, encoding="UTF-8"))


def make_authority(name: str) -> Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return Authority(key_pem, cert.public_bytes(serialization.Encoding.PEM).decode())


@pytest.fixture(scope="session")
def ndma() -> Authority:
    return make_authority("NDMA alerts")


@pytest.fixture(scope="session")
def stranger() -> Authority:
    return make_authority("Not the NDMA")


@dataclass
class CapRig:
    db: Database
    manager: AddressManager
    desired: DesiredStore
    service: CapService
    zones: dict[str, int]

    def fixture(self, name: str) -> bytes:
        return (FIXTURES / name).read_bytes()

    def configure(self, **changes: object) -> None:
        with self.db.session() as s:
            st = cap_settings.load(s)
            for k, v in changes.items():
                setattr(st, k, v)
            cap_settings.save(s, st)

    async def channels(self) -> dict[str, int | None]:
        out = {}
        for n in ("s1", "s2", "s3", "s4"):
            d = await self.desired.get(n)
            out[n] = d.channel if d else None
        return out


def seed(db: Database) -> dict[str, int]:
    with db.session() as s:
        saddar, clifton = Zone(name="saddar", channel=1), Zone(name="clifton", channel=2)
        s.add_all([saddar, clifton])
        s.flush()
        s.add_all(
            [
                Site(name="s1", lat=24.86, lon=67.03, zone_id=saddar.id),
                Site(name="s2", lat=24.86, lon=67.04, zone_id=saddar.id),
                Site(name="s3", lat=24.81, lon=67.03, zone_id=clifton.id),
                Site(name="s4", lat=24.90, lon=67.10, zone_id=None),
            ]
        )
        return {"saddar": saddar.id, "clifton": clifton.id}


@pytest.fixture
async def cap_rig(nats_server: EmbeddedNats, sqlite_database: Database, tmp_path: Path) -> AsyncIterator[CapRig]:
    zones = seed(sqlite_database)
    nc = await nats.connect(nats_server.url)
    desired = DesiredStore(nc, Subjects())
    await desired.open()
    manager = AddressManager(
        db=sqlite_database,
        nc=nc,
        subjects=Subjects(),
        desired=desired,
        signer=FrameSigner(generate_private_key()),
        media_dir=tmp_path,
        delay_ms=20,
    )
    await manager.refresh_sites()
    service = CapService(sqlite_database, manager)
    rig = CapRig(sqlite_database, manager, desired, service, zones)
    rig.configure(repeats=1)
    try:
        yield rig
    finally:
        await service.close()
        await manager.close()
        await nc.close()
