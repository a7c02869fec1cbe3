"""What the telephone may use of the hub, and nothing more: built by `hub/runtime.py` (`Hub.telephone_services`).

The telephone puts addresses on air and stops them, checks PINs (the store audits failures and raises alerts),
publishes a live call's signed frames, counts the sites that hear a call, and mixes the site the hub listens to
(talkback) into what a live caller hears. Each is a narrow interface here, so a call can be driven by a host
built in a test, and the telephone never holds the whole `Hub`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import select

from citycast.hub.db.models import Priority, Site
from citycast.hub.telephone.pins import PinStore
from citycast.ingest.live import LiveBroadcaster, LiveSource
from citycast.media.render import Samples

if TYPE_CHECKING:
    from citycast.hub.db.engine import Database
    from citycast.hub.media_plane import MediaPlane
    from citycast.hub.talkback import TalkbackTap
    from citycast.protocol.frame import FrameSigner
    from citycast.protocol.subjects import Subjects


class OnAirAddress(Protocol):
    """An address on air, as far as the telephone cares: whether someone else is stopping it."""

    @property
    def stopping(self) -> bool: ...


class Addresses(Protocol):
    """The hub's address manager as the telephone uses it (`hub.addresses.AddressManager` is one)."""

    async def start(
        self,
        *,
        title: str,
        source: str,
        zone_ids: list[int],
        priority: Priority,
        speaker: str,
        user_id: int | None,
        external: bool = False,
    ) -> int:
        """Put an address on air; its id. Raises ValueError (with words for the caller's log) when it cannot."""
        ...

    async def stop(self, address_id: int, reason: str = "stopped") -> None: ...

    def channel_of(self, address_id: int) -> int: ...

    def get(self, address_id: int) -> OnAirAddress | None: ...

    def packing(self, channel: int) -> int:
        """Opus packets per bus message for a live address starting now on `channel`."""
        ...


class PromptBook(Protocol):
    """The recorded prompts a caller hears, in a language of `prompts.PROMPT_LANGUAGES` (`prompts.Prompts` is one)."""

    def get(self, name: str, language: str = "en") -> Samples: ...

    def live_to(self, n_sites: int, language: str = "en") -> Samples: ...


SitesLive = Callable[[tuple[int, ...]], Awaitable[int]]
BroadcasterFactory = Callable[[int, LiveSource], LiveBroadcaster]


@dataclass(frozen=True)
class TelephoneServices:
    """The hub's services the telephone is given. `broadcaster(channel, source)` makes (does not start) the signed
    broadcast of a live call; `talkback()` is the site the hub listens to now, if any; `media_plane` is the thread
    and loop the calls' sockets and broadcasts run on (None: the caller's loop)."""

    addresses: Addresses
    pins: PinStore
    sites_live: SitesLive
    broadcaster: BroadcasterFactory
    talkback: Callable[[], TalkbackTap | None]
    media_plane: MediaPlane | None = None


async def count_sites_live(
    db: Database, fleet_snapshot: Callable[[], Sequence[dict[str, Any]]], zone_ids: tuple[int, ...]
) -> int:
    """Enrolled sites of those zones (all zones when empty) that the fleet does not see offline."""

    def names() -> set[str]:
        with db.session() as s:
            q = select(Site.name).where(Site.enrolled_at.is_not(None), Site.revoked_at.is_(None))
            q = q.where(Site.zone_id.in_(zone_ids)) if zone_ids else q.where(Site.zone_id.is_not(None))
            return set(s.scalars(q))

    enrolled = await asyncio.to_thread(names)
    return sum(1 for v in fleet_snapshot() if v.get("name") in enrolled and v.get("state") != "offline")


def telephone_services(
    *,
    db: Database,
    fleet_snapshot: Callable[[], Sequence[dict[str, Any]]],
    publish: Callable[[dict[str, Any]], None],
    addresses: Addresses,
    nc: Any,
    signer: FrameSigner,
    subjects: Subjects,
    talkback: Callable[[], TalkbackTap | None],
    media_plane: MediaPlane | None,
) -> TelephoneServices:
    """The services from the hub's parts: `nc` is the control loop's NATS connection (a call's frames go out on the
    media plane's own when there is one), `publish` the console's event stream (PIN abuse alerts)."""

    def broadcaster(channel: int, source: LiveSource) -> LiveBroadcaster:
        out = media_plane.nc if media_plane is not None else nc
        return LiveBroadcaster(
            out,
            channel=channel,
            signer=signer,
            source=source,
            subjects=subjects,
            packets_per_message=addresses.packing(channel),
        )

    async def sites_live(zone_ids: tuple[int, ...]) -> int:
        return await count_sites_live(db, fleet_snapshot, zone_ids)

    return TelephoneServices(
        addresses=addresses,
        pins=PinStore(db, publish=publish),
        sites_live=sites_live,
        broadcaster=broadcaster,
        talkback=talkback,
        media_plane=media_plane,
    )
