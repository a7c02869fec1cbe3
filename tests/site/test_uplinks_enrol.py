"""Enrolment hands a site every city server of its zone (an admin lists them through the API), and the site
built from those credentials connects to each of them."""

from __future__ import annotations

from pathlib import Path

import httpx

from citycast.bus.server import free_port
from citycast.hub.runtime import Hub, HubOptions
from citycast.site.enrol import SiteCredentials, enrol
from citycast.site.run import SiteOptions, build_site
from citycast.site.uplinks import Uplink

CITY_A, CITY_B = "tls://city-a.karachi.example:4222", "tls://10.80.0.2:4222"


async def test_a_zone_lists_its_city_servers_and_an_enrolled_site_dials_them_all(tmp_path: Path) -> None:
    hub = Hub(HubOptions(data_dir=tmp_path / "hub", http_port=free_port(), nats_port=free_port(),
                         https=("127.0.0.1", free_port())))  # fmt: skip
    await hub.start()
    try:
        assert hub.tls is not None and hub.https_url is not None
        async with httpx.AsyncClient(base_url=hub.https_url, timeout=20, verify=hub.tls.client_context()) as api:
            r = await api.post("/api/login", json={"username": "admin", "password": hub.admin_password})
            api.headers["Authorization"] = f"Bearer {r.json()['token']}"
            # what an admin may not list: no URL, a URL with a path or credentials, one server twice, too many
            for bad in (
                ["karachi:4222"],
                ["http://city:4222"],
                ["nats://city"],
                ["nats://user:pw@city:4222"],
                ["nats://city:4222/x"],
                [CITY_A, CITY_A],
                [f"nats://c{i}:4222" for i in range(9)],
            ):
                r = await api.post("/api/zones", json={"name": "karachi", "channel": 7, "city_servers": bad})
                assert r.status_code == 422, (bad, r.text)
            r = await api.post("/api/zones", json={"name": "karachi", "channel": 7, "city_servers": [CITY_A]})
            assert r.status_code == 201, r.text
            zone = r.json()
            assert zone["city_servers"] == [CITY_A]
            r = await api.patch(f"/api/zones/{zone['id']}", json={"city_servers": [CITY_A, CITY_B]})
            assert r.status_code == 200 and r.json()["city_servers"] == [CITY_A, CITY_B], r.text
            assert (await api.get("/api/zones")).json()[0]["city_servers"] == [CITY_A, CITY_B]
            r = await api.post("/api/sites", json={"name": "s1", "lat": 24.86, "lon": 67.02, "zone_id": zone["id"]})
            assert r.status_code in (200, 201), r.text
            token = r.json()["enrol_token"]
            r = await api.post("/api/sites", json={"name": "s2", "lat": 24.87, "lon": 67.02})  # in no zone
            token_no_zone = r.json()["enrol_token"]
        path = tmp_path / "site" / "site.json"
        creds = await enrol(hub.https_url, token, path)
        assert creds.city_servers == [CITY_A, CITY_B]
        assert SiteCredentials.load(path).city_servers == [CITY_A, CITY_B]  # kept across restarts
        agent = build_site(SiteOptions(name="", nats_url="", trust=Path("/nonexistent"), sink="timed",
                                       credentials=creds, credentials_path=path))  # fmt: skip
        assert agent.config.uplinks == [Uplink(CITY_A), Uplink(CITY_B)]
        # the command line still wins, and binds each connection to its own local address
        agent = build_site(SiteOptions(name="", nats_url="", trust=Path("/nonexistent"), sink="timed",
                                       credentials=creds, credentials_path=path,
                                       uplink_binds=["10.0.0.2", "10.1.0.2"]))  # fmt: skip
        assert agent.config.uplinks == [Uplink(CITY_A, "10.0.0.2"), Uplink(CITY_B, "10.1.0.2")]
        # a site in no zone dials what the hub names, as before: one connection
        other = await enrol(hub.https_url, token_no_zone, tmp_path / "site2" / "site.json")
        assert other.city_servers == []
        other_path = tmp_path / "site2" / "site.json"
        agent = build_site(SiteOptions(name="", nats_url="", trust=Path("/nonexistent"), sink="timed",
                                       credentials=other, credentials_path=other_path))  # fmt: skip
        assert agent.config.uplinks == [] and agent.config.nats_url == other.nats_urls[0]
    finally:
        await hub.stop()


def test_credentials_from_before_city_servers_still_load(tmp_path: Path) -> None:
    """A site enrolled before zones listed city servers has no such key in its file: it loads, with none."""
    import json

    from citycast.bus import jwt
    from citycast.bus.jwt import KeyKind

    seed = jwt.new_seed(KeyKind.USER)
    account = jwt.new_seed(KeyKind.ACCOUNT)
    token = jwt.encode(account, jwt.public_key(seed), "s1", {"type": "user"})
    data = {
        "site": "s1", "prefix": "citycast", "nats_urls": ["nats://hub:4222"], "user_jwt": token, "seed": seed,
        "trusted_keys": ["00" * 32], "delay_ms": 300.0, "time_subject": "citycast.time", "inbox_prefix": "_INBOX_s1",
    }  # fmt: skip
    path = tmp_path / "site.json"
    path.write_text(json.dumps(data))
    path.chmod(0o600)
    assert SiteCredentials.load(path).city_servers == []
