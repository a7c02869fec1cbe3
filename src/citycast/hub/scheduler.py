"""Recurring addresses: when each schedule next runs, and the loop that starts them.

A schedule's `rrule` is one RFC 5545 recurrence rule (``FREQ=WEEKLY;BYDAY=FR;BYHOUR=20;BYMINUTE=0``), read with
dateutil and expanded from `dtstart`, a wall-clock time in the schedule's `timezone`. Occurrences are computed
in that zone, so "Friday 20:00 in London" is 20:00 in winter and in summer; everything leaves this module in
UTC. A local time that does not exist (the hour skipped when clocks go forward) runs at the same UTC instant as
the wall time before the change would give, i.e. an hour "late" on the wall clock; an ambiguous one (clocks go
back) runs at its first occurrence.

Missed occurrences. `due_runs` starts an occurrence only while it is at most `grace` old: a hub that was down
for a day does not play yesterday's addresses when it returns. One missed by less (a restart, a slow tick)
starts late with what is left of its duration, so it still ends when it was meant to.

At most once. The scheduler claims an occurrence in the database (`Schedule.last_run_at`, a conditional update)
before it asks for the address, so a restart, or a second scheduler on the same database, never starts it
twice. If starting then fails (a missing file, no zones) the failure is logged and that occurrence is not
retried: a broken schedule must not fire every second.

Sans-IO where it matters: `next_runs` and `due_runs` are pure and take the time as an argument; `Scheduler`
reads the time from the clock it is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dateutil.rrule import rrule, rrulestr
from sqlalchemy import or_, select, update

from citycast.hub.db.engine import Database
from citycast.hub.db.models import Priority, Schedule

__all__ = [
    "DEFAULT_GRACE",
    "AddressStarter",
    "ScheduledRun",
    "Scheduler",
    "due_runs",
    "next_runs",
    "validate_rrule",
    "validate_timezone",
]

log = logging.getLogger(__name__)

DEFAULT_GRACE = dt.timedelta(minutes=2)
"""How late an occurrence may still start: covers a hub restart, not an outage."""

SPEAKER = "schedule"
MAX_RULE_CHARS = 500  # the column's size
MIN_SPACING = dt.timedelta(minutes=1)
_ALLOWED_FREQS = ("YEARLY", "MONTHLY", "WEEKLY", "DAILY", "HOURLY")
# A rule that cannot occur (Feb 30) would make dateutil walk to the year 9999, seconds of CPU inside the event
# loop. A rule is refused unless it occurs within this horizon of its start: 28 years is the calendar's
# weekday-and-leap-year cycle, so "Friday 29 February" still passes.
_HORIZON = dt.timedelta(days=366 * 29)


class AddressStarter(Protocol):
    """What the scheduler needs of the address manager: put an address on air, return its id."""

    async def start(
        self,
        *,
        title: str,
        source: str,
        zone_ids: list[int],
        priority: Priority,
        speaker: str,
        user_id: int | None,
        duration_s: float | None = None,
        schedule_id: int | None = None,
    ) -> int: ...


def validate_timezone(name: str) -> str | None:
    """None if ``name`` is an IANA time zone (``Asia/Karachi``), else a message saying what is wrong."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        return f"unknown time zone {name!r}: use an IANA name such as Asia/Karachi or Europe/London"
    return None


def _utc(value: dt.datetime) -> dt.datetime:
    """UTC-aware. Naive values are taken as UTC: that is how SQLite returns the timestamps we stored."""
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def _local_start(dtstart: dt.datetime, tz: ZoneInfo) -> dt.datetime:
    """`Schedule.dtstart` (naive wall time in ``tz``; an aware value is converted) as an aware datetime."""
    if dtstart.tzinfo is not None:
        dtstart = dtstart.astimezone(tz).replace(tzinfo=None)
    return dtstart.replace(tzinfo=tz)


def _rule_text(text: str) -> str:
    """The rule's parameters without an ``RRULE:`` prefix; raises ValueError for anything else."""
    if not isinstance(text, str):
        raise ValueError("the recurrence rule must be text")
    body = text.strip()
    if not body:
        raise ValueError("the recurrence rule is empty: e.g. FREQ=WEEKLY;BYDAY=FR;BYHOUR=20;BYMINUTE=0")
    if len(body) > MAX_RULE_CHARS:
        raise ValueError(f"the recurrence rule is longer than {MAX_RULE_CHARS} characters")
    if body.upper().startswith("RRULE:"):
        body = body[len("RRULE:") :]
    if "\n" in body or "\r" in body or ":" in body:
        raise ValueError("give one RRULE only (the start time is set separately, not with DTSTART)")
    params: dict[str, str] = {}
    for part in body.split(";"):
        name, sep, value = part.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ValueError(f"{part!r} is not NAME=VALUE: e.g. FREQ=WEEKLY;BYDAY=FR;BYHOUR=20;BYMINUTE=0")
        params[name.strip().upper()] = value.strip().upper()
    freq = params.get("FREQ")
    if freq is None:
        raise ValueError("FREQ is missing: e.g. FREQ=WEEKLY;BYDAY=FR;BYHOUR=20;BYMINUTE=0")
    if freq not in _ALLOWED_FREQS:
        raise ValueError(f"FREQ={freq} is not allowed: use one of {', '.join(_ALLOWED_FREQS)}")
    return body


