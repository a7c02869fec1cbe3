"""The CAP endpoint over real HTTP: who may post (an operator, or a per-feed API key made by an admin), what a
stranger gets (401, then 429 for guessing keys), a malformed or hostile message refused with its reason while
the hub keeps serving, and the alerts list the console draws."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.helpers import Api

from citycast.hub.db.models import Site, Zone

FIXTURES = Path(__file__).parent.parent / "cap" / "fixtures"
CAP_XML = {"Content-Type": "application/cap+xml"}


def _seed(api: Api) -> None:
    with api.ctx.db.session() as s:
        zone = Zone(name="saddar", channel=1)
        s.add(zone)
        s.flush()
        s.add_all([Site(name="s1", lat=24.86, lon=67.03, zone_id=zone.id), Site(name="s3", lat=24.81, lon=67.03)])


async def test_cap_endpoint(api: Api) -> None:
    _seed(api)
    alert = (FIXTURES / "flood_alert.xml").read_bytes()
    anon = api.client()
    assert (await anon.post("/api/cap", content=alert, headers=CAP_XML)).status_code == 401
    viewer = await api.as_role("viewer")
    assert (await viewer.post("/api/cap", content=alert, headers=CAP_XML)).status_code == 403

    admin = await api.as_role("admin")
    r = await admin.put(
        "/api/cap/settings", json={"repeats": 1, "poll_s": 30, "feeds": ["https://ndma.example/cap.atom"]}
    )
    assert r.status_code == 200, r.text
    r = await admin.post("/api/cap/keys", json={"name": "ndma-gateway"})
    assert r.status_code == 201
    key = r.json()["key"]
    assert (await admin.get("/api/cap/settings")).json()["api_keys"] == ["ndma-gateway"]

    # The attacker: an XXE through the endpoint, with a real key (a compromised gateway), then key guessing.
    xxe = alert.replace(
        b'<?xml version="1.0" encoding="UTF-8"?>',
        b'<?xml version="1.0"?><!DOCTYPE alert [<!ENTITY x SYSTEM "file:///etc/passwd">]>',
    ).replace(b"Flood warning for the Lyari river", b"&x;")
    r = await anon.post("/api/cap", content=xxe, headers=CAP_XML | {"X-CAP-Key": key})
    assert r.status_code == 422 and "DOCTYPE" in r.json()["detail"] and "root:" not in r.text
    bad = await asyncio.gather(
        *(anon.post("/api/cap", content=alert, headers=CAP_XML | {"X-CAP-Key": f"cap_guess{i}"}) for i in range(12))
    )
    codes = sorted(b.status_code for b in bad)
    assert codes[0] == 401 and codes[-1] == 429

    # The hub still serves: an operator posts the alert, it goes on air at s1 (s3 is in no zone).
    operator = await api.as_role("operator")
    r = await operator.post("/api/cap", content=alert, headers=CAP_XML)
    assert r.status_code == 200, r.text
    assert r.json()["outcome"] == "on_air" and r.json()["sites"] == ["s1"]
    malformed = (FIXTURES / "malformed_missing_status.xml").read_bytes()
    r = await operator.post("/api/cap", content=malformed, headers=CAP_XML)
    assert r.status_code == 422 and "not valid CAP 1.2" in r.json()["detail"]

    listed = (await viewer.get("/api/cap/alerts")).json()
    assert [(a["outcome"], a["origin"]) for a in listed] == [
        ("refused", "api:operator"),
        ("on_air", "api:operator"),
        ("refused", "key:ndma-gateway"),
    ]
    assert listed[1]["area"]["type"] == "MultiPolygon" and listed[1]["priority"] == "emergency"
    assert (await anon.get("/api/cap/alerts")).status_code == 401
    assert (await viewer.get("/api/cap/settings")).status_code == 403
