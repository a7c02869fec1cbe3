"""The console in Urdu: the catalogues agree with each other and with the code, a user switches to Urdu and the
choice is kept on the hub (a fresh sign-in in an English browser comes up in Urdu), the page is right-to-left, no
English word of the catalogue is left on the main views, and screenshots at laptop and phone size; the Go live
page follows the user's language."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from tests.helpers import ConsoleHub

STATIC = Path(__file__).resolve().parents[3] / "src/citycast/hub/console/static"
DOCS_IMG = Path(__file__).resolve().parents[3] / "docs/img"
LAPTOP = {"width": 1366, "height": 768}
PHONE = {"width": 390, "height": 844}
FILE_NAME = re.compile(r"\.(?:js|css|html|json|png)$")
VIEWS = ("map", "onair", "sites", "schedule", "alerts", "recordings", "receipts", "pins", "admin")


def catalogue(lang: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((STATIC / "i18n" / f"{lang}.json").read_text(encoding="utf-8"))
    return data


def texts(value: Any) -> list[str]:
    """A message's texts: itself, or each of its plural forms."""
    return list(value.values()) if isinstance(value, dict) else [value]


def sources() -> dict[str, str]:
    pages = [*STATIC.glob("*.html"), *STATIC.glob("*.js"), *STATIC.glob("js/**/*.js")]
    # js/i18n.js is the mechanism (its comments show made-up keys), not a user of keys.
    return {
        p.relative_to(STATIC).as_posix(): p.read_text(encoding="utf-8")
        for p in pages
        if "vendor" not in p.parts and p.name != "i18n.js"
    }


def test_catalogues_have_the_same_keys_and_every_key_used_exists() -> None:
    en, ur = catalogue("en"), catalogue("ur")
    assert set(en) == set(ur), f"only in en: {set(en) - set(ur)}; only in ur: {set(ur) - set(en)}"
    for key, value in en.items():
        # Plural forms alike, placeholders alike: a translation cannot drop the number it is about.
        assert isinstance(value, dict) == isinstance(ur[key], dict), key
        for a, b in zip(texts(value), texts(ur[key]), strict=False):
            assert set(re.findall(r"\{(\w+)\}", a)) == set(re.findall(r"\{(\w+)\}", b)), key
        assert all(t.strip() for t in texts(ur[key])), f"{key} is empty in Urdu"
    namespaces = {k.split(".", 1)[0] for k in en}
    used: dict[str, set[str]] = {}
    prefixes: set[str] = set()
    for name, text in sources().items():
        keys = set(re.findall(r"data-i18n(?:-[a-z-]+)?=\"([^\"]+)\"", text))
        # In code: a quoted literal that looks like a key of a namespace the catalogue has (t('x.y'), ternaries).
        literals = re.findall(r"['\"]([a-z_]+\.[a-z_. ]+)['\"]", text)
        keys |= {k for k in literals if k.split(".", 1)[0] in namespaces and not FILE_NAME.search(k)}
        keys |= {f"{ns}.{word}" for ns, word in re.findall(r"t\(`([a-z_]+)\.([a-z_]+)`", text)}
        prefixes |= set(re.findall(r"tOr\(`([a-z_]+)\.\$\{", text))
        used[name] = keys
    missing = {name: sorted(k for k in keys if k not in en) for name, keys in used.items()}
    assert {n: m for n, m in missing.items() if m} == {}
    assert prefixes <= namespaces, prefixes - namespaces
    assert sum(len(k) for k in used.values()) > 250  # the scan finds what it is for
    # Every English text of the pages is marked for translation: no element's own first text is left unmarked.
    tags = "h1|h2|h3|th|td|button|legend|option|summary|label|p|a|span|li|div|strong"
    for page in ("index.html", "golive.html"):
        html = (STATIC / page).read_text(encoding="utf-8")
        unmarked = re.findall(rf"<(?:{tags})(?![^>]*data-i18n)[^>]*>([A-Za-z][^<]*)<", html)
        assert unmarked == [], (page, unmarked)


# Visible texts (and placeholders, titles) of the page, less the map's own attribution and what is marked as a name
# (translate="no": a user name such as "admin" is not the word "admin").
VISIBLE_TEXTS = """() => {
  const out = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const node = walker.currentNode;
    const text = node.textContent.trim();
    const el = node.parentElement;
    if (!text || !el || !el.checkVisibility() || el.closest('.leaflet-control-attribution, [translate=no]')) continue;
    out.push(text);
  }
  for (const el of document.querySelectorAll('[placeholder], [title]')) {
    if (!el.checkVisibility()) continue;
    for (const a of ['placeholder', 'title']) if (el.getAttribute(a)) out.push(el.getAttribute(a).trim());
  }
  return out;
}"""


def english_left(shown: list[str]) -> list[str]:
    """The shown texts that are an English message (or a whole filled-in English template) not the same in Urdu."""
    en, ur = catalogue("en"), catalogue("ur")
    exact: set[str] = set()
    templates: list[re.Pattern[str]] = []
    for key, value in en.items():
        for text, urdu in zip(texts(value), texts(ur[key]), strict=False):
            if text == urdu:
                continue  # a proper noun or a unit (citycast, dBFS, {user} ({role})): the same in both
            if "{" not in text:
                exact.add(text.strip())
            elif len(re.sub(r"\{\w+\}|[^A-Za-z]", "", text)) >= 4:
                parts = re.split(r"\{\w+\}", text)
                templates.append(re.compile(".+?".join(re.escape(p) for p in parts), re.S))
    # Case counts: "SITE" (a district of Karachi) is a name, "Site" the word.
    return [s for s in shown if s in exact or any(p.fullmatch(s) for p in templates)]


