"""Polling the authorities' feeds: each URL is fetched every `poll_s` (at most a minute apart). A URL may
answer with a CAP message itself, or with an Atom feed whose entries carry a CAP message inline (in `<content>`)
or link to one (`<link href>`, fetched once per entry id and `updated`). Every message goes to the service,
which ignores what it already has, so two feeds carrying the same alert put it on air once.

A feed that fails (unreachable, not XML, a DOCTYPE, a broken entry) is logged and shown in its status; the
others and the next round go on: nothing a feed sends stops the poller."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urljoin

import httpx
from lxml import etree

from citycast.hub.cap.parse import CAP_NS, MAX_BYTES, CapError, parse_xml

log = logging.getLogger(__name__)

ATOM_NS = "http://www.w3.org/2005/Atom"
SEEN_ENTRIES = 10_000
FEED_TIMEOUT_S = 45.0  # one feed, its linked messages included
ACCEPT = "application/atom+xml, application/cap+xml, application/xml"

Receive = Callable[[bytes, str], Awaitable[object]]


@dataclass
class FeedStatus:
    url: str
    last_polled: dt.datetime | None = None
    last_ok: dt.datetime | None = None
    error: str = ""
    messages: int = 0  # CAP messages handed on in the last round

    def as_dict(self) -> dict[str, object]:
        return {
            "url": self.url,
            "last_polled": self.last_polled.isoformat() if self.last_polled else None,
            "last_ok": self.last_ok.isoformat() if self.last_ok else None,
            "error": self.error,
            "messages": self.messages,
        }


class FeedPoller:
    def __init__(
        self,
        receive: Receive,
        feeds: Callable[[], list[str]],
        poll_s: Callable[[], float],
        client: httpx.AsyncClient,
    ) -> None:
        self.receive = receive
        self.feeds = feeds
        self.poll_s = poll_s
        self.client = client
        self.status: dict[str, FeedStatus] = {}
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()  # (entry id, updated) already fetched

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.poll_once()
            try:
                interval = await asyncio.to_thread(self.poll_s)  # the settings live in the database
                async with asyncio.timeout(max(1.0, min(60.0, interval))):
                    await stop.wait()
            except TimeoutError:
                pass

    async def poll_once(self) -> None:
        urls = list(dict.fromkeys(await asyncio.to_thread(self.feeds)))
        await asyncio.gather(*(self._poll(u) for u in urls))

    async def _poll(self, url: str) -> None:
        st = self.status.setdefault(url, FeedStatus(url))
        st.last_polled = dt.datetime.now(dt.UTC)
        try:
            # A feed that trickles its answer must not hold up the others' round (they are gathered together).
            async with asyncio.timeout(FEED_TIMEOUT_S):
                st.messages = await self._read_feed(url)
            st.last_ok, st.error = st.last_polled, ""
        except Exception as e:  # a feed must never stop the poller: its status says what went wrong
            known = isinstance(e, CapError | httpx.HTTPError)
            st.error = str(e) if known else "timed out" if isinstance(e, TimeoutError) else f"{type(e).__name__}: {e}"
            log.warning("CAP feed %s: %s", url, st.error)

    async def _get(self, url: str) -> bytes:
        data = bytearray()
        async with self.client.stream("GET", url, headers={"Accept": ACCEPT}) as r:
            r.raise_for_status()
            async for chunk in r.aiter_bytes():
                data += chunk
                if len(data) > MAX_BYTES:
                    raise CapError(f"{url} sent more than {MAX_BYTES} bytes")
        return bytes(data)

    async def _read_feed(self, url: str) -> int:
        data = await self._get(url)
        root = parse_xml(data, "feed")
        if root.tag == f"{{{CAP_NS}}}alert":
            await self.receive(data, url)
            return 1
        if root.tag != f"{{{ATOM_NS}}}feed":
            raise CapError(f"{url} is neither a CAP alert nor an Atom feed (root {root.tag!r})")
        n = 0
        for entry in root.findall(f"{{{ATOM_NS}}}entry"):
            try:
                n += await self._entry(url, entry)
            except (CapError, httpx.HTTPError) as e:
                log.warning("CAP feed %s: an entry was skipped: %s", url, e)
        return n

    async def _entry(self, url: str, entry: etree._Element) -> int:
        inline = entry.find(f"{{{ATOM_NS}}}content/{{{CAP_NS}}}alert")
        if inline is not None:
            await self.receive(etree.tostring(inline), url)
            return 1
        href = _cap_link(entry)
        if href is None:
            return 0
        key = (_text(entry, "id") or href, _text(entry, "updated"))
        if key in self._seen:
            return 0
        data = await self._get(urljoin(url, href))
        await self.receive(data, url)
        self._seen[key] = None
        while len(self._seen) > SEEN_ENTRIES:
            self._seen.popitem(last=False)
        return 1


def _text(entry: etree._Element, name: str) -> str:
    el = entry.find(f"{{{ATOM_NS}}}{name}")
    return (el.text or "").strip() if el is not None else ""


def _cap_link(entry: etree._Element) -> str | None:
    """The entry's link to its CAP message: one typed application/cap+xml, else the alternate (or only) link."""
    links = entry.findall(f"{{{ATOM_NS}}}link")
    for link in links:
        if "cap" in (link.get("type") or ""):
            return str(link.get("href") or "") or None
    for link in links:
        if link.get("rel", "alternate") == "alternate" and link.get("href"):
            return str(link.get("href"))
    return None
