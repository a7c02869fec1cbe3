"""The `api` fixture: the real hub API, served by uvicorn on a free port in the test's own event loop, over a
real SQLite database, a real nats-server in operator (JWT) mode with the hub's NATS authority, the real
FleetState, EventHub and AddressManager. Clients are plain httpx clients speaking HTTP to it."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
import uvicorn
from nats.aio.client import Client
from tests.helpers import wait_until

from citycast.bus.authority import NatsAuthority
from citycast.bus.server import EmbeddedNats, free_port
from citycast.hub.addresses import AddressManager
from citycast.hub.api import create_app
from citycast.hub.auth.passwords import hash_password
from citycast.hub.context import HubContext
from citycast.hub.db.engine import Database
from citycast.hub.db.models import Role, User
from citycast.hub.desired import DesiredStore
from citycast.hub.events import EventHub
from citycast.hub.fleet import FleetState
from citycast.media.keys import generate_private_key
from citycast.protocol.frame import FrameSigner
from citycast.protocol.subjects import Subjects
from citycast.protocol.telemetry import Telemetry

PASSWORD = "correct horse battery"
ROLES = (Role.admin, Role.operator, Role.speaker, Role.viewer)


@dataclass
class Api:
    ctx: HubContext
    base_url: str
    nats: EmbeddedNats
    authority: NatsAuthority
    tokens: dict[str, str] = field(default_factory=dict)
    _clients: list[httpx.AsyncClient] = field(default_factory=list)

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("http://", "ws://") + "/api/ws"

    def client(self, token: str | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        c = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=15.0)
        self._clients.append(c)
        return c

    async def login(self, username: str, password: str = PASSWORD) -> str:
        r = await self.client().post("/api/login", json={"username": username, "password": password})
        assert r.status_code == 200, r.text
        return str(r.json()["token"])

    async def as_role(self, role: Role | str) -> httpx.AsyncClient:
        """A client logged in as the fixture's user of that role (named after it)."""
        name = Role(role).value
        if name not in self.tokens:
            self.tokens[name] = await self.login(name)
        return self.client(self.tokens[name])

    async def close(self) -> None:
        for c in self._clients:
            await c.aclose()


def telemetry(site: str, **over: Any) -> Telemetry:
    """A healthy site's report; override what the test is about."""
    base: dict[str, Any] = {
        "site": site,
        "ts_ns": 1,
        "state": "idle",
        "channel": 0,
        "buffer_ms": 80.0,
        "clock_offset_ms": 0.0,
        "clock_drift_ppm": 0.0,
        "clock_error_ms": 0.1,
        "sync_error_ms": 0.2,
        "tracking_error_ms": 0.1,
        "resample_ppm": 0.0,
        "underruns": 0,
        "concealed": 0,
        "late": 0,
        "rejected": {},
        "level_rms_dbfs": -30.0,
        "level_peak_dbfs": -10.0,
        "link_rtt_ms": 5.0,
        "sink_xruns": 0,
        "resyncs": 0,
        "frames": 0,
    }
    return Telemetry(**(base | over))


def add_user(db: Database, username: str, role: Role, password: str = PASSWORD) -> int:
    with db.session() as s:
        user = User(username=username, password_hash=hash_password(password), role=role)
        s.add(user)
        s.flush()
        return int(user.id)


async def serve(app: Any) -> tuple[uvicorn.Server, asyncio.Task[None], str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    await wait_until(lambda: server.started or task.done(), "uvicorn to start", timeout=5)
    if task.done():
        task.result()  # its error, if it failed to start
    assert server.started, "uvicorn did not start"
    return server, task, f"http://127.0.0.1:{port}"


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
        await manager.close()
        await nc.close()
