"""Behind a reverse proxy the hub sees one peer for everybody: it takes the client's address from X-Forwarded-For,
but only from a proxy it was told to trust (`serve --trusted-proxy`), for the audit log and the login limit."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from citycast.bus.server import free_port
from citycast.hub.db.models import AuditEntry
from citycast.hub.runtime import Hub, HubOptions


async def _fail_logins(hub: Hub, forwarded_for: str, n: int) -> list[int]:
    codes = []
    async with httpx.AsyncClient(base_url=hub.http_url, timeout=20) as c:
        for i in range(n):
            body = {"username": "admin", "password": f"guess{i}"}
            r = await c.post("/api/login", json=body, headers={"X-Forwarded-For": forwarded_for})
            codes.append(r.status_code)
    return codes


@pytest.mark.parametrize("trusted", [["127.0.0.1"], ["10.9.9.0/24"]], ids=["proxy-trusted", "proxy-not-trusted"])
async def test_the_client_address_comes_from_a_trusted_proxy_only(tmp_path: Path, trusted: list[str]) -> None:
    opts = HubOptions(data_dir=tmp_path / "hub", http_port=free_port(), nats_port=free_port(), trusted_proxies=trusted)
    hub = Hub(opts)
    await hub.start()
    try:
        first = await _fail_logins(hub, "203.0.113.5", 11)
        assert first == [401] * 10 + [429]
        other = await _fail_logins(hub, "203.0.113.6", 1)
        with hub.db.session() as s:
            remotes = set(s.scalars(select(AuditEntry.remote).where(AuditEntry.action == "login.failed")))
    finally:
        await hub.stop()
    if trusted == ["127.0.0.1"]:  # the proxy is this host: each client has its own budget and its own audit trail
        assert other == [401] and remotes == {"203.0.113.5", "203.0.113.6"}
    else:  # a header from an untrusted peer is a claim, not an address: everyone shares the peer's budget
        assert other == [429] and remotes == {"127.0.0.1"}
