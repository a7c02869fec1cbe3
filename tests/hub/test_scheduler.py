"""The scheduler with time passed in: local wall times across time zones and DST, due occurrences, grace,
restarts on the same database, disabled and broken schedules, and rule validation."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select
from tests.helpers import wait_until

from citycast.hub.db import Database
from citycast.hub.db.models import Priority, Schedule
from citycast.hub.scheduler import Scheduler, due_runs, next_runs, validate_rrule, validate_timezone

FRIDAY_8PM = "FREQ=WEEKLY;BYDAY=FR;BYHOUR=20;BYMINUTE=0"
UTC = dt.UTC


def _utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def _schedule(**kw: Any) -> Schedule:
    fields: dict[str, Any] = {
        "title": "Friday address",
        "rrule": FRIDAY_8PM,
        "dtstart": dt.datetime(2025, 6, 6, 20, 0),
        "timezone": "Asia/Karachi",
        "duration_s": 600.0,
        "source": "tone",
        "priority": Priority.scheduled,
        "zone_ids": [1, 2],
        "enabled": True,
    }
    fields.update(kw)
    return Schedule(**fields)


class RecordingStarter:
    """Test double for the address manager: records each start and returns a new address id."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[dict[str, Any]] = []
        self.fail = fail

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
    ) -> int:
        self.calls.append(
            {
                "title": title,
                "source": source,
                "zone_ids": zone_ids,
                "priority": priority,
                "speaker": speaker,
                "user_id": user_id,
                "duration_s": duration_s,
                "schedule_id": schedule_id,
            }
        )
        if self.fail:
            raise ValueError("no such file: gone.ogg")
        return 100 + len(self.calls)


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def _add(database: Database, schedule: Schedule) -> int:
    with database.session() as s:
        s.add(schedule)
        s.flush()
        return schedule.id


def _last_run(database: Database, schedule_id: int) -> dt.datetime | None:
    with database.session() as s:
        value = s.scalar(select(Schedule.last_run_at).where(Schedule.id == schedule_id))
    return None if value is None else value.replace(tzinfo=UTC) if value.tzinfo is None else value


def test_friday_8pm_karachi_in_utc() -> None:
    runs = next_runs(_schedule(), after=_utc(2025, 6, 1), count=4)
    # Karachi is UTC+5 all year.
    assert runs == [_utc(2025, 6, 6, 15), _utc(2025, 6, 13, 15), _utc(2025, 6, 20, 15), _utc(2025, 6, 27, 15)]
    assert all(r.tzinfo == UTC for r in runs)
    # Strictly after: asking at an occurrence gives the next one.
    assert next_runs(_schedule(), after=_utc(2025, 6, 6, 15), count=1) == [_utc(2025, 6, 13, 15)]
    # Nothing before dtstart.
    assert next_runs(_schedule(), after=_utc(2020, 1, 1), count=1) == [_utc(2025, 6, 6, 15)]


def test_wall_time_holds_across_dst() -> None:
    london = _schedule(timezone="Europe/London", dtstart=dt.datetime(2025, 3, 14, 20, 0))
    runs = next_runs(london, after=_utc(2025, 3, 1), count=4)
    # Clocks go forward on 30 March 2025: 20:00 GMT becomes 20:00 BST = 19:00 UTC.
    assert runs == [_utc(2025, 3, 14, 20), _utc(2025, 3, 21, 20), _utc(2025, 3, 28, 20), _utc(2025, 4, 4, 19)]
    autumn = next_runs(london, after=_utc(2025, 10, 20), count=2)
    assert autumn == [_utc(2025, 10, 24, 19), _utc(2025, 10, 31, 20)]  # back on 26 October
    for r in runs + autumn:
        local = r.astimezone(ZoneInfo("Europe/London"))
        assert (local.weekday(), local.hour, local.minute) == (4, 20, 0)


