"""Telemetry from the bus into the fleet state, and from there to the console, the alerts and the database.

The asyncio shell around the sans-IO `FleetState` and `AlertRules`. Every message costs one parse and one dict
update; everything else happens in a flush every 0.25 s: sites gone silent go offline, changed views go to the
console in one `{"type": "sites"}` event, alert rules run over what changed (and, once a second, over offline
sites and sites with open alerts, whose alerts are cleared by time), and the database gets one batch. Database
writes run in a worker thread, one batch at a time, so a slow disk or a remote PostgreSQL never stalls the loop;
what arrives while a batch is written waits for the next one.

A site may only publish on its own telemetry subject (its NATS permissions), so the subject names the site; a
payload that claims another name is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from sqlalchemy import select, update

from citycast.hub.alerts import KINDS, AlertEvent, AlertRules
from citycast.hub.db.engine import Database
from citycast.hub.db.models import Alert, FleetSample, Site, SiteStateChange
from citycast.hub.events import EventHub
from citycast.hub.fleet import Change, FleetState
from citycast.hub.metrics import TelemetryCounters
from citycast.protocol.subjects import Subjects
from citycast.protocol.telemetry import TELEMETRY_VERSION, Telemetry
from citycast.tasks import cancel_and_wait

log = logging.getLogger(__name__)

MAX_TELEMETRY_BYTES = 16_384
SWEEP_INTERVAL_NS = 1_000_000_000
KNOWN_REFRESH_NS = 10_000_000_000
BAD_LOG_INTERVAL_NS = 10_000_000_000

_FLOAT_FIELDS = ("buffer_ms", "sync_error_ms", "level_rms_dbfs", "level_peak_dbfs", "volume")
_COUNT_FIELDS = ("underruns", "concealed")


class TelemetryError(ValueError):
    """A telemetry message was refused; ``str(e)`` says why."""


def parse_telemetry(site: str, data: bytes) -> Telemetry:
    """Parse and check one message from `<prefix>.telemetry.<site>`. Raises `TelemetryError` with the reason."""
    if len(data) > MAX_TELEMETRY_BYTES:
        raise TelemetryError(f"{len(data)} bytes, more than {MAX_TELEMETRY_BYTES}")
    try:
        t = Telemetry.from_json(data)
    except (ValueError, TypeError, RecursionError) as e:  # JSON, encoding, version, missing fields
        raise TelemetryError(f"not citycast telemetry v{TELEMETRY_VERSION}: {str(e)[:120]}") from e
    if t.site != site:
        raise TelemetryError(f"sent on the subject of {site!r} but names {str(t.site)[:64]!r}")
    if not isinstance(t.state, str) or len(t.state) > 32:
        raise TelemetryError("state is not a short string")
    if not isinstance(t.channel, int) or isinstance(t.channel, bool):
        raise TelemetryError("channel is not an integer")
    for name in _FLOAT_FIELDS:
        value = getattr(t, name)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise TelemetryError(f"{name} is not a number")
    for name in _COUNT_FIELDS:
        value = getattr(t, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise TelemetryError(f"{name} is not a count")
    if not isinstance(t.muted, bool):
        raise TelemetryError("muted is not a boolean")
    if not isinstance(t.rejected, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0 for k, v in t.rejected.items()
    ):
        raise TelemetryError("rejected is not a map of counts")
    return t


def _iso(ns: int | None) -> str | None:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).isoformat() if ns is not None else None


def _when(ns: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC)


@dataclass
class _Batch:
    changes: list[tuple[Change, float | None]] = field(default_factory=list)  # with the site's last_seen_s
    alerts: list[tuple[AlertEvent, dict[str, Any]]] = field(default_factory=list)  # with the console's alert dict
    sample: FleetSample | None = None

    def __bool__(self) -> bool:
        return bool(self.changes or self.alerts or self.sample is not None)


class FleetMonitor:
    def __init__(
        self,
        nc: Client,
        subjects: Subjects,
        fleet: FleetState,
        rules: AlertRules,
        events: EventHub,
        database: Database | None = None,
        site_ids: Callable[[], dict[str, int]] | None = None,
        *,
        flush_interval_s: float = 0.25,
        sample_interval_s: float = 60.0,
        clock: Callable[[], int] = time.time_ns,
        on_report: Callable[[str, int | None, int], object] | None = None,
    ) -> None:
        self.nc = nc
        # (site, the channel it reports playing, now): each good report, e.g. for DesiredStore.nudge
        self.on_report = on_report
        self.subjects = subjects
        self.fleet = fleet
        self.rules = rules
        self.events = events
        self.database = database
        self.site_ids = site_ids
        self.flush_interval_s = flush_interval_s
        self.sample_interval_ns = int(sample_interval_s * 1e9)
        self.clock = clock
        self.counters = TelemetryCounters()
        self.bad_reasons: Counter[str] = Counter()
        self.db_errors = 0
        self._open: dict[tuple[str, str], dict[str, Any]] = {}  # (site, kind) -> the console's alert dict
        self._pending_changes: list[Change] = []
        self._batch = _Batch()
        self._sub: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._prefix_len = len(subjects.telemetry(""))
        self._last_sweep_ns = 0
        self._last_known_ns = 0
        self._last_sample_ns = 0
        self._last_sample_underruns = 0
        self._bad_logged_ns = 0
        self._bad_unlogged = 0

    # -- bus ---------------------------------------------------------------------------------------------------
    async def start(self) -> None:
        now = self.clock()
        self._last_sample_ns = now
        self._last_sample_underruns = self.fleet.totals().underruns
        self._refresh_known(now)
        if self.database is not None:
            try:
                await asyncio.to_thread(self._close_stale_alerts, now)
            except Exception as e:  # the monitor must run even when the database hiccups
                self.db_errors += 1
                log.error("fleet monitor: cannot close stale alerts: %s", e)
        self._sub = await self.nc.subscribe(self.subjects.telemetry_all(), cb=self._on_msg)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        if self._writer is not None:
            with contextlib.suppress(Exception):
                await self._writer
        self.flush()
        if self._writer is not None:
            with contextlib.suppress(Exception):
                await self._writer

    async def _on_msg(self, msg: Msg) -> None:
        self.on_message(msg.subject, msg.data)

    def on_message(self, subject: str, data: bytes) -> None:
        """One telemetry message. Never raises: a bad one is counted and logged (rate-limited), not fatal."""
        self.counters.received += 1
        try:
            t = parse_telemetry(subject[self._prefix_len :], data)
            now = self.clock()
            change = self.fleet.on_telemetry(t, now)
            if self.on_report is not None:
                self.on_report(t.site, t.channel, now)
        except TelemetryError as e:
            self._bad(subject, str(e))
            return
        except Exception as e:  # a bug must not stop the fleet view for every other site
            self._bad(subject, f"{type(e).__name__}: {e}")
            return
        if change is not None:
            self._pending_changes.append(change)

    def _bad(self, subject: str, reason: str) -> None:
        self.counters.bad += 1
        self.bad_reasons[reason.split(":", 1)[0][:60]] += 1
        now = self.clock()
        if now - self._bad_logged_ns >= BAD_LOG_INTERVAL_NS:
            more = f" (and {self._bad_unlogged} more since the last report)" if self._bad_unlogged else ""
            log.warning("bad telemetry on %s: %s%s", subject[:100], reason, more)
            self._bad_logged_ns, self._bad_unlogged = now, 0
        else:
            self._bad_unlogged += 1

    # -- the flush ----------------------------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval_s)
            try:
                self.flush()
            except Exception:  # keep watching the fleet whatever one flush met
                log.exception("fleet monitor: flush failed")

    def flush(self) -> None:
        """Everything but the per-message work: offline detection, console events, alerts, the DB batch."""
        now = self.clock()
        changes, self._pending_changes = self._pending_changes, []
        changes += self.fleet.tick(now)
        views = self.fleet.dirty()
        if views:
            self.events.publish({"type": "sites", "sites": views})

        alerts: list[AlertEvent] = []
        for view in views:
            alerts += self.rules.evaluate(view, now)
        if now - self._last_sweep_ns >= SWEEP_INTERVAL_NS:
            self._last_sweep_ns = now
            fresh = {v["name"] for v in views}
            for name in self.fleet.names():
                if name in fresh:
                    continue
                current = self.fleet.site(name)
                if current is not None and (current["state"] == "offline" or self.rules.has_open(name)):
                    alerts += self.rules.evaluate(current, now)
        if now - self._last_known_ns >= KNOWN_REFRESH_NS:
            self._refresh_known(now)

        batch = self._batch
        for change in changes:
            seen = self.fleet.site(change.site)
            batch.changes.append((change, seen["last_seen_s"] if seen else None))
        for event in alerts:
            batch.alerts.append((event, self._alert_dict(event)))
        if now - self._last_sample_ns >= self.sample_interval_ns:
            batch.sample = self._sample(now)
        self._write_or_publish()

    def _alert_dict(self, event: AlertEvent) -> dict[str, Any]:
        key = (event.site, event.kind)
        if event.raised:
            alert: dict[str, Any] = {
                "id": None,
                "site": event.site,
                "kind": event.kind,
                "severity": event.severity,
                "message": event.message,
                "raised_at": _iso(event.at_ns),
                "cleared_at": None,
            }
            self._open[key] = alert
            return alert
        raised = self._open.pop(key, None)
        alert = dict(raised) if raised is not None else {"id": None, "site": event.site, "kind": event.kind,
                                                        "severity": event.severity, "message": event.message,
                                                        "raised_at": None}  # fmt: skip
        alert["cleared_at"] = _iso(event.at_ns)
        alert["clear_reason"] = event.message
        return alert

    def _sample(self, now: int) -> FleetSample:
        totals = self.fleet.totals()
        errors = self.fleet.sync_errors_ms()
        p99 = float(np.percentile(errors, 99)) if errors else 0.0
        sample = FleetSample(
            at=_when(now),
            by_state=self.fleet.counts(),
            underruns=totals.underruns - self._last_sample_underruns,
            sync_error_p99_ms=p99 if math.isfinite(p99) else 0.0,
        )
        self._last_sample_ns = now
        self._last_sample_underruns = totals.underruns
        return sample

    def _refresh_known(self, now: int) -> None:
        self._last_known_ns = now
        if self.site_ids is None:
            return
        try:
            self.fleet.known(self.site_ids())
        except Exception as e:
            log.warning("fleet monitor: cannot read the enrolled sites: %s", e)

    def open_alerts(self) -> list[dict[str, Any]]:
        """The console's dicts of every open alert (for the WebSocket snapshot)."""
        return [dict(a) for a in self._open.values()]

    # -- database -----------------------------------------------------------------------------------------------
    def _write_or_publish(self) -> None:
        if self.database is None:
            batch, self._batch = self._batch, _Batch()
            self._publish_alerts(batch)
            return
        if not self._batch or (self._writer is not None and not self._writer.done()):
            return  # the next flush after the running write takes what gathered meanwhile
        batch, self._batch = self._batch, _Batch()
        self._writer = asyncio.get_running_loop().create_task(self._write(batch))

    async def _write(self, batch: _Batch) -> None:
        try:
            await asyncio.to_thread(self._write_sync, batch)
        except Exception as e:
            self.db_errors += 1
            log.error("fleet monitor: cannot write %d state changes and %d alerts: %s",
                      len(batch.changes), len(batch.alerts), e)  # fmt: skip
        self._publish_alerts(batch)

    def _publish_alerts(self, batch: _Batch) -> None:
        for _, alert in batch.alerts:
            self.events.publish({"type": "alert", "alert": dict(alert)})

    def _write_sync(self, batch: _Batch) -> None:
        assert self.database is not None
        with self.database.session() as s:
            # Only the sites this batch names, looked up here in the writer's thread, never on the event loop.
            names = {c.site for c, _ in batch.changes} | {e.site for e, _ in batch.alerts}
            ids: dict[str, int] = {}
            if names:
                ids = {n: i for i, n in s.execute(select(Site.id, Site.name).where(Site.name.in_(names)))}
            for change, last_seen_s in batch.changes:
                site_id = ids.get(change.site)
                if site_id is None:
                    continue  # a site the hub has no record of (no auth): nothing to attach its history to
                s.add(SiteStateChange(site_id=site_id, at=_when(change.at_ns), state=change.new,
                                      detail=change.detail[:200]))  # fmt: skip
                values: dict[str, Any] = {"last_state": change.new}
                if last_seen_s is not None:
                    values["last_seen_at"] = _when(int(last_seen_s * 1e9))
                s.execute(update(Site).where(Site.id == site_id).values(**values))
            for event, alert in batch.alerts:
                site_id = ids.get(event.site)
                if event.raised:
                    # An alert about a site without a record still names it, in its message.
                    message = event.message if site_id is not None else f"{event.site}: {event.message}"
                    row = Alert(site_id=site_id, kind=event.kind, severity=event.severity, message=message,
                                raised_at=_when(event.at_ns))  # fmt: skip
                    s.add(row)
                    s.flush()
                    alert["id"] = row.id
                else:
                    query = update(Alert).where(Alert.kind == event.kind, Alert.cleared_at.is_(None))
                    if alert.get("id") is not None:
                        query = query.where(Alert.id == alert["id"])
                    elif site_id is not None:
                        query = query.where(Alert.site_id == site_id)
                    else:
                        query = query.where(Alert.site_id.is_(None), Alert.message.startswith(f"{event.site}: "))
                    s.execute(query.values(cleared_at=_when(event.at_ns)))
            if batch.sample is not None:
                s.add(batch.sample)

    def _close_stale_alerts(self, now: int) -> None:
        """Alerts left open by a previous run: the rules start afresh and raise again what still holds."""
        assert self.database is not None
        with self.database.session() as s:
            s.execute(
                update(Alert).where(Alert.kind.in_(KINDS), Alert.cleared_at.is_(None)).values(cleared_at=_when(now))
            )
