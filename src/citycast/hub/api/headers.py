"""What keeps the console's page to itself: security headers on every response, the Content-Security-Policy
(with the one tile server an admin configured), and the Origin check of the console's WebSocket.

The console is plain files from this hub (Leaflet included), so the policy allows scripts, styles and fetches from
the hub alone and no inline script at all: an injected `<script>` or event attribute does not run, and a page of
another site can neither frame the console (clickjacking) nor open its live feed with the operator's cookie.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

TILE_URL_MAX = 500
# A Leaflet URL template: letters, digits and the few characters a URL and its {z}/{x}/{y}/{s}/{r} placeholders
# need. Nothing that could end a CSP source list (space, ';', ',', quotes) gets into the header.
_TILE_CHARS = re.compile(r"[A-Za-z0-9._~:/?#@!$&()+=%{}\[\]-]+")
_PLACEHOLDERS = re.compile(r"\{[a-z]\}")
_HOST_LABEL = re.compile(r"[A-Za-z0-9-]{1,63}")


def tile_source(url: str) -> str:
    """The CSP source (`scheme://host[:port]`) of a Leaflet tile URL template, after checking the template.

    Raises ValueError with a sentence for the admin. `{s}` (Leaflet's subdomains) may only be the whole first
    label of the host; it becomes CSP's `*.` wildcard there."""
    if not url or len(url) > TILE_URL_MAX or not _TILE_CHARS.fullmatch(url):
        raise ValueError(f"a tile URL is 1-{TILE_URL_MAX} URL characters (no spaces, quotes, ';' or ',')")
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http"):
        raise ValueError("a tile URL starts with https:// (or http://)")
    if parts.username is not None or parts.password is not None:
        raise ValueError("a tile URL carries no user name or password")
    netloc = parts.netloc
    host, _, port = netloc.rpartition(":") if re.search(r":\d+$", netloc) else (netloc, "", "")
    labels = host.split(".")
    if labels[0] == "{s}":
        labels = labels[1:]
        wildcard = True
    else:
        wildcard = False
    if not labels or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        raise ValueError("a tile URL's host is a DNS name or address ({s} only as its whole first label)")
    if port and not 0 < int(port) < 65536:
        raise ValueError("a tile URL's port is 1-65535")
    if not {"{x}", "{y}", "{z}"} <= set(_PLACEHOLDERS.findall(parts.path + "?" + parts.query)):
        raise ValueError("a tile URL has {z}, {x} and {y} in its path (e.g. https://tile.example/{z}/{x}/{y}.png)")
    source = f"{parts.scheme}://{'*.' if wildcard else ''}{'.'.join(labels).lower()}"
    return f"{source}:{port}" if port else source


def checked_tile_url(url: str | None) -> str | None:
    """For the settings body: None (unchanged), "" (no tile server) or a template `tile_source` accepts."""
    if url:
        tile_source(url)
    return url


def content_security_policy(tile_url: str = "") -> str:
    """The console's policy. `tile_url` is the admin's tile setting (already checked); empty: no tile server."""
    img = "'self' data:" + (f" {tile_source(tile_url)}" if tile_url else "")
    return (
        "default-src 'self'; script-src 'self'; style-src 'self'; "
        f"img-src {img}; connect-src 'self'; media-src 'self'; object-src 'none'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )


class SecurityHeaders:
    """ASGI middleware: every HTTP response carries the headers below (a route may set its own first).
    `policy()` is read per response, so a new tile setting takes effect at the next page load."""

    def __init__(self, app: ASGIApp, policy: Callable[[], str]) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                for name, value in (
                    (b"content-security-policy", self.policy().encode()),
                    (b"x-frame-options", b"DENY"),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"cross-origin-opener-policy", b"same-origin"),
                ):
                    if name not in present:
                        headers.append((name, value))
                html = any(n.lower() == b"content-type" and v.startswith(b"text/html") for n, v in headers)
                if html and b"cache-control" not in present:
                    # A page is never taken from the browser's cache: its policy (the tile host) may have changed.
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _host_port(netloc: str, scheme: str) -> tuple[str, int] | None:
    try:
        parts = urlsplit(f"//{netloc}")
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not host:
        return None
    return host.lower(), port if port is not None else (443 if scheme in ("https", "wss") else 80)


def origin_allowed(origin: str, host: str | None, allowed: Collection[str]) -> bool:
    """Whether a browser page of `origin` may use this hub's WebSocket: the hub's own origin (the one the page
    was served from, i.e. the request's Host, over http or https: a TLS-terminating proxy in front changes the
    scheme the hub sees) or one the operator listed in `allowed`."""
    origin = origin.strip().rstrip("/").lower()
    if origin in {a.strip().rstrip("/").lower() for a in allowed}:
        return True
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or host is None:
        return False
    mine = _host_port(host, parts.scheme)
    theirs = _host_port(parts.netloc, parts.scheme)
    return mine is not None and mine == theirs
