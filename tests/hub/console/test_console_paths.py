"""The console shows, per site, which of its paths (city servers) are up: a real site agent on two uplinks, one
of them dead, reports `paths`; the hub passes them on; the sites view and the map popup show "paths 1/2"."""

from __future__ import annotations

from typing import Any

import pytest
from tests.helpers import ConsoleHub, wait_until_sync

from citycast.bus.server import free_port
from citycast.media.sinks import TimedSink
from citycast.site.agent import SiteAgent, SiteConfig
from citycast.site.uplinks import Uplink

pytestmark = pytest.mark.slow


def test_a_site_with_one_path_down_shows_it_in_the_sites_view_and_the_popup(page: Any, console_hub: ConsoleHub) -> None:
    name = console_hub.sites_by_zone["korangi"][0]
    index, old = next((i, a) for i, a in enumerate(console_hub.agents) if a.config.name == name)
    console_hub.call(old.stop())
    dead = f"nats://127.0.0.1:{free_port()}"  # a city server that is down: nothing listens there
    cfg = SiteConfig(**{**old.config.__dict__, "uplinks": [Uplink(old.config.nats_url), Uplink(dead)]})
    agent = SiteAgent(cfg, TimedSink(old.clock, block=480), clock=old.clock)
    console_hub.agents[index] = agent  # the fixture stops it
    console_hub.call(agent.start())
    with console_hub.api() as api:
        wait_until_sync(
            lambda: next(s for s in api.get("/api/sites").json() if s["name"] == name).get("paths"),
            "the hub to know the site's paths",
            timeout=20,
        )
        site = next(s for s in api.get("/api/sites").json() if s["name"] == name)
        assert site["paths"] == {f"127.0.0.1:{old.config.nats_url.rsplit(':', 1)[1]}": True,
                                 f"127.0.0.1:{dead.rsplit(':', 1)[1]}": False}  # fmt: skip

    page.get_by_test_id("login-view").wait_for(state="visible")
    page.get_by_test_id("login-username").fill("admin")
    page.get_by_test_id("login-password").fill(console_hub.admin_password)
    page.get_by_test_id("login-submit").click()
    page.wait_for_function("() => window.citycast.status().wsConnected", timeout=15_000)
    page.get_by_test_id("nav-sites").click()
    row = page.locator(f'[data-testid="site-row"][data-site="{name}"]')
    row.wait_for()
    cell = row.get_by_test_id("site-paths")
    wait_until_sync(lambda: cell.text_content() == "paths 1/2", "the sites view to show 1 of 2 paths up", timeout=15)
    assert "down" in (cell.get_attribute("title") or "")
    # the other sites are on one connection: no paths line
    others = page.locator(f'[data-testid="site-row"]:not([data-site="{name}"]) [data-testid="site-paths"]')
    assert all(t == "" for t in others.all_text_contents())
    # the map popup says the same
    page.get_by_test_id("nav-map").click()
    assert page.evaluate("name => window.citycast.openSite(name)", name)
    popup = page.get_by_test_id("popup-paths")
    popup.wait_for()
    assert "paths 1/2" in (popup.text_content() or "")
