"""The console in a real Chromium under its own security headers: it works with no CSP violation, an injected
inline script does not run, and a `?tiles=` link cannot make it fetch from a server of the link author's choice
(only the tile server an admin set on the hub, which the CSP then allows)."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from tests.helpers import ConsoleHub, wait_until_sync

from citycast.bus.server import free_port

pytestmark = pytest.mark.slow

PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=")
# Recorded in the page before any of its own scripts run (an init script is not subject to the page's CSP).
RECORD_VIOLATIONS = """
window.__csp = [];
document.addEventListener('securitypolicyviolation',
  (e) => window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`));
"""


class TileServer:
    """A real HTTP server on a loopback address, counting every request (a tile server, or an attacker's)."""

    def __init__(self, host: str) -> None:
        self.requests: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(PNG)))
                self.end_headers()
                self.wfile.write(PNG)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, free_port()), Handler)
        self.origin = f"http://{host}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> TileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def sign_in(page: Any, hub: ConsoleHub) -> None:
    page.get_by_test_id("login-view").wait_for(state="visible")
    page.get_by_test_id("login-username").fill("admin")
    page.get_by_test_id("login-password").fill(hub.admin_password)
    page.get_by_test_id("login-submit").click()
    page.get_by_test_id("view-map").wait_for(state="visible")
    page.wait_for_function("() => window.citycast.status().wsConnected", timeout=15_000)


@pytest.fixture
def csp_page(browser_context: Any) -> Iterator[tuple[Any, list[str]]]:
    page = browser_context.pages[0] if browser_context.pages else browser_context.new_page()
    page.add_init_script(RECORD_VIOLATIONS)
    console: list[str] = []
    page.on(
        "console",
        lambda m: console.append(f"{m.text} at {m.location}") if "Content Security Policy" in m.text else None,
    )
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    yield page, console
    assert errors == [], f"uncaught errors in the page: {errors}"


def test_console_works_under_its_csp(csp_page: tuple[Any, list[str]], console_hub: ConsoleHub) -> None:
    page, console = csp_page
    response = page.goto(console_hub.url + "/")
    headers = response.headers
    assert "default-src 'self'" in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    sign_in(page, console_hub)
    # The live feed works (cookie-authenticated WebSocket) and the map shows every site.
    names = console_hub.site_names
    wait_until_sync(
        lambda: all(page.evaluate("n => window.citycast.markerState(n) != null", n) for n in names),
        "every site on the map",
        timeout=30.0,
    )
    for view in ("map", "onair", "sites", "schedule", "alerts", "recordings", "admin"):
        page.goto(f"{console_hub.url}/#/{view}")
        page.get_by_test_id(f"view-{view}").wait_for(state="visible")
        page.wait_for_load_state("networkidle")
    page.goto(console_hub.url + "/golive.html")
    page.locator("#speak").wait_for(state="visible")  # its script ran and asked the hub who is logged in
    assert page.evaluate("window.__csp") == [] and console == []
    # The policy is enforced: an inline script someone manages to inject does not run.
    ran = page.evaluate(
        """() => { const s = document.createElement('script'); s.textContent = 'window.__pwned = 1';
                   document.body.appendChild(s); return window.__pwned === 1; }"""
    )
    assert ran is False
    wait_until_sync(
        lambda: any("script-src" in v for v in page.evaluate("window.__csp")), "the violation report", timeout=5
    )


def test_a_tiles_link_loads_nothing_and_only_the_admins_tile_server_is_used(
    csp_page: tuple[Any, list[str]], console_hub: ConsoleHub
) -> None:
    page, console = csp_page
    with TileServer("127.0.0.2") as attacker, TileServer("127.0.0.3") as tiles:
        page.goto(f"{console_hub.url}/?tiles={attacker.origin}/{{z}}/{{x}}/{{y}}.png#/map")
        sign_in(page, console_hub)
        page.wait_for_load_state("networkidle")
        page.wait_for_timeout(1500)
        assert attacker.requests == []
        # The admin's own tile server, set in the console's settings, is used (and allowed by the CSP).
        page.goto(f"{console_hub.url}/#/admin")
        form = page.get_by_test_id("settings-form")
        form.wait_for(state="visible")
        page.wait_for_function("() => document.querySelector('#settings-form').retention_days.value !== ''")
        page.get_by_test_id("settings-tiles").fill(f"{tiles.origin}/{{z}}/{{x}}/{{y}}.png")
        form.locator("button[type=submit]").click()
        with console_hub.api() as api:
            wait_until_sync(lambda: api.get("/api/settings").json()["tile_url"] != "", "the setting saved", timeout=10)
        page.goto(f"{console_hub.url}/?tiles={attacker.origin}/{{z}}/{{x}}/{{y}}.png#/map")
        wait_until_sync(lambda: len(tiles.requests) > 0, "tiles from the admin's server", timeout=30.0)
        assert f"img-src 'self' data: {tiles.origin}" in page.evaluate(
            "async () => (await fetch('/')).headers.get('content-security-policy')"
        )
        page.wait_for_timeout(1000)
        assert attacker.requests == []
        assert page.evaluate("window.__csp") == [] and console == []
    with console_hub.api() as api:
        got = api.get("/api/settings").json()
        assert got["tile_url"] == f"{tiles.origin}/{{z}}/{{x}}/{{y}}.png"
        api.put("/api/settings", json={"retention_days": got["retention_days"], "tile_url": ""}).raise_for_status()