def test_due_runs_grace_and_last_run() -> None:
    s = _schedule()
    occurrence = _utc(2025, 6, 13, 15)
    grace = dt.timedelta(minutes=2)
    assert due_runs(s, None, occurrence - dt.timedelta(seconds=1), grace) is None  # last week's is long gone
    assert due_runs(s, _utc(2025, 6, 6, 15), occurrence - dt.timedelta(seconds=1), grace) is None
    assert due_runs(s, _utc(2025, 6, 6, 15), occurrence, grace) == occurrence
    assert due_runs(s, _utc(2025, 6, 6, 15), occurrence + dt.timedelta(seconds=90), grace) == occurrence
    assert due_runs(s, occurrence, occurrence + dt.timedelta(seconds=5), grace) is None  # already started
    assert due_runs(s, None, occurrence + dt.timedelta(minutes=3), grace) is None  # missed beyond grace
    assert due_runs(s, None, occurrence + dt.timedelta(days=1), grace) is None  # the hub was down a day
    with pytest.raises(ValueError):
        due_runs(s, None, dt.datetime(2025, 6, 13, 15), grace)  # naive "now" is refused


async def test_scheduler_starts_each_occurrence_once_across_restarts(database: Database) -> None:
    sid = _add(database, _schedule())
    clock = Clock(_utc(2025, 6, 13, 14, 59, 59))
    starter = RecordingStarter()
    scheduler = Scheduler(database, starter, clock, grace=dt.timedelta(minutes=2))
    assert await scheduler.tick() == []
    clock.now = _utc(2025, 6, 13, 15, 0, 10)  # ten seconds late
    runs = await scheduler.tick()
    assert [(r.schedule_id, r.occurrence, r.address_id) for r in runs] == [(sid, _utc(2025, 6, 13, 15), 101)]
    assert starter.calls == [
        {
            "title": "Friday address",
            "source": "tone",
            "zone_ids": [1, 2],
            "priority": Priority.scheduled,
            "speaker": "schedule",
            "user_id": None,
            "duration_s": pytest.approx(590.0),  # it still ends on time
            "schedule_id": sid,
        }
    ]
    assert _last_run(database, sid) == _utc(2025, 6, 13, 15)
    clock.now = _utc(2025, 6, 13, 15, 0, 11)
    assert await scheduler.tick() == []
    # The hub restarts within the grace period: a new scheduler on the same database does not start it again.
    restarted = Scheduler(database, starter, clock, grace=dt.timedelta(minutes=2))
    clock.now = _utc(2025, 6, 13, 15, 0, 40)
    assert await restarted.tick() == []
    assert len(starter.calls) == 1
    # Next week it runs again.
    clock.now = _utc(2025, 6, 20, 15, 0, 0)
    assert [r.occurrence for r in await restarted.tick()] == [_utc(2025, 6, 20, 15)]
    assert len(starter.calls) == 2


async def test_occurrences_missed_beyond_grace_are_skipped(database: Database) -> None:
    sid = _add(database, _schedule(last_run_at=_utc(2025, 6, 6, 15)))
    starter = RecordingStarter()
    clock = Clock(_utc(2025, 6, 14, 15, 0))  # the hub was down from Friday to Saturday
    scheduler = Scheduler(database, starter, clock, grace=dt.timedelta(minutes=2))
    assert await scheduler.tick() == []
    clock.now = _utc(2025, 6, 13, 15, 5)  # five minutes late is beyond two minutes of grace too
    assert await scheduler.tick() == []
    assert starter.calls == []
    assert _last_run(database, sid) == _utc(2025, 6, 6, 15)
    clock.now = _utc(2025, 6, 20, 15, 1)  # the next one, a minute late, runs
    assert len(await scheduler.tick()) == 1
    assert starter.calls[0]["duration_s"] == pytest.approx(540.0)


async def test_disabled_and_broken_schedules_do_not_run(database: Database) -> None:
    _add(database, _schedule(enabled=False))
    _add(database, _schedule(rrule="FREQ=WEEKLY;BYDAY=XX"))  # written around the API's validation
    _add(database, _schedule(timezone="Mars/Olympus_Mons"))
    good = _add(database, _schedule(title="good"))
    starter = RecordingStarter()
    scheduler = Scheduler(database, starter, Clock(_utc(2025, 6, 13, 15, 0, 1)))
    runs = await scheduler.tick()
    assert [r.schedule_id for r in runs] == [good]
    assert [c["title"] for c in starter.calls] == ["good"]