def _rule(text: str, dtstart: dt.datetime, timezone: str) -> rrule:
    """The parsed, checked rule for a naive local ``dtstart`` in ``timezone``. Raises ValueError with a message
    meant for the user."""
    result = _cached_rule(text, dtstart, timezone)
    if isinstance(result, str):
        raise ValueError(result)
    return result


@functools.lru_cache(maxsize=512)
def _cached_rule(text: str, dtstart: dt.datetime, timezone: str) -> rrule | str:
    """The rule, or why it is refused. Cached, refusals too: the scheduler asks every second, checking a rule
    can take tens of milliseconds, and dateutil caches each rule's occurrences on the rule object."""
    try:
        return _parse_rule(text, dtstart, timezone)
    except ValueError as e:
        return str(e)


def _parse_rule(text: str, dtstart: dt.datetime, timezone: str) -> rrule:
    problem = validate_timezone(timezone)
    if problem is not None:
        raise ValueError(problem)
    start = _local_start(dtstart, ZoneInfo(timezone))
    body = _rule_text(text)
    try:
        parsed = rrulestr(body, dtstart=start, cache=True)
    except (ValueError, TypeError, OverflowError) as e:
        raise ValueError(f"invalid recurrence rule: {e}") from None
    if not isinstance(parsed, rrule):  # rrulestr returns an rruleset only for several rules, refused above
        raise ValueError("give one RRULE only")
    limit = start + _HORIZON
    probe = parsed.replace(count=None, until=limit.astimezone(dt.UTC), cache=False)
    first = probe.after(start, inc=True)
    if first is None:
        raise ValueError("the recurrence rule never occurs (check BYMONTH, BYMONTHDAY, BYDAY and UNTIL)")
    previous = first
    for occurrence in probe.xafter(first, count=50):
        if occurrence - previous < MIN_SPACING:
            raise ValueError("occurrences are less than a minute apart: a schedule is for addresses, not a ticker")
        previous = occurrence
    return parsed


def validate_rrule(text: str, dtstart: dt.datetime | None = None, timezone: str = "UTC") -> str | None:
    """None if ``text`` is a usable recurrence rule from ``dtstart`` (local wall time in ``timezone``; default
    midnight 1 January 2025), else a message for the user saying what is wrong."""
    start = dtstart if dtstart is not None else dt.datetime(2025, 1, 1)
    if start.tzinfo is not None:
        problem = validate_timezone(timezone)
        if problem is not None:
            return problem
        start = start.astimezone(ZoneInfo(timezone)).replace(tzinfo=None)
    try:
        _rule(text, start, timezone)
    except ValueError as e:
        return str(e)
    return None


def _schedule_rule(schedule: Schedule) -> rrule:
    dtstart = schedule.dtstart
    if dtstart.tzinfo is not None:
        problem = validate_timezone(schedule.timezone)
        if problem is not None:
            raise ValueError(problem)
        dtstart = dtstart.astimezone(ZoneInfo(schedule.timezone)).replace(tzinfo=None)
    return _rule(schedule.rrule, dtstart, schedule.timezone)


def next_runs(schedule: Schedule, after: dt.datetime, count: int = 5) -> list[dt.datetime]:
    """The next ``count`` start times strictly after ``after``, in UTC. Raises ValueError for a bad schedule."""
    if after.tzinfo is None:
        raise ValueError("after must be timezone-aware")
    if count <= 0:
        return []
    return [_utc(t) for t in _schedule_rule(schedule).xafter(_utc(after), count=count)]


