"""Proof of play: per address, which sites played it fully, partly or not at all, from the receipts they signed
(citycast.hub.receipts), as JSON for the console, CSV for a spreadsheet, and a printable page. Operators only."""

from __future__ import annotations

import asyncio
import datetime as dt
import html
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel
from sqlalchemy import select

from citycast.hub.api.deps import Ctx, Operator, PathId, not_found
from citycast.hub.api.schemas import AUTH_ERRORS, ErrorOut
from citycast.hub.db.engine import Database
from citycast.hub.db.models import Address
from citycast.hub.receipts import address_report, report_csv

router = APIRouter(tags=["receipts"], responses=AUTH_ERRORS)


class SitePlayOut(BaseModel):
    site: str
    label: str
    zone: str | None
    lat: float
    lon: float
    verdict: str  # full, partly, none
    first_at: dt.datetime | None  # stream time of the first sample it played
    last_at: dt.datetime | None  # and of the end of the last
    spans: list[list[dt.datetime]]  # what it played, merged: [[from, to], …]
    played_s: float
    concealed: int
    fallback_s: float
    sync_error_ms: float | None
    level_rms_dbfs: float | None
    level_peak_dbfs: float | None
    receipts: int
    open: bool  # only interim receipts so far for its last span (still playing, or not heard from since)


class VerdictCounts(BaseModel):
    full: int
    partly: int
    none: int


class ReceiptReportOut(BaseModel):
    id: int
    title: str
    channel: int
    priority: str
    status: str
    started_at: dt.datetime
    ended_at: dt.datetime | None
    zone_ids: list[int]
    on_air: bool
    first_at: dt.datetime  # the address's first sample: the earliest any site played, else its start
    last_at: dt.datetime  # and its last
    duration_s: float
    counts: VerdictCounts
    sites: list[SitePlayOut]


class RefusedOut(BaseModel):
    taken: int
    forged: int  # receipts refused as forged: another site's key, altered, wrong site, malformed
    refused: dict[str, int]  # by reason (citycast.hub.receipts.Refusal)
    throttled: int  # beyond a site's budget, left unanswered (the site sends them again)


def _recent(db: Database, limit: int) -> list[dict[str, Any]]:
    with db.session() as s:
        ids = list(s.scalars(select(Address.id).order_by(Address.started_at.desc(), Address.id.desc()).limit(limit)))
    reports = (address_report(db, i) for i in ids)
    return [{**r, "sites": []} for r in reports if r is not None]


@router.get("/api/receipts", response_model=list[ReceiptReportOut])
async def list_reports(_: Operator, ctx: Ctx, limit: Annotated[int, Query(ge=1, le=200)] = 50) -> list[dict[str, Any]]:
    """The latest addresses with how many sites played each fully, partly or not at all (no per-site rows)."""
    return await asyncio.to_thread(_recent, ctx.db, limit)


@router.get("/api/receipts/refused", response_model=RefusedOut)
async def refused(_: Operator, ctx: Ctx) -> RefusedOut:
    """Receipts the hub took and refused since it started (forged ones are also in its log)."""
    svc = ctx.receipts
    if svc is None:
        return RefusedOut(taken=0, forged=0, refused={}, throttled=0)
    return RefusedOut(taken=svc.taken, forged=svc.forged, refused=dict(svc.refused), throttled=svc.throttled)


async def _report(ctx: Ctx, address_id: int) -> dict[str, Any]:
    report = await asyncio.to_thread(address_report, ctx.db, address_id)
    if report is None:
        raise not_found("address", address_id)
    return report


@router.get("/api/receipts/{address_id}", response_model=ReceiptReportOut, responses={404: {"model": ErrorOut}})
async def get_report(address_id: PathId, _: Operator, ctx: Ctx) -> dict[str, Any]:
    return await _report(ctx, address_id)


@router.get(
    "/api/receipts/{address_id}/csv",
    response_class=Response,
    responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}}, 404: {"model": ErrorOut}},
)
async def report_as_csv(address_id: PathId, _: Operator, ctx: Ctx) -> Response:
    report = await _report(ctx, address_id)
    return Response(
        report_csv(report),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="proof-of-play-{address_id}.csv"'},
    )


def _page(report: dict[str, Any]) -> str:
    e = html.escape
    rows = "".join(
        "<tr class='{v}'><td>{site}</td><td>{label}</td><td>{zone}</td><td>{v}</td><td>{first}</td><td>{last}</td>"
        "<td>{played}</td><td>{concealed}</td><td>{fallback}</td><td>{sync}</td><td>{level}</td></tr>".format(
            v=e(s["verdict"]),
            site=e(s["site"]),
            label=e(s["label"]),
            zone=e(s["zone"] or ""),
            first=e(s["first_at"] or "-"),
            last=e(s["last_at"] or "-"),
            played=f"{s['played_s']:.1f}",
            concealed=s["concealed"],
            fallback=f"{s['fallback_s']:.1f}",
            sync="-" if s["sync_error_ms"] is None else f"{s['sync_error_ms']:.2f}",
            level="-" if s["level_rms_dbfs"] is None else f"{s['level_rms_dbfs']:.1f}",
        )
        for s in report["sites"]
    )
    c = report["counts"]
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>Proof of play: {e(report['title'])}</title>"
        "<link rel='stylesheet' href='/receipts-print.css'></head><body>"
        f"<h1>Proof of play: {e(report['title'])}</h1>"
        f"<p>Address {report['id']}, channel {report['channel']}, {e(report['priority'])}; "
        f"broadcast {e(report['first_at'])} to {e(report['last_at'])} ({report['duration_s']:.1f} s)"
        f"{' (still on air)' if report['on_air'] else ''}.</p>"
        f"<p class='counts'>Played fully: {c['full']} · partly: {c['partly']} · not at all: {c['none']}</p>"
        "<table><thead><tr><th>site</th><th>place</th><th>zone</th><th>played</th><th>first sample (UTC)</th>"
        "<th>last sample (UTC)</th><th>seconds</th><th>concealed</th><th>fallback s</th><th>sync error ms</th>"
        f"<th>level dBFS</th></tr></thead><tbody>{rows}</tbody></table>"
        "<p class='note'>Each row is backed by receipts the site signed with its own key (kept by the hub with "
        "their signatures). Times are the broadcast clock's.</p></body></html>"
    )


@router.get(
    "/api/receipts/{address_id}/print",
    response_class=Response,  # errors stay JSON (ErrorOut); only the page itself is HTML
    responses={200: {"content": {"text/html": {"schema": {"type": "string"}}}}, 404: {"model": ErrorOut}},
)
async def report_page(address_id: PathId, _: Operator, ctx: Ctx) -> HTMLResponse:
    return HTMLResponse(_page(await _report(ctx, address_id)))
