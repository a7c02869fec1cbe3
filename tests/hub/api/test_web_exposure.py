"""What a stranger gets from the hub's web side without logging in, over real HTTP: the security headers on
every response, `/metrics` and `/openapi.json` closed unless the operator opens them, and a tile setting that
cannot smuggle anything into the Content-Security-Policy."""

from __future__ import annotations

import pytest
from tests.helpers import Api

from citycast.hub.db.models import Role

SCRAPE = "scrape-token-0123456789abcdef"


async def test_every_response_carries_the_security_headers(api: Api) -> None:
    c = api.client()
    for path in ("/", "/app.js", "/api/health", "/api/sites", "/no/such/thing", "/metrics"):
        r = await c.get(path)
        csp = r.headers.get("content-security-policy", "")
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp, path
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert r.headers["x-frame-options"] == "DENY", path
        assert r.headers["x-content-type-options"] == "nosniff", path
        assert r.headers["referrer-policy"] == "no-referrer", path
    assert (await c.get("/")).headers["cache-control"] == "no-store"  # a page's policy is never stale


async def test_metrics_need_a_login_or_the_scrape_token(api: Api) -> None:
    stranger = api.client()
    r = await stranger.get("/metrics")
    assert r.status_code == 401 and "citycast" not in r.text
    assert (await api.client("a-guessed-token").get("/metrics")).status_code == 401
    viewer = await api.as_role(Role.viewer)
    assert (await viewer.get("/metrics")).status_code == 200
    api.ctx.metrics_token = SCRAPE
    scraped = await api.client(SCRAPE).get("/metrics")
    assert scraped.status_code == 200 and "citycast_" in scraped.text
    assert (await api.client(SCRAPE[:-1]).get("/metrics")).status_code == 401
    api.ctx.public_metrics = True  # serve --public-metrics
    assert (await stranger.get("/metrics")).status_code == 200


async def test_the_api_map_needs_a_login_and_there_is_no_docs_page(api: Api) -> None:
    stranger = api.client()
    assert (await stranger.get("/openapi.json")).status_code == 401
    for page in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        assert (await stranger.get(page)).status_code == 404, page
    viewer = await api.as_role(Role.viewer)
    schema = (await viewer.get("/openapi.json")).json()
    assert schema["info"]["title"] == "citycast hub" and "/api/sites" in schema["paths"]
    api.ctx.public_api_docs = True  # serve --public-api-docs
    assert (await stranger.get("/openapi.json")).status_code == 200


@pytest.mark.parametrize(
    "bad",
    [
        "https://tiles.example/{z}/{x}/{y}.png; script-src *",  # a second directive smuggled into the policy
        "https://tiles.example/{z}/{x}/{y}.png 'unsafe-inline'",
        "https://*/{z}/{x}/{y}.png",
        "javascript:alert(1)//{z}/{x}/{y}",
        "data:image/png;base64,{z}{x}{y}",
        "https://user:pw@tiles.example/{z}/{x}/{y}.png",
        "https://tiles.example/map.png",  # no placeholders: not a tile template
        "https://a{s}.tiles.example/{z}/{x}/{y}.png",
        "https://tiles.example/{z}/{x}/{y}.png\r\nSet-Cookie: x=1",
    ],
)
async def test_a_tile_setting_cannot_open_the_policy(api: Api, bad: str) -> None:
    admin = await api.as_role(Role.admin)
    r = await admin.put("/api/settings", json={"retention_days": 0, "tile_url": bad})
    assert r.status_code == 422, r.text
    csp = (await api.client().get("/")).headers["content-security-policy"]
    assert "img-src 'self' data:;" in csp


async def test_the_admins_tile_server_and_only_it_is_allowed(api: Api) -> None:
    admin = await api.as_role(Role.admin)
    r = await admin.put(
        "/api/settings", json={"retention_days": 3, "tile_url": "https://{s}.Tile.example:8443/{z}/{x}/{y}.png"}
    )
    assert r.status_code == 200 and r.json()["tile_url"].startswith("https://{s}.Tile")
    csp = (await api.client().get("/")).headers["content-security-policy"]
    assert "img-src 'self' data: https://*.tile.example:8443;" in csp
    # A viewer's console reads it from the hub; leaving the field out keeps it, "" clears it.
    viewer = await api.as_role(Role.viewer)
    assert (await viewer.get("/api/settings")).json()["tile_url"] == "https://{s}.Tile.example:8443/{z}/{x}/{y}.png"
    assert (await admin.put("/api/settings", json={"retention_days": 3})).json()["tile_url"] != ""
    assert (await admin.put("/api/settings", json={"retention_days": 3, "tile_url": ""})).json()["tile_url"] == ""
    assert "img-src 'self' data:;" in (await api.client().get("/")).headers["content-security-policy"]
    assert (await viewer.put("/api/settings", json={"retention_days": 3, "tile_url": ""})).status_code == 403
