"""The `api` fixture: the real hub API, served by uvicorn on a free port in the test's own event loop, over a
real SQLite database, a real nats-server in operator (JWT) mode with the hub's NATS authority, the real
FleetState, EventHub and AddressManager. Clients are plain httpx clients speaking HTTP to it."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from tests.helpers import PASSWORD, Api, serve

from citycast.bus.authority import NatsAuthority
from citycast.bus.server import EmbeddedNats
from citycast.hub.addresses import AddressManager
from citycast.hub.api import create_app
from citycast.hub.auth.passwords import hash_password
from citycast.hub.cap.service import CapService
from citycast.hub.context import HubContext
from citycast.hub.db.engine import Database
from citycast.hub.db.models import Role, User
from citycast.hub.desired import DesiredStore
from citycast.hub.events import EventHub
from citycast.hub.fleet import FleetState
from citycast.media.keys import generate_private_key
from citycast.protocol.frame import FrameSigner
from citycast.protocol.subjects import Subjects

ROLES = (Role.admin, Role.operator, Role.speaker, Role.viewer)


def add_user(db: Database, username: str, role: Role, password: str = PASSWORD) -> int:
    with db.session() as s:
        user = User(username=username, password_hash=hash_password(password), role=role)
        s.add(user)
        s.flush()
        return int(user.id)


@pytest.fixture
async def api(
    sqlite_database: Database, auth_nats: EmbeddedNats, authority: NatsAuthority, tmp_path: Path
) -> AsyncIterator[Api]:
    subjects = Subjects()
    nc: Client = await nats.connect(auth_nats.url, user_credentials=str(authority.hub_creds_path))
    desired = DesiredStore(nc, subjects)
    await desired.open()
    events = EventHub()
    fleet = FleetState()
    media = tmp_path / "media"
    media.mkdir()
    recordings = tmp_path / "recordings"
    recordings.mkdir()
    manager = AddressManager(
        db=sqlite_database,
        nc=nc,
        subjects=subjects,
        desired=desired,
        signer=FrameSigner(generate_private_key()),
        media_dir=media,
        fleet_snapshot=fleet.snapshot,
        publish=events.publish,
        delay_ms=20.0,
    )
    ctx = HubContext(
        db=sqlite_database,
        subjects=subjects,
        fleet=fleet,
        events=events,
        addresses=manager,
        authority=authority,
        nats_url=auth_nats.url,
        public_nats_urls=[auth_nats.url],
        trusted_keys_hex=["00" * 32],
        delay_ms=80.0,
        recordings_dir=recordings,
        media_dir=media,
        session_ttl=dt.timedelta(hours=1),
    )
    ctx.cap = CapService(sqlite_database, manager)
    for role in ROLES:
        add_user(sqlite_database, role.value, role)
    server, task, base_url = await serve(create_app(ctx))
    a = Api(ctx=ctx, base_url=base_url, nats=auth_nats, authority=authority)
    try:
        yield a
    finally:
        await a.close()
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        await ctx.cap.close()
        await manager.close()
        await nc.close()