async def test_a_failed_start_is_reported_and_not_retried(database: Database) -> None:
    sid = _add(database, _schedule())
    starter = RecordingStarter(fail=True)
    clock = Clock(_utc(2025, 6, 13, 15, 0, 1))
    scheduler = Scheduler(database, starter, clock)
    runs = await scheduler.tick()
    assert len(runs) == 1 and runs[0].address_id is None and runs[0].error == "no such file: gone.ogg"
    assert scheduler.failed == 1
    clock.now = _utc(2025, 6, 13, 15, 0, 2)
    assert await scheduler.tick() == []
    assert len(starter.calls) == 1
    assert _last_run(database, sid) == _utc(2025, 6, 13, 15)


class CountingClock(Clock):
    """Counts the reads: `Scheduler.tick` reads the clock once a pass, so this counts the loop's ticks."""

    def __init__(self, now: dt.datetime) -> None:
        super().__init__(now)
        self.reads = 0

    def __call__(self) -> dt.datetime:
        self.reads += 1
        return self.now


async def test_run_loop_starts_once_and_stops(database: Database) -> None:
    _add(database, _schedule(rrule="FREQ=DAILY;BYHOUR=20;BYMINUTE=0"))
    starter = RecordingStarter()
    clock = CountingClock(_utc(2025, 6, 10, 15, 0, 3))
    scheduler = Scheduler(database, starter, clock)
    stop = asyncio.Event()
    task = asyncio.create_task(scheduler.run(stop, period_s=0.02))
    await wait_until(lambda: scheduler.started == 1, "the loop to start the due occurrence", every=0.005)
    ticks_at_start = clock.reads
    # Several more passes at the same instant: each sees the occurrence already claimed.
    await wait_until(
        lambda: clock.reads >= ticks_at_start + 5, "5 more passes of the loop after the start", every=0.005
    )
    stop.set()
    async with asyncio.timeout(5):
        await task
    assert clock.reads >= ticks_at_start + 5
    assert scheduler.started == 1
    assert len(starter.calls) == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("hello", "not NAME=VALUE"),
        ("BYDAY=FR", "FREQ is missing"),
        ("FREQ=WEEKLY;BYDAY=XX", "invalid recurrence rule: invalid 'BYDAY': XX"),
        ("FREQ=DAILY;BYHOUR=25", "hour must be in 0..23"),
        ("FREQ=DAILY;FOO=1", "unknown parameter 'FOO'"),
        ("FREQ=SECONDLY", "not allowed"),
        ("FREQ=MINUTELY;INTERVAL=5", "not allowed"),
        ("FREQ=HOURLY;BYSECOND=0,30", "less than a minute apart"),
        ("FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=30", "never occurs"),
        ("DTSTART:20250101T000000\nRRULE:FREQ=DAILY", "one RRULE only"),
        ("FREQ=WEEKLY;UNTIL=20250101T000000", "UTC"),
        ("FREQ=DAILY;" * 60, "longer than 500"),
    ],
)
def test_bad_rules_get_a_clear_message(text: str, message: str) -> None:
    problem = validate_rrule(text, dt.datetime(2025, 1, 1, 20, 0), "Asia/Karachi")
    assert problem is not None and message in problem, problem


def test_good_rules_and_zones() -> None:
    for text in (
        FRIDAY_8PM,
        "RRULE:FREQ=DAILY;BYHOUR=5,13,18;BYMINUTE=15",
        "FREQ=MONTHLY;BYDAY=1MO;COUNT=12",
        "FREQ=WEEKLY;BYDAY=FR;UNTIL=20261231T000000Z",
        "FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=29",  # leap years only: rare, but real
    ):
        assert validate_rrule(text, dt.datetime(2025, 1, 1, 20, 0), "Asia/Karachi") is None, text
    assert validate_timezone("Europe/London") is None
    problem = validate_timezone("Mars/Olympus_Mons")
    assert problem is not None and "unknown time zone" in problem
    assert validate_rrule(FRIDAY_8PM, timezone="../../etc/passwd") is not None
    with pytest.raises(ValueError, match="unknown time zone"):
        next_runs(_schedule(timezone="Nowhere/Never"), after=_utc(2025, 1, 1))
