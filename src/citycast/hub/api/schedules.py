"""Schedules: recurring addresses (RFC 5545 rules in a local time zone), with their next runs."""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, HTTPException, Request, status
from sqlalchemy import select
from sqlalchemy.orm import Session as DbSession

from citycast.hub.api.deps import Ctx, Operator, PathId, Viewer, not_found, record, utc
from citycast.hub.api.schemas import AUTH_ERRORS, ErrorOut, OkOut, ScheduleIn, ScheduleOut, SchedulePatch
from citycast.hub.context import HubContext
from citycast.hub.db.models import Schedule, Zone, utcnow
from citycast.hub.scheduler import next_runs, validate_rrule, validate_timezone

NEXT_RUNS = 5

router = APIRouter(tags=["schedules"], responses=AUTH_ERRORS)


def _unprocessable(message: str) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, message)


def schedule_out(sch: Schedule, now: dt.datetime) -> ScheduleOut:
    try:
        runs = next_runs(sch, now, NEXT_RUNS)
    except ValueError:
        runs = []  # a rule stored before validation tightened: show it, with nothing coming
    return ScheduleOut(
        id=sch.id,
        title=sch.title,
        rrule=sch.rrule,
        dtstart=sch.dtstart,
        timezone=sch.timezone,
        duration_s=sch.duration_s,
        source=sch.source,
        zone_ids=list(sch.zone_ids or []),
        priority=sch.priority,
        enabled=sch.enabled,
        last_run_at=utc(sch.last_run_at),
        next_runs=[utc(r) or r for r in runs],
    )


def _local(dtstart: dt.datetime, timezone: str) -> dt.datetime:
    """The stored start is naive local time in the schedule's zone; an offset, if sent, is converted to it."""
    if dtstart.tzinfo is None:
        return dtstart
    return dtstart.astimezone(ZoneInfo(timezone)).replace(tzinfo=None)


def _check(ctx: HubContext, s: DbSession, fields: dict[str, Any]) -> None:
    """Validate what a body sets, with messages the console can show as they are."""
    if "timezone" in fields:
        problem = validate_timezone(fields["timezone"])
        if problem is not None:
            raise _unprocessable(problem)
    if "source" in fields:
        known = {x["id"] for x in ctx.addresses.sources()}
        if fields["source"] not in known:
            raise _unprocessable(f"unknown source {fields['source']!r}: choose one of {', '.join(sorted(known))}")
    if fields.get("zone_ids"):
        wanted = set(fields["zone_ids"])
        found = set(s.scalars(select(Zone.id).where(Zone.id.in_(wanted))))
        if wanted - found:
            raise _unprocessable(f"no such zone: {sorted(wanted - found)}")


def _check_rule(sch: Schedule) -> None:
    """The rule must make sense from this start in this zone (one whose every occurrence falls before dtstart,
    or that fires every second, is refused with the scheduler's own explanation)."""
    problem = validate_rrule(sch.rrule, sch.dtstart, sch.timezone)
    if problem is not None:
        raise _unprocessable(problem)


@router.get("/api/schedules", response_model=list[ScheduleOut])
async def list_schedules(_: Viewer, ctx: Ctx) -> list[ScheduleOut]:
    now = utcnow()
    with ctx.db.session() as s:
        return [schedule_out(sch, now) for sch in s.scalars(select(Schedule).order_by(Schedule.id))]


@router.post("/api/schedules", response_model=ScheduleOut, status_code=201, responses={422: {"model": ErrorOut}})
async def create_schedule(body: ScheduleIn, request: Request, user: Operator, ctx: Ctx) -> ScheduleOut:
    fields = body.model_dump()
    with ctx.db.session() as s:
        _check(ctx, s, fields)
        fields["dtstart"] = _local(body.dtstart, body.timezone)
        sch = Schedule(**fields, created_by=user.id)
        _check_rule(sch)
        s.add(sch)
        s.flush()
        record(s, request, user, "schedule.create", f"schedule:{sch.id}", fields)
        return schedule_out(sch, utcnow())


@router.patch(
    "/api/schedules/{schedule_id}",
    response_model=ScheduleOut,
    responses={404: {"model": ErrorOut}, 422: {"model": ErrorOut}},
)
async def update_schedule(
    schedule_id: PathId, body: SchedulePatch, request: Request, user: Operator, ctx: Ctx
) -> ScheduleOut:
    fields = body.model_dump(exclude_none=True)
    with ctx.db.session() as s:
        sch = s.get(Schedule, schedule_id)
        if sch is None:
            raise not_found("schedule", schedule_id)
        _check(ctx, s, fields)
        if "dtstart" in fields:
            fields["dtstart"] = _local(fields["dtstart"], fields.get("timezone", sch.timezone))
        for key, value in fields.items():
            setattr(sch, key, value)
        _check_rule(sch)
        record(s, request, user, "schedule.update", f"schedule:{sch.id}", fields)
        return schedule_out(sch, utcnow())


@router.delete("/api/schedules/{schedule_id}", response_model=OkOut, responses={404: {"model": ErrorOut}})
async def delete_schedule(schedule_id: PathId, request: Request, user: Operator, ctx: Ctx) -> OkOut:
    with ctx.db.session() as s:
        sch = s.get(Schedule, schedule_id)
        if sch is None:
            raise not_found("schedule", schedule_id)
        s.delete(sch)
        record(s, request, user, "schedule.delete", f"schedule:{schedule_id}", {"title": sch.title})
    return OkOut()
