"""Proof of play, the hub side: take the receipts sites sign for what they played, and say per address which
sites played it fully, partly or not at all.

A receipt (`citycast.protocol.receipts`) arrives on `receipts.<site>`, a subject only that site's NATS user may
publish. It is taken only if it names that same site, verifies under the key the site enrolled with (not revoked),
and its channel and stream time fall inside an address the hub put on that channel: the hub gives every address
a channel of its own while it is on air, so a receipt can belong to one address only, and since channel and times
are signed it cannot be re-aimed at another. Anything else is refused with a reason, counted, logged, answered
(when the site asked on its own inbox), and the service goes on. The signed bytes are stored as they came.

The verdict (`judge`) compares what each site played with what the address broadcast: from its first sample
(the earliest any site played, or the hub's start time) to its last (the latest any site played, or the hub's end
time less `HUB_END_SLACK_S`, whichever is later). A site played it *fully* when its spans cover that within
`TOLERANCE_S` at both ends, with no gap longer than that inside and no more than that of fallback; *partly* when
it played any of it; *none* when no receipt of it came.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import csv
import datetime as dt
import io
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from citycast.bus import jwt
from citycast.bus.authority import check_site_name, site_inbox_prefix
from citycast.bus.jwt import JwtError, KeyKind
from citycast.hub.db.engine import Database
from citycast.hub.db.models import Address, PlayReceiptRecord, Site, Zone, utcnow
from citycast.protocol.receipts import (
    MAX_RECEIPT_BYTES,
    BadReceiptSignature,
    MalformedReceipt,
    PlayReceipt,
    ReceiptAck,
    parse_receipt,
    verify_receipt,
)
from citycast.protocol.subjects import Subjects

log = logging.getLogger(__name__)

TOLERANCE_S = 0.5  # a site that started or stopped this close to the address's ends played it fully
START_SLACK_S = 1.0  # frames may be stamped a little before the address row's start time (a live source)
HUB_END_SLACK_S = 2.0  # the address row ends after playout drains (D + 0.3 s) and the source has stopped
# What one site may send: a genuine one sends a receipt per stream it played and one per 10 minutes of a long
# one, and after a long cut-off its backlog (at most 1000). Beyond, a receipt is not answered, so the site keeps it
# and sends it again later; a site whose credentials were stolen cannot fill the database or hold up the others.
BURST = 50
PER_SECOND = 1.0


class Refusal(StrEnum):
    """Why the hub refused a receipt (the keys of `ReceiptService.refused`)."""

    MALFORMED = "malformed"  # not a receipt: too big, not JSON, a field missing or out of range
    WRONG_SITE = "wrong_site"  # the body names another site than the subject it came on
    UNKNOWN_SITE = "unknown_site"  # no such site, not enrolled, or its key revoked
    BAD_SIGNATURE = "bad_signature"  # not signed by the site's enrolled key, or altered after signing
    NO_ADDRESS = "no_address"  # genuine, but its channel and times match no address (a fill or idle channel)


# Refusals that mean someone tried to fake proof of play (a genuine site never sends these).
FORGED = frozenset({Refusal.MALFORMED, Refusal.WRONG_SITE, Refusal.UNKNOWN_SITE, Refusal.BAD_SIGNATURE})


class ReceiptRefused(ValueError):
    def __init__(self, reason: Refusal, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason


def _utc(ns: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC)


def _ns(t: dt.datetime) -> int:
    return round(t.timestamp() * 1e9)


def site_key(db: Database, site: str) -> tuple[int, Ed25519PublicKey] | None:
    """(site id, enrolled public key), None if the site is unknown, not enrolled or revoked."""
    with db.session() as s:
        row = s.execute(select(Site.id, Site.nkey_public, Site.revoked_at).where(Site.name == site)).first()
    if row is None or row[1] is None or row[2] is not None:
        return None
    try:
        return int(row[0]), Ed25519PublicKey.from_public_bytes(jwt.decode_public_key(row[1], KeyKind.USER))
    except (JwtError, ValueError):
        return None


def take_receipt(db: Database, site: str, data: bytes) -> tuple[PlayReceipt, int, bool]:
    """Check one receipt from `receipts.<site>` and store it: (receipt, address id, new). A receipt already stored
    (a site repeats one whose answer it missed) is taken again without a second row. ReceiptRefused says why not."""
    try:
        claimed, _, _ = parse_receipt(data)
    except MalformedReceipt as e:
        raise ReceiptRefused(Refusal.MALFORMED, str(e)) from None
    if claimed.site != site:
        raise ReceiptRefused(Refusal.WRONG_SITE, f"a receipt for {claimed.site[:64]!r} sent as {site!r}")
    known = site_key(db, site)
    if known is None:
        raise ReceiptRefused(Refusal.UNKNOWN_SITE, f"{site!r} is not an enrolled site")
    site_id, key = known
    try:
        receipt = verify_receipt(data, key)
    except BadReceiptSignature as e:
        raise ReceiptRefused(Refusal.BAD_SIGNATURE, str(e)) from None
    first = _utc(receipt.first_ns)
    with db.session() as s:
        address_id = s.scalar(
            select(Address.id)
            .where(
                Address.channel == receipt.channel,
                Address.started_at <= first + dt.timedelta(seconds=START_SLACK_S),
            )
            .order_by(Address.started_at.desc(), Address.id.desc())
            .limit(1)
        )
        ended = s.scalar(select(Address.ended_at).where(Address.id == address_id)) if address_id else None
        if address_id is None or (ended is not None and first > ended):
            raise ReceiptRefused(Refusal.NO_ADDRESS, f"no address on channel {receipt.channel} at {first.isoformat()}")
        existing = s.scalar(
            select(PlayReceiptRecord.id).where(
                PlayReceiptRecord.site_id == site_id,
                PlayReceiptRecord.stream == receipt.stream,
                PlayReceiptRecord.first_ns == receipt.first_ns,
                PlayReceiptRecord.seq == receipt.seq,
            )
        )
        if existing is not None:
            return receipt, int(address_id), False
        s.add(
            PlayReceiptRecord(
                address_id=address_id,
                site_id=site_id,
                channel=receipt.channel,
                stream=receipt.stream,
                seq=receipt.seq,
                final=receipt.final,
                first_ns=receipt.first_ns,
                last_ns=receipt.last_ns,
                concealed=receipt.concealed,
                fallback_s=receipt.fallback_s,
                sync_error_ms=receipt.sync_error_ms,
                level_rms_dbfs=receipt.level_rms_dbfs,
                level_peak_dbfs=receipt.level_peak_dbfs,
                sent_ns=receipt.sent_ns,
                signed=base64.b64encode(data).decode(),
            )
        )
        try:
            s.flush()
        except IntegrityError:  # the same receipt, stored by a concurrent request a moment ago
            s.rollback()
            return receipt, int(address_id), False
    return receipt, int(address_id), True


class SiteBudget:
    """A token bucket per site (sans-IO: time passed in): `BURST` receipts at once, then `PER_SECOND`."""

    def __init__(self, burst: float = BURST, per_second: float = PER_SECOND) -> None:
        self.burst = burst
        self.per_second = per_second
        self._sites: dict[str, tuple[float, float]] = {}  # site -> (tokens, when); bounded: only sites publish here

    def take(self, site: str, now: float) -> bool:
        if len(self._sites) > 100_000 and site not in self._sites:  # a bus without per-site users: any name
            self._sites.clear()
        tokens, then = self._sites.get(site, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.per_second)
        if tokens < 1.0:
            self._sites[site] = (tokens, now)
            return False
        self._sites[site] = (tokens - 1.0, now)
        return True


class ReceiptService:
    """Listens on `receipts.*`, takes what verifies, answers on the asking site's inbox. Counts what it refuses."""

    def __init__(
        self,
        nc: Client,
        subjects: Subjects,
        db: Database,
        *,
        budget: SiteBudget | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.nc = nc
        self.subjects = subjects
        self.db = db
        self.budget = budget or SiteBudget()
        self.clock = clock
        self.taken = 0
        self.throttled = 0  # over a site's budget: not answered (the site sends it again later)
        self.refused: Counter[str] = Counter()
        self._sub: Subscription | None = None

    @property
    def forged(self) -> int:
        return sum(n for reason, n in self.refused.items() if reason in FORGED)

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(self.subjects.receipts_all(), cb=self._on_msg)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    async def _on_msg(self, msg: Msg) -> None:
        site = msg.subject.rsplit(".", 1)[-1]
        answer = await self.handle(site, msg.data)
        if answer is None:
            return
        try:
            check_site_name(site)
        except ValueError:  # refused above (no such site); there is no inbox of its own to answer on
            return
        # Answered only on the site's own inbox: a receipt cannot be used to aim the hub's answers elsewhere.
        if msg.reply and msg.reply.startswith(f"{site_inbox_prefix(site)}."):
            with contextlib.suppress(Exception):
                await self.nc.publish(msg.reply, answer.encode())

    async def handle(self, site: str, data: bytes) -> ReceiptAck | None:
        """The answer for one receipt from `receipts.<site>`; None over the site's budget (left unanswered)."""
        if not self.budget.take(site[:64], self.clock()):
            self.throttled += 1
            if self.throttled % 1000 == 1:
                log.warning("receipts from %s beyond %g a second: left unanswered", site[:64], self.budget.per_second)
            return None
        if len(data) > MAX_RECEIPT_BYTES:  # refused before anything is parsed
            return self._refuse(site, ReceiptRefused(Refusal.MALFORMED, f"{len(data)} bytes"))
        try:
            receipt, address_id, new = await asyncio.to_thread(take_receipt, self.db, site, data)
        except ReceiptRefused as e:
            return self._refuse(site, e)
        except Exception:  # a database hiccup: the site keeps the receipt and sends it again
            log.warning("receipt from %s not stored", site, exc_info=True)
            return ReceiptAck(ok=False, error="not stored now: send it again")
        if new:
            self.taken += 1
            log.info(
                "receipt from %s: address %d, %.1f s played%s",
                site,
                address_id,
                receipt.played_s,
                " (final)" if receipt.final else "",
            )
        return ReceiptAck(ok=True)

    def _refuse(self, site: str, e: ReceiptRefused) -> ReceiptAck:
        self.refused[e.reason.value] += 1
        level = logging.WARNING if e.reason in FORGED else logging.INFO
        log.log(level, "receipt on %s refused: %s", site[:64], e)
        return ReceiptAck(ok=False, error=str(e))


# -- verdicts ------------------------------------------------------------------------------------------------


@dataclass
class SitePlay:
    site: str
    label: str
    zone: str | None
    lat: float
    lon: float
    verdict: str = "none"  # full, partly, none
    spans: list[tuple[int, int]] = field(default_factory=list)  # merged [first, last] stream-time ns
    played_s: float = 0.0
    concealed: int = 0
    fallback_s: float = 0.0
    sync_error_ms: float | None = None
    level_rms_dbfs: float | None = None
    level_peak_dbfs: float | None = None
    receipts: int = 0
    open: bool = False  # its last span has only interim receipts so far

    def as_dict(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "label": self.label,
            "zone": self.zone,
            "lat": self.lat,
            "lon": self.lon,
            "verdict": self.verdict,
            "first_at": _utc(self.spans[0][0]).isoformat() if self.spans else None,
            "last_at": _utc(self.spans[-1][1]).isoformat() if self.spans else None,
            "spans": [[_utc(a).isoformat(), _utc(b).isoformat()] for a, b in self.spans],
            "played_s": round(self.played_s, 3),
            "concealed": self.concealed,
            "fallback_s": round(self.fallback_s, 3),
            "sync_error_ms": self.sync_error_ms,
            "level_rms_dbfs": self.level_rms_dbfs,
            "level_peak_dbfs": self.level_peak_dbfs,
            "receipts": self.receipts,
            "open": self.open,
        }


def merge(spans: list[tuple[int, int]], gap_ns: int = 0) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1] + gap_ns:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def judge(play: SitePlay, ref_first: int, ref_last: int) -> str:
    if not play.spans:
        return "none"
    tol = round(TOLERANCE_S * 1e9)
    covered = merge(play.spans, gap_ns=tol)
    full = (
        len(covered) == 1
        and covered[0][0] <= ref_first + tol
        and covered[0][1] >= ref_last - tol
        and play.fallback_s <= TOLERANCE_S
    )
    return "full" if full else "partly"


