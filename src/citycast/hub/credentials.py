"""The hub re-mints a site's NATS credentials before they expire and hands them to the running site over the bus.

A site's user JWT expires (`citycast.bus.authority.SITE_JWT_LIFETIME_S`), so a box that is lost or stolen stops
being a bus user by itself, and a change of a site's permissions or limits reaches it at its next renewal. The
site asks on `creds-renew.<site>`, a subject only that site's NATS user may publish; the hub answers with a JWT
minted for the key it enrolled (never a key named in the request), only on that site's own inbox
(`_INBOX_site.<site>.…`, the pattern of `citycast.hub.desired`), so nobody else can obtain or be handed it. A
revoked or deleted site gets a refusal, never a JWT. The site keeps its seed: the answer is useless to anyone who
overhears it.

Wire format (JSON, `v` 1): a request has an empty body; an answer is ``{"v":1,"jwt":"…"}`` or
``{"v":1,"error":"…"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from sqlalchemy import select

from citycast.bus.authority import NatsAuthority, check_site_name, site_inbox_prefix
from citycast.hub.db.engine import Database
from citycast.hub.db.models import Site
from citycast.protocol.credentials import RenewalAnswer
from citycast.protocol.subjects import Subjects

log = logging.getLogger(__name__)

# One answer per site per this many seconds: a site renews at half its JWT's life and retries after a minute, so
# anything faster is a broken or hostile site making the hub sign in a loop.
MIN_INTERVAL_S = 10.0


def enrolled_key(db: Database, site: str) -> str | None:
    """The nkey the site enrolled with, None if the site is unknown, not enrolled or revoked."""
    with db.session() as s:
        row = s.execute(select(Site.nkey_public, Site.revoked_at).where(Site.name == site)).first()
    if row is None or row[1] is not None:
        return None
    return row[0]


class CredentialsService:
    """Answers `creds-renew.<site>` with a fresh JWT for the site's enrolled key. `site_key(site)` is that key
    (None: no renewal); it may block (a database query), so it runs in a thread."""

    def __init__(
        self,
        nc: Client,
        authority: NatsAuthority,
        subjects: Subjects,
        site_key: Callable[[str], str | None],
        *,
        min_interval_s: float = MIN_INTERVAL_S,
    ) -> None:
        self.nc = nc
        self.authority = authority
        self.subjects = subjects
        self.site_key = site_key
        self.min_interval_s = min_interval_s
        self._sub: Subscription | None = None
        self._last: dict[str, float] = {}  # site -> monotonic time of its last answer
        self.renewed = 0
        self.refused = 0  # answered with an error: unknown, revoked or too soon
        self.misdirected = 0  # reply subject not the site's own inbox: never answered

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(self.subjects.creds_renew_all(), cb=self._on_request)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    async def _on_request(self, msg: Msg) -> None:
        site = msg.subject.rsplit(".", 1)[-1]
        try:
            check_site_name(site)
        except ValueError:
            self.misdirected += 1
            return
        if not msg.reply or not msg.reply.startswith(f"{site_inbox_prefix(site)}."):
            self.misdirected += 1
            log.warning("credentials of %s asked with reply subject %r: not answered", site, (msg.reply or "")[:80])
            return
        try:
            answer = await self._answer(site)
            await self.nc.publish(msg.reply, answer.encode())
        except Exception:  # a closing connection or a database hiccup: the site asks again
            log.warning("credentials of %s not renewed", site, exc_info=True)

    async def _answer(self, site: str) -> RenewalAnswer:
        now = time.monotonic()
        last = self._last.get(site)
        if last is not None and now - last < self.min_interval_s:
            self.refused += 1
            return RenewalAnswer(error=f"asked again within {self.min_interval_s:g} s")
        key = await asyncio.to_thread(self.site_key, site)
        if key is None:
            self.refused += 1
            log.warning("credentials of %s asked, but the site is not enrolled or was revoked", site)
            return RenewalAnswer(error="not enrolled or revoked: enrol again")
        try:
            token = self.authority.mint_site_jwt(site, key, self.subjects)
        except ValueError as e:  # revoked in the authority's own list
            self.refused += 1
            return RenewalAnswer(error=str(e))
        self._last[site] = now
        self.renewed += 1
        log.info("credentials of %s renewed", site)
        return RenewalAnswer(jwt=token)