def sign_in(page: Any, hub: ConsoleHub) -> None:
    page.get_by_test_id("login-view").wait_for(state="visible")
    page.get_by_test_id("login-username").fill("admin")
    page.get_by_test_id("login-password").fill(hub.admin_password)
    page.get_by_test_id("login-submit").click()
    page.get_by_test_id("view-map").wait_for(state="visible")
    page.wait_for_function("() => window.citycast.status().wsConnected", timeout=15_000)


@pytest.mark.slow  # a whole hub and Chromium
def test_the_console_in_urdu(page: Any, console_hub: ConsoleHub, tmp_path: Path) -> None:
    ur = catalogue("ur")
    # An English browser: the sign-in page is English, and a wrong password is said in the page's language.
    assert page.evaluate("document.documentElement.lang") == "en" and page.evaluate("document.dir") in ("", "ltr")
    page.get_by_test_id("login-language").select_option("ur")
    page.wait_for_function("() => document.dir === 'rtl' && document.documentElement.lang === 'ur'")
    page.get_by_test_id("login-username").fill("admin")
    page.get_by_test_id("login-password").fill("not-the-password")
    page.get_by_test_id("login-submit").click()
    page.wait_for_function("t => document.querySelector('#login-error').textContent === t", arg=ur["login.wrong"])
    # The top bar's switch keeps the choice on the hub, with the user.
    page.get_by_test_id("login-language").select_option("en")
    sign_in(page, console_hub)
    assert page.evaluate("document.dir") == "ltr"
    with console_hub.api() as api:
        assert api.get("/api/me").json()["language"] == "en"
    page.get_by_test_id("language-select").select_option("ur")
    page.wait_for_function("() => document.dir === 'rtl'")
    with console_hub.api() as api:
        me = api.get("/api/me").json()
    assert me["username"] == "admin" and me["language"] == "ur"

    # Forget this browser's memory of it: a fresh sign-in finds the language on the hub.
    page.evaluate("() => { localStorage.clear(); return fetch('api/logout', {method: 'POST'}); }")
    page.reload()
    page.wait_for_function("() => document.documentElement.lang === 'en'")
    sign_in(page, console_hub)
    page.wait_for_function("() => document.dir === 'rtl' && document.documentElement.lang === 'ur'")
    assert page.get_by_test_id("nav-sites").text_content() == ur["nav.sites"]
    font = page.evaluate("getComputedStyle(document.body).fontFamily")
    assert "Noto Naskh Arabic" in font
    page.wait_for_function("() => document.fonts.check('16px \"Noto Naskh Arabic\"', 'اردو')")

    found: dict[str, list[str]] = {}
    for view in VIEWS:
        page.evaluate("v => { location.hash = '#/' + v; }", view)
        page.get_by_test_id(f"view-{view}").wait_for(state="visible")
        page.wait_for_load_state("networkidle")
        left = english_left(page.evaluate(VISIBLE_TEXTS))
        if left:
            found[view] = left
        page.screenshot(path=str(tmp_path / f"console-ur-{view}.png"))  # kept with the test's files, to look at
    assert found == {}, f"English left on the Urdu console: {found}"
    # Mirrored: the navigation starts at the right, the sign-out button is left of the brand.
    brand = page.locator(".topbar .brand").bounding_box()
    who = page.locator(".topbar .who").bounding_box()
    assert brand["x"] > who["x"]
    # Times in the hub's zone and the user's locale (the schedule's next runs, Urdu month names).
    page.evaluate("() => { location.hash = '#/map'; }")
    page.get_by_test_id("view-map").wait_for(state="visible")
    page.wait_for_timeout(300)  # the canvas and the fonts settle
    page.set_viewport_size(LAPTOP)
    page.screenshot(path=str(tmp_path / "console-ur-laptop.png"))
    page.set_viewport_size(PHONE)
    page.wait_for_timeout(300)
    page.screenshot(path=str(tmp_path / "console-ur-phone.png"))
    for name in ("console-ur-laptop.png", "console-ur-phone.png"):
        assert (tmp_path / name).stat().st_size > 10_000
        # A test run leaves the checkout as it found it; the docs' pictures are refreshed only when asked.
        if os.environ.get("CITYCAST_UPDATE_DOCS_IMG") == "1":
            shutil.copyfile(tmp_path / name, DOCS_IMG / name)

    # The Go live page speaks the user's language too.
    page.goto(console_hub.url + "/golive.html")
    page.wait_for_function("() => document.dir === 'rtl'")
    page.wait_for_function("t => document.getElementById('go').textContent === t", arg=ur["golive.go"])
    assert english_left(page.evaluate(VISIBLE_TEXTS)) == []

    # Back to English for the tests that share this hub.
    with console_hub.api() as api:
        assert api.put("/api/me/language", json={"language": "en"}).status_code == 200
