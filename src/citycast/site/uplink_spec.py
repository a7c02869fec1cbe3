"""What a site's uplinks are, as the command line and enrolment give them: parsed without the bus's libraries.

`citycast site` reads these before it re-executes itself (citycast.site.main), so this module imports nothing
heavy: every library its parent loads costs start-up time on a box coming back from a power cut.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlparse


@dataclass(frozen=True)
class Uplink:
    """One path to one city server: `url`, and `bind` the local side it must leave by: `ADDR`, `%IFACE` or
    `ADDR%IFACE` (an interface needs root or CAP_NET_RAW: SO_BINDTODEVICE)."""

    url: str
    bind: str | None = None

    @property
    def label(self) -> str:
        """How telemetry and the console name this path: the server's host:port, and the local side if bound."""
        p = urlparse(self.url)
        where = f"{p.hostname}:{p.port or 4222}" if p.hostname else self.url
        return f"{where} via {self.bind}" if self.bind else where

    def local(self) -> tuple[str | None, str | None]:
        """(address, interface) from `bind`. Raises ValueError for one that is neither."""
        if not self.bind:
            return None, None
        addr, _, dev = self.bind.partition("%")
        if addr:
            try:
                ipaddress.ip_address(addr)
            except ValueError:
                raise ValueError(f"uplink bind {self.bind!r}: {addr!r} is not an IP address") from None
        if not addr and not dev:
            raise ValueError(f"uplink bind {self.bind!r} names neither an address nor an interface")
        return addr or None, dev or None


def parse_uplinks(urls: list[str], binds: list[str] | None = None) -> list[Uplink]:
    """`--nats` values (each may be a comma list) and `--uplink-bind` values, matched in order: the i-th bind is
    the i-th connection's ("" or "-" leaves one unbound). Raises ValueError with what is wrong."""
    flat = [u.strip() for value in urls for u in value.split(",") if u.strip()]
    if not flat:
        raise ValueError("no NATS URL given")
    seen: set[str] = set()
    for url in flat:
        if url in seen:
            raise ValueError(f"{url} is given twice: each uplink is its own city server")
        seen.add(url)
    bind_list = [b.strip() for value in binds or [] for b in value.split(",")]
    if len(bind_list) > len(flat):
        raise ValueError(f"{len(bind_list)} --uplink-bind values for {len(flat)} NATS URLs")
    out = []
    for i, url in enumerate(flat):
        bind = bind_list[i] if i < len(bind_list) and bind_list[i] not in ("", "-") else None
        uplink = Uplink(url, bind)
        uplink.local()  # a bad bind fails at start, not at the first reconnect
        out.append(uplink)
    return out
