"""CAP messages into addresses. One message at a time (a lock), so a duplicate from a second feed, or an update
racing its alert, always sees the row the first one wrote.

- Parsed safely and validated against the OASIS schema (parse.py); a signed message is verified against the
  configured authorities and read from what the signature covers (signature.py); an unsigned one is refused
  when the settings require signatures.
- Duplicates (sender + identifier + sent) are ignored, whatever feed or key they came by.
- Only `status` Actual is put on air (Exercise, Test, System, Draft are recorded, never played).
- Alert: the sites inside its areas (geometry.py), and only they, play an address at the priority its severity and
  urgency call for, saying its audio or its text (audio.py) `repeats` times; it ends at `expires` at the latest.
- Update: the addresses of the messages it references end, and it goes on air in their place.
- Cancel: the addresses of the messages it references end; nothing is said, and an alert it cancelled that
  arrives later (from a slower feed) is not played.
Every message, whatever became of it, leaves an audit entry and a `cap_alerts` row (a duplicate: an audit entry).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import httpx
from sqlalchemy import select

from citycast.hub.audit import audit
from citycast.hub.cap import audio, geometry
from citycast.hub.cap.parse import DSIG_NS, Alert, CapError, Info, parse_xml, read_alert
from citycast.hub.cap.settings import CapSettings, load
from citycast.hub.cap.signature import SignatureRefused, verify
from citycast.hub.db.engine import Database
from citycast.hub.db.models import Address, CapAlert, Priority, Site, User, utcnow
from citycast.media.render import Samples
from citycast.tasks import cancel_and_wait

log = logging.getLogger(__name__)

MAX_ON_AIR_S = 24 * 3600.0


class CapAddresses(Protocol):
    """What the service needs of the address manager."""

    async def start(
        self,
        *,
        title: str,
        source: str,
        zone_ids: list[int],
        priority: Priority,
        speaker: str,
        user_id: int | None,
        blocks: Iterator[Samples] | None = None,
        site_names: list[str] | None = None,
    ) -> int: ...

    async def stop(self, address_id: int, reason: str) -> None: ...


def priority_of(infos: tuple[Info, ...]) -> Priority:
    """Extreme severity or Immediate urgency is an emergency (it pre-empts everything); Severe or Expected is as
    loud as a live speaker; anything milder waits its turn like a scheduled address."""
    severities = {i.severity for i in infos}
    urgencies = {i.urgency for i in infos}
    if "Extreme" in severities or "Immediate" in urgencies:
        return Priority.emergency
    if "Severe" in severities or "Expected" in urgencies:
        return Priority.live
    return Priority.scheduled


@dataclass
class Outcome:
    outcome: str  # on_air, updated, cancelled, expired, no_sites, not_actual, refused, recorded, duplicate
    detail: str = ""
    alert_id: int | None = None
    address_id: int | None = None
    sites: list[str] = field(default_factory=list)
    stopped: list[int] = field(default_factory=list)  # addresses ended by this message


class CapService:
    def __init__(
        self,
        db: Database,
        addresses: CapAddresses,
        *,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.db = db
        self.addresses = addresses
        self.clock = clock
        self.http = http or httpx.AsyncClient(timeout=15.0, follow_redirects=True)
        self._lock = asyncio.Lock()
        self._expiry: dict[int, asyncio.Task[None]] = {}

    def settings(self) -> CapSettings:
        with self.db.session() as s:
            return load(s)

    async def close(self) -> None:
        for task in list(self._expiry.values()):
            await cancel_and_wait(task)
        await self.http.aclose()

    async def receive(self, data: bytes, origin: str, user: User | None = None, remote: str = "") -> Outcome:
        """Take one CAP message; never raises for what is in the message (the outcome says what became of it)."""
        async with self._lock:
            settings = await asyncio.to_thread(self.settings)
            try:
                alert, signed = self._read(data, settings)
            except CapError as e:
                out = Outcome("refused", str(e))
                await asyncio.to_thread(self._store, None, out, data, origin, user, remote, False)
                log.warning("CAP message from %s refused: %s", origin, e)
                return out
            if await asyncio.to_thread(self._known, alert):
                out = Outcome("duplicate", f"already received ({alert.sender}, {alert.identifier}, {alert.sent_text})")
                await asyncio.to_thread(self._audit_only, alert, out, origin, user, remote)
                return out
            try:
                out = await self._act(alert, settings)
            except CapError as e:
                out = Outcome("refused", str(e))
            await asyncio.to_thread(self._store, alert, out, data, origin, user, remote, signed)
            log.info("CAP %s/%s %s from %s: %s %s", alert.sender, alert.identifier, alert.msg_type, origin,
                     out.outcome, out.detail)  # fmt: skip
            return out

    # -- reading --------------------------------------------------------------------------------------------
    def _read(self, data: bytes, settings: CapSettings) -> tuple[Alert, bool]:
        root = parse_xml(data)
        if root.find(f"{{{DSIG_NS}}}Signature") is not None:
            return read_alert(verify(root, settings.authority_certs)), True
        if settings.require_signature:
            raise SignatureRefused("the message is not signed, and the settings require a signature")
        return read_alert(root), False

    # -- acting ---------------------------------------------------------------------------------------------
    async def _act(self, alert: Alert, settings: CapSettings) -> Outcome:
        if alert.status != "Actual":
            return Outcome("not_actual", f"status {alert.status}: recorded, not played")
        if alert.msg_type in ("Ack", "Error"):
            return Outcome("recorded", f"a {alert.msg_type} message: nothing to play")
        stopped = await self._stop_referenced(alert)
        if alert.msg_type == "Cancel":
            return Outcome("cancelled", f"{len(stopped)} address(es) ended", stopped=stopped)
        if await asyncio.to_thread(self._cancelled_before, alert):
            return Outcome("cancelled", "a Cancel for this alert arrived before it: not played")
        now = self.clock()
        expires = alert.expires()
        if expires is not None and expires <= now:
            return Outcome("expired", f"expired at {expires.isoformat()}", stopped=stopped)
        region = geometry.region(a for i in alert.infos for a in i.areas)
        sites = await asyncio.to_thread(self._sites)
        inside = geometry.sites_inside(region, ((n, lat, lon) for n, lat, lon, _ in sites))
        zoned = {n: z for n, _, _, z in sites if n in inside and z is not None}
        inside = [n for n in inside if n in zoned]  # a site in no zone listens to nothing: it cannot be reached
        repairs = "; ".join(region.repairs)
        if not zoned:
            return Outcome("no_sites", "no site in a zone lies inside the alert's area" + _also(repairs))
        spoken = await audio.render(alert.infos, self.http)
        headline = next((i.headline or i.event for i in alert.infos if i.headline or i.event), alert.identifier)
        address_id = await self.addresses.start(
            title=f"CAP: {headline}"[:200],
            source=f"cap:{alert.sender}/{alert.identifier}"[:500],
            zone_ids=sorted(set(zoned.values())),
            site_names=inside,
            priority=priority_of(alert.infos),
            speaker=alert.sender[:128],
            user_id=None,
            blocks=audio.repeated_blocks(spoken.samples, settings.repeats),
        )
        if expires is not None:
            delay = min(MAX_ON_AIR_S, (expires - now).total_seconds())
            self._expiry[address_id] = asyncio.create_task(self._expire(address_id, delay))
        notes = "; ".join([*region.repairs, *spoken.notes])
        kind = "updated" if alert.msg_type == "Update" else "on_air"
        return Outcome(kind, notes, address_id=address_id, sites=inside, stopped=stopped)

    async def _expire(self, address_id: int, seconds: float) -> None:
        await asyncio.sleep(seconds)
        self._expiry.pop(address_id, None)
        with contextlib.suppress(KeyError):
            await self.addresses.stop(address_id, "the CAP alert expired")

    async def _stop_referenced(self, alert: Alert) -> list[int]:
        ids = await asyncio.to_thread(self._referenced_addresses, alert)
        stopped = []
        for address_id in ids:
            task = self._expiry.pop(address_id, None)
            if task is not None:
                task.cancel()
            try:
                await self.addresses.stop(address_id, f"CAP {alert.msg_type} {alert.identifier}"[:200])
                stopped.append(address_id)
            except KeyError:
                pass
        return stopped

    # -- database (in worker threads) -------------------------------------------------------------------------
    def _known(self, alert: Alert) -> bool:
        with self.db.session() as s:
            q = select(CapAlert.id).where(
                CapAlert.sender == alert.sender,
                CapAlert.identifier == alert.identifier,
                CapAlert.sent == alert.sent_text,
            )
            return s.scalar(q) is not None

    def _referenced_addresses(self, alert: Alert) -> list[int]:
        if not alert.references:
            return []
        with self.db.session() as s:
            ids: list[int] = []
            for r in alert.references:
                q = select(CapAlert.address_id).where(CapAlert.sender == r.sender, CapAlert.identifier == r.identifier)
                ids += [a for a in s.scalars(q) if a is not None]
            live = {a.id for a in s.scalars(select(Address).where(Address.id.in_(ids), Address.ended_at.is_(None)))}
            return [a for a in dict.fromkeys(ids) if a in live]

    def _cancelled_before(self, alert: Alert) -> bool:
        me = f"{alert.sender},{alert.identifier}"
        with self.db.session() as s:
            q = select(CapAlert.references).where(CapAlert.msg_type == "Cancel", CapAlert.sender == alert.sender)
            return any(me in refs for refs in s.scalars(q))

    def _sites(self) -> list[tuple[str, float, float, int | None]]:
        with self.db.session() as s:
            q = select(Site.name, Site.lat, Site.lon, Site.zone_id).where(Site.revoked_at.is_(None))
            return [(n, float(lat), float(lon), z) for n, lat, lon, z in s.execute(q)]

    def _store(
        self,
        alert: Alert | None,
        out: Outcome,
        data: bytes,
        origin: str,
        user: User | None,
        remote: str,
        signed: bool,
    ) -> None:
        area = None
        if alert is not None:
            try:
                area = geometry.region(a for i in alert.infos for a in i.areas).geojson()
            except CapError:
                area = None
        with self.db.session() as s:
            row = CapAlert(
                sender=alert.sender[:255] if alert else None,
                identifier=alert.identifier[:255] if alert else None,
                sent=alert.sent_text[:40] if alert else None,
                msg_type=alert.msg_type if alert else "",
                status=alert.status if alert else "",
                origin=origin[:500],
                outcome=out.outcome,
                detail=out.detail,
                headline=next((i.headline for i in alert.infos if i.headline), "")[:500] if alert else "",
                priority=priority_of(alert.infos).value if alert and alert.infos else None,
                address_id=out.address_id,
                sites=out.sites,
                area=area,
                references=[f"{r.sender},{r.identifier}" for r in alert.references] if alert else [],
                expires_at=alert.expires() if alert else None,
                signed=signed,
                xml=data.decode("utf-8", errors="replace"),
                received_at=utcnow(),
            )
            s.add(row)
            s.flush()
            out.alert_id = row.id
            target = f"cap:{alert.sender}/{alert.identifier}" if alert else f"cap:#{row.id}"
            audit(s, user, f"cap.{out.outcome}", target, _detail(out, origin), remote)

    def _audit_only(self, alert: Alert, out: Outcome, origin: str, user: User | None, remote: str) -> None:
        with self.db.session() as s:
            audit(s, user, "cap.duplicate", f"cap:{alert.sender}/{alert.identifier}", _detail(out, origin), remote)


def _detail(out: Outcome, origin: str) -> dict[str, object]:
    return {
        "origin": origin,
        "detail": out.detail,
        "address_id": out.address_id,
        "sites": out.sites,
        "stopped": out.stopped,
    }


def _also(text: str) -> str:
    return f" ({text})" if text else ""