def due_runs(
    schedule: Schedule, last_run_at: dt.datetime | None, now: dt.datetime, grace: dt.timedelta = DEFAULT_GRACE
) -> dt.datetime | None:
    """The occurrence (UTC start) to start at ``now``, or None.

    It is the latest occurrence at or before ``now``, if it is newer than ``last_run_at`` (the one last
    started) and at most ``grace`` old; older ones are skipped for good. The caller starts it with
    ``duration_s - (now - occurrence)`` left. Raises ValueError for a bad schedule.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    now = _utc(now)
    latest = _schedule_rule(schedule).before(now, inc=True)
    if latest is None:
        return None
    occurrence = _utc(latest)
    if last_run_at is not None and occurrence <= _utc(last_run_at):
        return None
    if now - occurrence > grace:
        return None
    return occurrence


@dataclass(frozen=True)
class ScheduledRun:
    """One occurrence the scheduler acted on: the address it started, or why it did not."""

    schedule_id: int
    occurrence: dt.datetime
    address_id: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class _Due:
    schedule_id: int
    occurrence: dt.datetime
    title: str
    source: str
    zone_ids: list[int]
    priority: Priority
    duration_s: float
    user_id: int | None


class Scheduler:
    """Starts each enabled schedule's due occurrence through an `AddressStarter`.

    `tick` is one pass (read schedules, claim due occurrences in the database, start them); `run` ticks every
    `period_s` until told to stop. ``clock`` returns the current time, timezone-aware.
    """

    def __init__(
        self,
        database: Database,
        starter: AddressStarter,
        clock: Callable[[], dt.datetime],
        *,
        grace: dt.timedelta = DEFAULT_GRACE,
    ) -> None:
        self.database = database
        self.starter = starter
        self.clock = clock
        self.grace = grace
        self.started = 0
        self.failed = 0
        self._bad: dict[int, str] = {}  # schedule id -> the problem last logged, so it is logged once

    async def tick(self) -> list[ScheduledRun]:
        now = _utc(self.clock())
        due = await asyncio.to_thread(self._claim_due, now)
        runs: list[ScheduledRun] = []
        for d in due:
            remaining = d.duration_s - (now - d.occurrence).total_seconds()
            try:
                address_id = await self.starter.start(
                    title=d.title,
                    source=d.source,
                    zone_ids=d.zone_ids,
                    priority=d.priority,
                    speaker=SPEAKER,
                    user_id=d.user_id,
                    duration_s=remaining,
                    schedule_id=d.schedule_id,
                )
            except Exception as e:  # a bad schedule must not stop the others, nor the loop
                self.failed += 1
                log.error("schedule %d: cannot start the %s occurrence: %s", d.schedule_id, d.occurrence, e)
                runs.append(ScheduledRun(d.schedule_id, d.occurrence, error=str(e) or type(e).__name__))
                continue
            self.started += 1
            log.info("schedule %d: started address %d for %s", d.schedule_id, address_id, d.occurrence)
            runs.append(ScheduledRun(d.schedule_id, d.occurrence, address_id=address_id))
        return runs

    def _claim_due(self, now: dt.datetime) -> list[_Due]:
        claimed: list[_Due] = []
        with self.database.session() as session:
            schedules = session.scalars(select(Schedule).where(Schedule.enabled.is_(True)).order_by(Schedule.id))
            for s in schedules.all():
                try:
                    occurrence = due_runs(s, s.last_run_at, now, self.grace)
                except ValueError as e:
                    if self._bad.get(s.id) != str(e):
                        self._bad[s.id] = str(e)
                        log.error("schedule %d (%s) is not usable: %s", s.id, s.title, e)
                    continue
                self._bad.pop(s.id, None)
                if occurrence is None:
                    continue
                remaining = s.duration_s - (now - occurrence).total_seconds()
                # Claim it: only the first to move last_run_at forward starts it (restart, second hub).
                result = session.execute(
                    update(Schedule)
                    .where(Schedule.id == s.id)
                    .where(or_(Schedule.last_run_at.is_(None), Schedule.last_run_at < occurrence))
                    .values(last_run_at=occurrence)
                    .execution_options(synchronize_session=False)
                )
                if getattr(result, "rowcount", 0) != 1:
                    continue
                if remaining < 1.0:
                    log.info("schedule %d: the %s occurrence is already over; skipped", s.id, occurrence)
                    continue
                claimed.append(
                    _Due(
                        schedule_id=s.id,
                        occurrence=occurrence,
                        title=s.title,
                        source=s.source,
                        zone_ids=list(s.zone_ids or []),
                        priority=Priority(s.priority),
                        duration_s=s.duration_s,
                        user_id=s.created_by,
                    )
                )
        return claimed

    async def run(self, stop: asyncio.Event, period_s: float = 1.0) -> None:
        """Tick every ``period_s`` until ``stop`` is set. A failing tick (database down) is logged and retried."""
        while not stop.is_set():
            try:
                await self.tick()
            except Exception as e:
                log.error("scheduler tick failed: %s", e)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(period_s):
                    await stop.wait()
