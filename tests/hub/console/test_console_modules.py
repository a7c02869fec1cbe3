"""The console's code stays ES modules with its state in one store: every script of the pages is a module served
as JavaScript, every module under static/ is loaded by the page (none orphaned, none failing), a signed-in
console adds nothing to the page's global scope but its test hook (and Leaflet's `L`), and no module but the
store holds top-level mutable state."""

from __future__ import annotations

import mimetypes
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from tests.helpers import ConsoleHub, wait_until_sync

from citycast.hub.api import ConsoleFiles

STATIC = Path(__file__).resolve().parents[3] / "src/citycast/hub/console/static"
STORE = STATIC / "js/store.js"
# The globals a page may add: the console's test hook (markers, status; read by these tests and the load bench)
# and Leaflet's, a classic vendor script (`L`, its UMD export `leaflet`, and the `_leaflet_*` stamps it puts on
# the objects it listens to, window included).
CONSOLE_GLOBALS = {"citycast", "L", "leaflet"}

# What a page's own global scope holds beyond a blank frame of the same origin: the window's own properties
# (a classic script's functions and `var`s, `window.x = …`).
WINDOW_ADDITIONS = """() => {
  const frame = document.createElement('iframe');
  document.body.append(frame);
  const blank = new Set(Object.getOwnPropertyNames(frame.contentWindow));
  frame.remove();
  return Object.getOwnPropertyNames(window).filter((n) => !blank.has(n) && !/^[0-9]+$/.test(n));
}"""

# A module-level binding that holds changing state: `let`/`var`, or a `const` bound to a collection or an object
# literal (frozen constants, functions and classes are fine).
MUTABLE_TOP_LEVEL = re.compile(r"^(?:export\s+)?(?:let|var)\s|^(?:export\s+)?const\s+\w+\s*=\s*(?:new\s|\[|\{)", re.M)


def app_modules() -> list[Path]:
    return sorted(p for p in STATIC.rglob("*.js") if "vendor" not in p.relative_to(STATIC).parts)


class Scripts(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script":
            self.scripts.append(dict(attrs))


@pytest.mark.slow  # a whole hub (and Chromium)
def test_pages_load_their_own_code_as_modules_served_as_javascript(console_hub: ConsoleHub) -> None:
    with httpx.Client(base_url=console_hub.url, timeout=10.0) as client:
        for page in ("index.html", "golive.html"):
            parser = Scripts()
            parser.feed(client.get(f"/{page}").text)
            own = [s for s in parser.scripts if not str(s.get("src")).startswith("vendor/")]
            assert own, f"{page} loads no script of its own"
            for script in own:
                assert script.get("type") == "module" and script.get("src"), f"{page}: {script} is not a module file"
        for path in app_modules():
            r = client.get("/" + path.relative_to(STATIC).as_posix())
            assert r.status_code == 200, path
            # Under nosniff a browser refuses a module served as anything but JavaScript.
            assert r.headers["content-type"].split(";")[0] == "text/javascript", (path, r.headers["content-type"])


def test_no_module_but_the_store_holds_top_level_mutable_state() -> None:
    console = [p for p in app_modules() if p.name != "golive.js"]  # the Go live page is a page of its own
    assert STORE in console and len(console) >= 10, "the console's modules are not where this test looks"
    offenders = {
        p.relative_to(STATIC).as_posix(): MUTABLE_TOP_LEVEL.findall(p.read_text())
        for p in console
        if p != STORE and MUTABLE_TOP_LEVEL.search(p.read_text())
    }
    assert offenders == {}, f"top-level mutable state outside js/store.js: {offenders}"
    # The check itself finds what it is for.
    assert MUTABLE_TOP_LEVEL.search(STORE.read_text())
    assert MUTABLE_TOP_LEVEL.search("let route = 'map';\n") and MUTABLE_TOP_LEVEL.search("const rows = new Map();\n")
    assert not MUTABLE_TOP_LEVEL.search("const PAGE_SIZE = 50;\nexport const X = Object.freeze({});\n")


@pytest.mark.slow  # a whole hub (and Chromium)
def test_signed_in_console_loads_every_module_and_adds_no_globals(
    browser_context: Any, console_hub: ConsoleHub
) -> None:
    page = browser_context.pages[0] if browser_context.pages else browser_context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    scripts: set[str] = set()
    page.on("response", lambda r: scripts.add(urlsplit(r.url).path) if r.url.endswith(".js") else None)
    # Signed in by the session cookie, as a reload would be: the page finds its user at /api/me.
    r = page.request.post(
        console_hub.url + "/api/login", data={"username": "admin", "password": console_hub.admin_password}
    )
    assert r.ok
    page.goto(console_hub.url + "/")
    page.wait_for_function("() => window.citycast && window.citycast.status().wsConnected", timeout=20_000)
    wait_until_sync(
        lambda: page.evaluate("window.citycast.markerCount()") >= len(console_hub.site_names), "every site's marker"
    )
    for route in ("onair", "sites", "schedule", "alerts", "recordings", "pins", "admin", "map"):
        page.evaluate("r => { location.hash = '#/' + r; }", route)
        page.get_by_test_id(f"view-{route}").wait_for(state="visible")

    expected = {"/" + p.relative_to(STATIC).as_posix() for p in app_modules() if p.name != "golive.js"}
    assert scripts == expected | {"/vendor/leaflet.js"}, "a module is orphaned, or the page loads one it should not"
    added = {n for n in page.evaluate(WINDOW_ADDITIONS) if not n.startswith("_leaflet_")}
    assert added == CONSOLE_GLOBALS
    # A classic script's top-level `let`/`const`/`class` are globals too, though not on window: ask V8.
    cdp = browser_context.new_cdp_session(page)
    assert cdp.send("Runtime.globalLexicalScopeNames")["names"] == []
    assert errors == [], errors


@pytest.mark.slow  # a whole hub (and Chromium)
def test_go_live_page_adds_no_globals(browser_context: Any, console_hub: ConsoleHub) -> None:
    page = browser_context.pages[0] if browser_context.pages else browser_context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(console_hub.url + "/golive.html")
    # Its module ran: the sign-in check has answered (nobody is signed in in this browser).
    page.wait_for_function("() => document.getElementById('who').textContent === 'not logged in'")
    page.locator("#login").wait_for(state="visible")
    assert page.evaluate(WINDOW_ADDITIONS) == []
    cdp = browser_context.new_cdp_session(page)
    assert cdp.send("Runtime.globalLexicalScopeNames")["names"] == []
    assert errors == [], errors


async def test_js_is_served_as_javascript_whatever_the_platform_mime_table_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mimetypes.init()
    # What the Windows registry says for .js on many machines: a module served so is refused under nosniff.
    monkeypatch.setitem(mimetypes.types_map, ".js", "text/plain")
    assert mimetypes.guess_type("app.js")[0] == "text/plain"
    files = ConsoleFiles(directory=STATIC, html=True)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=files), base_url="http://hub") as client:
        r = await client.get("/js/store.js")
        assert r.status_code == 200 and r.headers["content-type"] == "text/javascript; charset=utf-8"
        assert (await client.get("/style.css")).headers["content-type"].startswith("text/css")
        # A revalidation answered 304 carries no type to fix.
        assert (await client.get("/js/store.js", headers={"if-none-match": r.headers["etag"]})).status_code == 304
