"""The feed poller against real HTTP feeds on loopback: two Atom feeds carrying the same alert (one inline, one
by link) put it on air once; a feed that is down, not XML, or an attacker's DOCTYPE only marks that feed in
error, and the poller keeps polling (at least once a minute: here every second)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from tests.helpers import wait_until

from citycast.hub.cap.feeds import FeedPoller
from citycast.hub.db.models import AuditEntry

ATOM = """<?xml version="1.0" encoding="UTF-8"?>
<feed xmlns="http://www.w3.org/2005/Atom">
  <id>urn:feed:{name}</id><title>{name} alerts</title><updated>2026-12-02T09:00:00Z</updated>
  <entry>
    <id>urn:entry:{name}:0142</id><title>Flood warning</title><updated>2026-12-02T09:00:00Z</updated>
    {body}
  </entry>
</feed>
"""


class Feeds:
    def __init__(self) -> None:
        self.bodies: dict[str, bytes] = {}
        self.hits: list[str] = []


@pytest.fixture
def feeds() -> Iterator[tuple[str, Feeds]]:
    state = Feeds()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.hits.append(self.path)
            body = state.bodies.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Type", "application/atom+xml")
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", state
    server.shutdown()


def _inline(alert: bytes) -> bytes:
    cap = alert.decode().split("?>", 1)[1]
    return ATOM.format(name="a", body=f'<content type="application/cap+xml">{cap}</content>').encode()


def _linked(href: str) -> bytes:
    return ATOM.format(name="b", body=f'<link rel="alternate" type="application/cap+xml" href="{href}"/>').encode()


async def test_two_feeds_one_alert_one_address_and_bad_feeds_do_not_stop_it(cap_rig, feeds) -> None:  # type: ignore[no-untyped-def]
    base, state = feeds
    alert = cap_rig.fixture("flood_alert.xml")
    state.bodies = {
        "/a.atom": _inline(alert),
        "/b.atom": _linked("alerts/0142.xml"),  # relative to the feed
        "/alerts/0142.xml": alert,
        "/garbage": b"\x00\x01 not xml",
        "/evil.atom": b'<?xml version="1.0"?><!DOCTYPE feed [<!ENTITY x SYSTEM "file:///etc/passwd">]><feed>&x;</feed>',
    }
    urls = [
        f"{base}/a.atom",
        f"{base}/b.atom",
        f"{base}/garbage",
        f"{base}/evil.atom",
        f"{base}/missing",
        "http://127.0.0.1:9/",
    ]
    async with httpx.AsyncClient(timeout=5.0) as client:
        poller = FeedPoller(cap_rig.service.receive, lambda: urls, lambda: 1.0, client)
        stop = asyncio.Event()
        task = asyncio.create_task(poller.run(stop))
        try:
            await wait_until(lambda: state.hits.count("/a.atom") >= 2, "two polling rounds", timeout=15)
        finally:
            stop.set()
            await task
    live = cap_rig.manager.live()
    assert len(live) == 1 and live[0]["title"] == "CAP: لیاری ندی میں سیلاب کی وارننگ"
    assert state.hits.count("/alerts/0142.xml") == 1  # a linked entry is fetched once per id and updated
    status = {u.rsplit("/", 1)[-1]: st for u, st in poller.status.items()}
    assert status["a.atom"].error == "" and status["b.atom"].error == ""
    assert "not well-formed" in status["garbage"].error
    assert "DOCTYPE" in status["evil.atom"].error
    assert "404" in status["missing"].error
    assert status[""].error  # nothing listens on port 9
    with cap_rig.db.session() as s:
        actions = [e.action for e in s.query(AuditEntry).order_by(AuditEntry.id)]
    assert actions.count("cap.on_air") == 1 and actions.count("cap.duplicate") >= 2