def address_report(db: Database, address_id: int, *, now: dt.datetime | None = None) -> dict[str, Any] | None:
    """Who played address `address_id`, how much of it, and the evidence; None for no such address. The sites
    listed are those of its zones now, and any other that sent a receipt for it."""
    with db.session() as s:
        a = s.get(Address, address_id)
        if a is None:
            return None
        rows = list(s.scalars(select(PlayReceiptRecord).where(PlayReceiptRecord.address_id == address_id)))
        zone_ids = list(a.zone_ids or [])
        site_ids = {r.site_id for r in rows}
        q = select(Site, Zone.name).outerjoin(Zone, Site.zone_id == Zone.id)
        sites = [
            (site, zone)
            for site, zone in s.execute(q)
            if site.id in site_ids or (site.zone_id in zone_ids and site.enrolled_at is not None)
        ]
        started = a.started_at
        ended = a.ended_at
        info = {
            "id": a.id,
            "title": a.title,
            "channel": a.channel,
            "priority": a.priority.value,
            "status": a.status.value,
            "started_at": started.isoformat(),
            "ended_at": ended.isoformat() if ended else None,
            "zone_ids": zone_ids,
        }
    plays: dict[int, SitePlay] = {
        site.id: SitePlay(site.name, site.label, zone, site.lat, site.lon) for site, zone in sites
    }
    # The last receipt of a span (highest seq) covers the whole span: counters are summed over spans.
    last_of_span: dict[tuple[int, int, int], PlayReceiptRecord] = {}
    for r in rows:
        key = (r.site_id, r.stream, r.first_ns)
        if key not in last_of_span or r.seq > last_of_span[key].seq:
            last_of_span[key] = r
    for r in rows:
        if r.site_id in plays:
            plays[r.site_id].receipts += 1
    for r in last_of_span.values():
        p = plays[r.site_id]
        p.spans.append((r.first_ns, r.last_ns))
        p.concealed += r.concealed
        p.fallback_s += r.fallback_s
        p.sync_error_ms = max(p.sync_error_ms or 0.0, r.sync_error_ms)
        p.level_rms_dbfs = r.level_rms_dbfs if p.level_rms_dbfs is None else max(p.level_rms_dbfs, r.level_rms_dbfs)
        p.level_peak_dbfs = (
            r.level_peak_dbfs if p.level_peak_dbfs is None else max(p.level_peak_dbfs, r.level_peak_dbfs)
        )
        p.open = p.open or not r.final
    played = [span for p in plays.values() for span in p.spans]
    ref_first = min([a for a, _ in played], default=_ns(started))
    ref_first = min(ref_first, _ns(started) + round(HUB_END_SLACK_S * 1e9))
    hub_last = _ns(ended or now or utcnow()) - round(HUB_END_SLACK_S * 1e9)
    ref_last = max([b for _, b in played] + [hub_last])
    for p in plays.values():
        p.spans = merge(p.spans)
        p.played_s = sum(b - a for a, b in p.spans) / 1e9
        p.verdict = judge(p, ref_first, ref_last)
    out = sorted((p.as_dict() for p in plays.values()), key=lambda d: (d["zone"] or "", d["site"]))
    counts = Counter(d["verdict"] for d in out)
    return {
        **info,
        "on_air": ended is None,
        "first_at": _utc(ref_first).isoformat(),
        "last_at": _utc(ref_last).isoformat(),
        "duration_s": round((ref_last - ref_first) / 1e9, 3),
        "counts": {v: counts.get(v, 0) for v in ("full", "partly", "none")},
        "sites": out,
    }


CSV_COLUMNS = (
    "address_id",
    "title",
    "site",
    "label",
    "zone",
    "verdict",
    "first_at",
    "last_at",
    "played_s",
    "concealed",
    "fallback_s",
    "sync_error_ms",
    "level_rms_dbfs",
    "level_peak_dbfs",
    "receipts",
)


def _cell(value: object) -> object:
    """A text cell a spreadsheet would run as a formula (a title from a CAP alert, a site label) is quoted."""
    if value is None:
        return ""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def report_csv(report: dict[str, Any]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for site in report["sites"]:
        row = {**site, "address_id": report["id"], "title": report["title"]}
        writer.writerow([_cell(row[c]) for c in CSV_COLUMNS])
    return buf.getvalue()
