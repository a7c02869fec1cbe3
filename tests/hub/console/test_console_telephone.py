"""The console's telephone controls in headless Chromium against a real hub with real site agents: speaker PINs
(a generated PIN is shown once, works with the hub's own PIN store, is listed by its hint only, can be disabled and
deleted), talkback ("Listen") on one site at a time, the "Go live" link by role, and a `pin_abuse` alert (which
has no site) in the alerts list."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select
from tests.helpers import ConsoleHub, wait_until_sync

from citycast.hub.db.models import Site
from citycast.hub.telephone.pins import PinStore, SpeakerGrant

pytestmark = pytest.mark.slow


def sign_in(page: Any, username: str, password: str) -> None:
    page.get_by_test_id("login-view").wait_for(state="visible")
    page.get_by_test_id("login-username").fill(username)
    page.get_by_test_id("login-password").fill(password)
    page.get_by_test_id("login-submit").click()
    # Not the map view: after a sign-out the page stays on the view the last user left it on.
    page.get_by_test_id("whoami").filter(has_text=f"{username} (").wait_for(state="visible")
    page.wait_for_function("() => window.citycast.status().wsConnected", timeout=15_000)


def add_user(hub: ConsoleHub, username: str, password: str, role: str) -> None:
    with hub.api() as api:
        r = api.post("/api/users", json={"username": username, "password": password, "role": role})
        assert r.status_code in (200, 201), r.text


def api_pins(hub: ConsoleHub) -> list[dict[str, Any]]:
    with hub.api() as api:
        r = api.get("/api/pins")
        assert r.status_code == 200, r.text
        pins: list[dict[str, Any]] = r.json()
        return pins


async def _verify_pin(hub: ConsoleHub, pin: str) -> SpeakerGrant | None:
    return await PinStore(hub.hub.db).verify(pin, dt.datetime.now(dt.UTC))


async def _talkback_site(hub: ConsoleHub) -> str | None:
    control = hub.hub.talkback
    assert control is not None
    return control.current.site if control.current is not None else None


def hub_talkback(hub: ConsoleHub) -> str | None:
    return hub.call(_talkback_site(hub))


def enrolled(hub: ConsoleHub, name: str) -> bool:
    with hub.hub.db.session() as s:
        site = s.scalars(select(Site).where(Site.name == name)).one()
        return site.nkey_public is not None and site.revoked_at is None


def test_speaker_pin_is_shown_once_listed_by_hint_disabled_and_deleted(
    page: Any, console_hub: ConsoleHub, artifacts: Path
) -> None:
    hub = console_hub
    sign_in(page, "admin", hub.admin_password)
    page.get_by_test_id("nav-pins").click()
    page.get_by_test_id("view-pins").wait_for(state="visible")

    # A generated PIN for the Saddar zone only.
    form = page.get_by_test_id("pin-form")
    form.get_by_test_id("pin-label").fill("Imam, Saddar mosque")
    form.get_by_test_id("pin-zone-saddar").check()
    assert not form.get_by_test_id("pin-zone-all").is_checked()
    form.get_by_test_id("pin-priority").select_option("emergency")
    assert form.get_by_test_id("pin-mode-generate").is_checked()
    form.get_by_test_id("pin-submit").click()
    once = page.get_by_test_id("pin-once")
    once.wait_for(state="visible", timeout=10_000)
    pin = once.get_by_test_id("pin-once-value").text_content().strip()
    assert re.fullmatch(r"\d{6}", pin), pin
    assert "not shown again" in once.text_content()
    assert once.get_by_test_id("pin-once-label").text_content() == "Imam, Saddar mosque"

    # The hub lists it by its hint only, and the PIN the page showed is the one the telephone will accept.
    listed = [p for p in api_pins(hub) if p["label"] == "Imam, Saddar mosque"]
    assert len(listed) == 1 and "pin" not in listed[0]
    created = listed[0]
    assert created["pin_hint"] == pin[-2:]
    assert created["zone_ids"] == [hub.zone_ids["saddar"]] and created["priority"] == "emergency"
    assert created["enabled"] is True and created["valid_now"] is True
    grant = hub.call(_verify_pin(hub, pin))
    assert grant is not None and grant.pin_id == created["id"] and grant.zone_ids == (hub.zone_ids["saddar"],)

    row = page.locator(f'[data-testid="pin-row"][data-pin-id="{created["id"]}"]')
    row.wait_for(state="visible")
    assert row.get_by_test_id("pin-hint").text_content() == f"••{pin[-2:]}"
    assert "saddar" in row.text_content() and "emergency" in row.text_content()
    assert row.get_by_test_id("pin-toggle").is_checked()

    # A typed PIN the hub already has is refused, with the hub's reason on screen and no PIN box.
    page.get_by_test_id("pin-once-dismiss").click()
    assert once.is_hidden() and page.get_by_test_id("pin-once-value").text_content() == ""
    form.get_by_test_id("pin-label").fill("Copycat")
    form.get_by_test_id("pin-mode-typed").check()
    form.get_by_test_id("pin-value").fill(pin)
    form.get_by_test_id("pin-submit").click()
    error = page.get_by_test_id("toast-error").filter(has_text="already in use")
    error.wait_for(state="visible", timeout=10_000)
    assert once.is_hidden()
    assert not [p for p in api_pins(hub) if p["label"] == "Copycat"]

    # A typed PIN with a validity window: accepted, never echoed back, listed with its window.
    form.get_by_test_id("pin-label").fill("Relief coordinator")
    form.get_by_test_id("pin-value").fill("582004")
    form.get_by_test_id("pin-zone-all").check()
    form.get_by_test_id("pin-priority").select_option("live")
    form.get_by_test_id("pin-valid-until").fill("2099-12-31T18:00")
    form.get_by_test_id("pin-submit").click()
    typed_row = page.locator('[data-testid="pin-row"][data-label="Relief coordinator"]')
    typed_row.wait_for(state="visible", timeout=10_000)
    assert once.is_hidden()
    assert typed_row.get_by_test_id("pin-hint").text_content() == "••04"
    assert "all zones" in typed_row.text_content()
    assert "until 31 Dec 2099" in typed_row.get_by_test_id("pin-validity").text_content()
    typed = next(p for p in api_pins(hub) if p["label"] == "Relief coordinator")
    assert typed["valid_from"] is None and typed["valid_until"].startswith("2099-12-31T13:00")  # 18:00 Karachi
    # The generated PIN was used once (verify above): the list says when, after a reload.
    page.reload()
    page.get_by_test_id("view-pins").wait_for(state="visible")
    row.wait_for(state="visible")
    assert "never" not in row.get_by_test_id("pin-last-used").text_content()
    assert pin not in page.content()  # shown once means once: not after a reload
    page.get_by_test_id("pin-form").get_by_test_id("pin-mode-generate").check()
    page.get_by_test_id("pin-form").get_by_test_id("pin-label").fill("Shown once")
    page.get_by_test_id("pin-form").get_by_test_id("pin-submit").click()
    page.get_by_test_id("pin-once").wait_for(state="visible", timeout=10_000)
    page.locator('[data-testid="pin-row"][data-label="Shown once"]').wait_for(state="visible")
    page.wait_for_timeout(300)
    page.screenshot(path=str(artifacts / "console-pins-laptop.png"))
    page.get_by_test_id("pin-once-dismiss").click()

    # Disable the generated PIN: the hub keeps it, disabled, and the telephone no longer accepts it.
    row.get_by_test_id("pin-toggle").uncheck()
    wait_until_sync(
        lambda: [p["enabled"] for p in api_pins(hub) if p["id"] == created["id"]] == [False],
        "the PIN disabled in the hub",
        timeout=20.0,
    )
    page.wait_for_function(
        'id => { const r = document.querySelector(`[data-testid=pin-row][data-pin-id="${id}"]`);'
        " return r && !r.querySelector('[data-testid=pin-toggle]').checked; }",
        arg=created["id"],
    )
    assert hub.call(_verify_pin(hub, pin)) is None

    # Delete it (two clicks: the button asks first).
    delete = row.get_by_test_id("confirm-delete")
    delete.click()
    assert delete.text_content() == "Sure?"
    delete.click()
    row.wait_for(state="detached", timeout=10_000)
    assert [p for p in api_pins(hub) if p["id"] == created["id"]] == []


def test_listen_opens_talkback_on_one_site_at_a_time(page: Any, console_hub: ConsoleHub) -> None:
    hub = console_hub
    first, second = hub.sites_by_zone["clifton"]
    sign_in(page, "admin", hub.admin_password)
    page.get_by_test_id("nav-sites").click()
    row1 = page.locator(f'[data-testid="site-row"][data-site="{first}"]')
    row2 = page.locator(f'[data-testid="site-row"][data-site="{second}"]')
    row1.wait_for(state="visible")
    listen1, listen2 = row1.get_by_test_id("site-listen"), row2.get_by_test_id("site-listen")
    indicator = page.get_by_test_id("listening")
    assert indicator.is_hidden() and listen1.get_attribute("aria-pressed") == "false"

    # The fixture's sites are enrolled, so the hub can trust their microphones: talkback opens.
    assert enrolled(hub, first) and enrolled(hub, second)
    listen1.click()
    wait_until_sync(lambda: hub_talkback(hub) == first, f"the hub listening to {first}", timeout=20.0)
    page.wait_for_function("name => window.citycast.talkbackSite() === name", arg=first)
    assert listen1.get_attribute("aria-pressed") == "true"
    indicator.wait_for(state="visible")
    assert first in indicator.text_content()

    # Another site: the hub drops the first (one at a time), and the page says so.
    listen2.click()
    wait_until_sync(lambda: hub_talkback(hub) == second, f"the hub listening to {second}", timeout=20.0)
    page.wait_for_function("name => window.citycast.talkbackSite() === name", arg=second)
    assert listen1.get_attribute("aria-pressed") == "false" and listen2.get_attribute("aria-pressed") == "true"
    assert second in indicator.text_content() and first not in indicator.text_content()

    # The same toggle in the site's map popup: it shows the site is being listened to, and stops it.
    page.get_by_test_id("nav-map").click()
    assert page.evaluate("name => window.citycast.openSite(name)", second)
    popup_listen = page.get_by_test_id("site-popup").get_by_test_id("popup-listen")
    popup_listen.wait_for(state="visible")
    assert popup_listen.get_attribute("aria-pressed") == "true"
    popup_listen.click()
    wait_until_sync(lambda: hub_talkback(hub) is None, "the hub listening to no site", timeout=20.0)
    page.wait_for_function("() => window.citycast.talkbackSite() === null")
    indicator.wait_for(state="hidden")
    page.wait_for_function(
        "() => document.querySelector('[data-testid=popup-listen]')?.getAttribute('aria-pressed') === 'false'"
    )
    page.keyboard.press("Escape")

    # A site added from the console but never enrolled: the hub refuses (409) and the page shows its reason.
    page.get_by_test_id("nav-admin").click()
    admin = page.get_by_test_id("site-form")
    admin.get_by_test_id("site-name").fill("lyari-unenrolled")
    admin.get_by_test_id("site-label").fill("Lyari (not enrolled)")
    admin.get_by_test_id("site-lat").fill("24.87")
    admin.get_by_test_id("site-lon").fill("67.0")
    admin.get_by_test_id("site-zone").select_option(label="saddar")
    admin.get_by_test_id("site-submit").click()
    page.get_by_test_id("enrol-command").wait_for(state="visible")
    assert not enrolled(hub, "lyari-unenrolled")
    page.get_by_test_id("nav-sites").click()
    page.get_by_test_id("site-filter").fill("lyari-unenrolled")
    stray = page.locator('[data-testid="site-row"][data-site="lyari-unenrolled"]')
    stray.wait_for(state="visible", timeout=10_000)
    stray.get_by_test_id("site-listen").click()
    page.get_by_test_id("toast-error").filter(has_text="not enrolled").wait_for(state="visible", timeout=10_000)
    assert hub_talkback(hub) is None
    assert page.evaluate("window.citycast.talkbackSite()") is None
    assert stray.get_by_test_id("site-listen").get_attribute("aria-pressed") == "false"
    assert indicator.is_hidden()


def test_go_live_link_by_role(page: Any, console_hub: ConsoleHub) -> None:
    hub = console_hub
    add_user(hub, "op-telephone", "operator-pass-1", "operator")
    add_user(hub, "speaker-one", "speaker-pass-1", "speaker")
    add_user(hub, "viewer-one", "viewer-pass-1", "viewer")

    def golive_path() -> str:
        href: str = page.get_by_test_id("nav-golive").evaluate("a => a.href")
        return urlsplit(href).path

    sign_in(page, "op-telephone", "operator-pass-1")
    link = page.get_by_test_id("nav-golive")
    assert link.is_visible() and golive_path() == "/golive.html"
    assert page.get_by_test_id("nav-pins").is_visible()
    assert page.request.get(link.evaluate("a => a.href")).status == 200
    page.get_by_test_id("logout").click()
    page.get_by_test_id("login-view").wait_for(state="visible")
    assert link.is_hidden()

    # A speaker may go live but has no say over PINs or talkback.
    sign_in(page, "speaker-one", "speaker-pass-1")
    assert link.is_visible() and golive_path() == "/golive.html"
    assert page.get_by_test_id("nav-pins").is_hidden()
    page.get_by_test_id("nav-sites").click()
    page.locator('[data-testid="site-row"]').first.wait_for()
    assert page.locator('[data-testid="site-listen"]').first.is_hidden()
    page.get_by_test_id("logout").click()
    page.get_by_test_id("login-view").wait_for(state="visible")

    sign_in(page, "viewer-one", "viewer-pass-1")
    assert link.is_hidden()
    assert page.get_by_test_id("nav-pins").is_hidden()
    # Everyone sees the telephone's state on the on-air view; this hub runs without --sip.
    page.get_by_test_id("nav-onair").click()
    status = page.get_by_test_id("telephone-status")
    status.get_by_text("Telephone off").wait_for(timeout=10_000)


def test_pin_abuse_alert_without_a_site_is_listed(page: Any, console_hub: ConsoleHub) -> None:
    """The telephone's PIN store raises `pin_abuse` alerts (site: null); the console lists them live and after a
    reload, naming the telephone instead of a site."""
    hub = console_hub
    sign_in(page, "admin", hub.admin_password)
    page.get_by_test_id("nav-alerts").click()
    store = PinStore(hub.hub.db, publish=hub.hub.events.publish)
    hub.call(store.record_failure("sip:+923001234567@192.0.2.7", tries=3, outcome="exhausted", alert=True))
    item = page.locator('[data-testid="alert-item"][data-kind="pin_abuse"]')
    item.first.wait_for(state="visible", timeout=10_000)
    text = item.first.text_content()
    assert "telephone" in text and "used up its 3 PIN tries" in text and "null" not in text
    page.get_by_test_id("toast-error").filter(has_text="PIN tries").wait_for(state="visible", timeout=5_000)
    assert "null" not in page.get_by_test_id("toasts").text_content()
    page.reload()
    page.get_by_test_id("view-alerts").wait_for(state="visible")
    item.first.wait_for(state="visible", timeout=10_000)
    assert "used up its 3 PIN tries" in item.first.text_content()
