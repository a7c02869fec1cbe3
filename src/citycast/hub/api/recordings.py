"""Recordings of addresses: the list, and the Ogg Opus audio to play in the browser or download."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse
from sqlalchemy import select

from citycast.hub.api.deps import Ctx, PathId, Viewer, not_found, utc
from citycast.hub.api.schemas import AUTH_ERRORS, ErrorOut, RecordingOut
from citycast.hub.db.models import Address, Recording, utcnow

router = APIRouter(tags=["recordings"], responses=AUTH_ERRORS)


@router.get("/api/recordings", response_model=list[RecordingOut])
async def list_recordings(_: Viewer, ctx: Ctx, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[RecordingOut]:
    now = utcnow()
    with ctx.db.session() as s:
        rows = s.execute(
            select(Recording, Address.title)
            .outerjoin(Address, Recording.address_id == Address.id)
            .order_by(Recording.started_at.desc(), Recording.id.desc())
            .limit(limit)
        ).all()
        out = []
        for rec, title in rows:
            started = utc(rec.started_at) or now
            ended = utc(rec.ended_at)
            out.append(
                RecordingOut(
                    id=rec.id,
                    address_id=rec.address_id,
                    title=title or f"recording {rec.id}",
                    channel=rec.channel,
                    started_at=started,
                    ended_at=ended,
                    duration_s=round(max(0.0, ((ended or now) - started).total_seconds()), 3),
                    bytes=rec.bytes,
                    first_sample_at=utc(rec.first_sample_at),
                )
            )
        return out


@router.get(
    "/api/recordings/{recording_id}/audio",
    response_class=FileResponse,
    responses={
        200: {"content": {"audio/ogg": {"schema": {"type": "string", "format": "binary"}}}},
        206: {"content": {"audio/ogg": {"schema": {"type": "string", "format": "binary"}}}},
        404: {"model": ErrorOut},
        416: {"description": "Range not satisfiable"},
    },
)
async def recording_audio(
    recording_id: PathId, _: Viewer, ctx: Ctx, download: Annotated[bool, Query()] = False
) -> FileResponse:
    with ctx.db.session() as s:
        rec = s.get(Recording, recording_id)
        if rec is None:
            raise not_found("recording", recording_id)
        rel = rec.path
    root = Path(ctx.recordings_dir).resolve()
    path = (root / rel).resolve()
    # The stored path is relative to the recordings directory; never serve anything outside it.
    if not path.is_relative_to(root) or not path.is_file():
        raise not_found("audio of recording", recording_id)
    return FileResponse(
        path,
        media_type="audio/ogg",
        filename=f"recording-{recording_id}.ogg",
        content_disposition_type="attachment" if download else "inline",
    )
