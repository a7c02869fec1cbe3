"""Speaker PINs for the telephone: operators give, change and withdraw them. A PIN is shown once, when the hub
generates it; afterwards only its last two digits (`pin_hint`) are ever shown.

New PINs have 6 to 12 digits. Each row is listed with what the guard knows of it: `locked_until` (a PIN being
guessed is locked, even against its right PIN, see `citycast.hub.telephone.pins`), its recent failures, and
`weak` (seen in use with fewer than 6 digits). An operator unlocks a PIN (`POST /api/pins/{id}/unlock`) or gives
it a new generated number (`POST /api/pins/{id}/rotate`, shown once), which also moves it out of the
last-two-digits group a guesser was working on."""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import time
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import AwareDatetime, BaseModel, Field, field_validator, model_validator
from sqlalchemy import select
from sqlalchemy.orm import Session as DbSession

from citycast.hub.api.deps import Ctx, Operator, PathId, not_found, record, utc
from citycast.hub.api.schemas import AUTH_ERRORS, DbId, ErrorOut, OkOut, Strict
from citycast.hub.auth.passwords import hash_password
from citycast.hub.auth.roles import allows
from citycast.hub.db.models import Priority, Role, SpeakerPin, User, Zone, utcnow
from citycast.hub.i18n import Language
from citycast.hub.telephone.pins import NEW_PIN_MIN_DIGITS, PIN_MAX_DIGITS, PinGuard, PinStore, hint_of, new_pin_problem

GENERATED_DIGITS = 6
GENERATE_ATTEMPTS = 20

router = APIRouter(tags=["pins"], responses=AUTH_ERRORS)

Label = Annotated[str, Field(min_length=1, max_length=128, description='Who the PIN is for: "Imam Saddar mosque"')]


def _check_pin(value: str | None) -> str | None:
    if value is not None:
        problem = new_pin_problem(value)
        if problem is not None:
            raise ValueError(problem)
    return value


def _check_label(value: str | None) -> str | None:
    if value is not None and any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("a label must not contain control characters")
    return value


def _as_utc(value: dt.datetime | None) -> dt.datetime | None:
    """In UTC now, so a time at the edge of the calendar is a 422 here rather than an error in the database."""
    if value is None:
        return None
    try:
        return value.astimezone(dt.UTC)
    except OverflowError as e:
        raise ValueError("the time is out of range") from e


def _check_window(valid_from: dt.datetime | None, valid_until: dt.datetime | None) -> None:
    if valid_from is not None and valid_until is not None and valid_until <= valid_from:
        raise ValueError("valid_until must be after valid_from")


class PinIn(Strict):
    label: Label
    pin: str | None = Field(
        default=None,
        description=f"{NEW_PIN_MIN_DIGITS}-{PIN_MAX_DIGITS} digits; leave out to have the hub make a 6-digit PIN",
    )
    zone_ids: list[DbId] = Field(default_factory=list, description="Empty: every zone")
    priority: Priority = Priority.live
    valid_from: AwareDatetime | None = None
    valid_until: AwareDatetime | None = None
    user_id: DbId | None = Field(default=None, description="The speaker's user account, if any")
    language: Language = Field(default="en", description="The language of the telephone prompts after the PIN")

    @field_validator("pin")
    @classmethod
    def _pin_format(cls, value: str | None) -> str | None:
        return _check_pin(value)

    @field_validator("label")
    @classmethod
    def _label_text(cls, value: str | None) -> str | None:
        return _check_label(value)

    @field_validator("valid_from", "valid_until")
    @classmethod
    def _in_utc(cls, value: dt.datetime | None) -> dt.datetime | None:
        return _as_utc(value)

    @model_validator(mode="after")
    def _window(self) -> PinIn:
        _check_window(self.valid_from, self.valid_until)
        return self


class PinPatch(Strict):
    """Fields sent are changed; `valid_from`, `valid_until` and `user_id` may be sent as null to clear them."""

    label: Label | None = None
    enabled: bool | None = None
    zone_ids: list[DbId] | None = None
    priority: Priority | None = None
    valid_from: AwareDatetime | None = None
    valid_until: AwareDatetime | None = None
    user_id: DbId | None = None
    language: Language | None = None

    @field_validator("label")
    @classmethod
    def _label_text(cls, value: str | None) -> str | None:
        return _check_label(value)

    @field_validator("valid_from", "valid_until")
    @classmethod
    def _in_utc(cls, value: dt.datetime | None) -> dt.datetime | None:
        return _as_utc(value)

    @model_validator(mode="after")
    def _not_null(self) -> PinPatch:
        for name in ("label", "enabled", "zone_ids", "priority", "language"):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null")
        return self


class PinOut(BaseModel):
    id: int
    label: str
    pin_hint: str = Field(description="The PIN's last two digits")
    user_id: int | None
    zone_ids: list[int]
    priority: Priority
    valid_from: dt.datetime | None
    valid_until: dt.datetime | None
    enabled: bool
    valid_now: bool = Field(description="Enabled and within its validity now")
    created_at: dt.datetime
    last_used_at: dt.datetime | None
    weak: bool = Field(default=False, description=f"Seen in use with fewer than {NEW_PIN_MIN_DIGITS} digits: rotate it")
    locked_until: dt.datetime | None = Field(
        default=None, description="Locked after repeated wrong guesses until then: even the right PIN is refused"
    )
    recent_failures: int = Field(default=0, description="Wrong guesses counted against it in the last 10 min")
    language: str = Field(default="en", description="The language of the telephone prompts after the PIN")


class PinCreatedOut(PinOut):
    pin: str | None = Field(
        default=None, description="The PIN the hub generated, shown this once; null when the PIN was given"
    )


def pin_guard_of(request: Request) -> PinGuard:
    """The hub's one PIN guard (the runtime puts it on the app, shared with the telephone and the browser's go
    live); an app built without one gets its own on first use."""
    guard: PinGuard | None = getattr(request.app.state, "pin_guard", None)
    if guard is None:
        guard = request.app.state.pin_guard = PinGuard()
    return guard


@dataclass(frozen=True)
class GuardView:
    """What the guard and the audit log know of the rows, for listing them."""

    guard: PinGuard
    weak: frozenset[int]
    now_s: float

    def fields(self, pin_id: int, now: dt.datetime) -> dict[str, Any]:
        locked_for = self.guard.pin_locked_for(pin_id, self.now_s)
        return {
            "weak": pin_id in self.weak,
            "locked_until": now + dt.timedelta(seconds=locked_for) if locked_for > 0 else None,
            "recent_failures": self.guard.pin_failures_recent(pin_id, self.now_s),
        }


async def guard_view(request: Request, ctx: Any) -> GuardView:
    weak = await asyncio.to_thread(PinStore(ctx.db).weak_ids)
    return GuardView(pin_guard_of(request), frozenset(weak), time.monotonic())


def pin_out(row: SpeakerPin, now: dt.datetime, view: GuardView | None = None) -> PinOut:
    valid_from, valid_until = utc(row.valid_from), utc(row.valid_until)
    return PinOut(
        id=row.id,
        label=row.label,
        pin_hint=row.pin_hint,
        user_id=row.user_id,
        zone_ids=list(row.zone_ids or []),
        priority=row.priority,
        valid_from=valid_from,
        valid_until=valid_until,
        enabled=row.enabled,
        valid_now=row.enabled
        and (valid_from is None or valid_from <= now)
        and (valid_until is None or valid_until > now),
        created_at=utc(row.created_at) or row.created_at,
        last_used_at=utc(row.last_used_at),
        language=row.language or "en",
        **(view.fields(row.id, now) if view is not None else {}),
    )


def _unprocessable(message: str) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, message)


def _check_refs(s: DbSession, fields: dict[str, Any]) -> None:
    if fields.get("zone_ids"):
        wanted = set(fields["zone_ids"])
        found = set(s.scalars(select(Zone.id).where(Zone.id.in_(wanted))))
        if wanted - found:
            raise _unprocessable(f"no such zone: {sorted(wanted - found)}")
    if fields.get("user_id") is not None:
        user = s.get(User, fields["user_id"])
        if user is None:
            raise _unprocessable(f"no such user: {fields['user_id']}")
        if not allows(user.role, Role.speaker):
            raise _unprocessable(f"user {user.username} is a {user.role}: a PIN's user needs the speaker role")


def _audit_fields(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if k not in ("pin", "pin_hash")}  # never a PIN, not even hashed


def _new_pin(store: PinStore, given: str | None) -> tuple[str, str]:
    """(PIN, hash) for a new row; a worker thread's job (each hash check takes tens of milliseconds)."""
    if given is not None:
        problem = store.problem_with_new(given)
        if problem is not None:
            raise _unprocessable(problem)
        return given, hash_password(given)
    for _ in range(GENERATE_ATTEMPTS):
        pin = f"{secrets.randbelow(10**GENERATED_DIGITS):0{GENERATED_DIGITS}d}"
        if store.problem_with_new(pin) is None:
            return pin, hash_password(pin)
    raise HTTPException(status.HTTP_409_CONFLICT, "could not find a free PIN: give one")


@router.get("/api/pins", response_model=list[PinOut])
async def list_pins(request: Request, _: Operator, ctx: Ctx) -> list[PinOut]:
    view = await guard_view(request, ctx)
    now = utcnow()
    with ctx.db.session() as s:
        return [pin_out(row, now, view) for row in s.scalars(select(SpeakerPin).order_by(SpeakerPin.id))]


@router.post(
    "/api/pins",
    response_model=PinCreatedOut,
    status_code=201,
    responses={409: {"model": ErrorOut}, 422: {"model": ErrorOut}},
)
async def create_pin(body: PinIn, request: Request, user: Operator, ctx: Ctx) -> PinCreatedOut:
    fields = body.model_dump(exclude={"pin"})
    with ctx.db.session() as s:
        _check_refs(s, fields)
    store = PinStore(ctx.db)
    pin, pin_hash = await asyncio.to_thread(_new_pin, store, body.pin)
    with ctx.db.session() as s:
        row = SpeakerPin(**fields, pin_hash=pin_hash, pin_hint=hint_of(pin), enabled=True)
        s.add(row)
        s.flush()
        detail = _audit_fields(fields) | {"pin_hint": row.pin_hint, "generated": body.pin is None}
        record(s, request, user, "pin.create", f"pin:{row.id}", detail)
        out = pin_out(row, utcnow())
    return PinCreatedOut(**out.model_dump(), pin=pin if body.pin is None else None)


@router.patch(
    "/api/pins/{pin_id}",
    response_model=PinOut,
    responses={404: {"model": ErrorOut}, 422: {"model": ErrorOut}},
)
async def update_pin(pin_id: PathId, body: PinPatch, request: Request, user: Operator, ctx: Ctx) -> PinOut:
    fields = body.model_dump(exclude_unset=True)
    store = PinStore(ctx.db)
    with ctx.db.session() as s:
        row = s.get(SpeakerPin, pin_id)
        if row is None:
            raise not_found("PIN", pin_id)
        _check_refs(s, fields)
        try:
            _check_window(
                fields.get("valid_from", utc(row.valid_from)), fields.get("valid_until", utc(row.valid_until))
            )
        except ValueError as e:
            raise _unprocessable(str(e)) from e
        if fields.get("enabled") and not row.enabled and store.hint_full(row.pin_hint, exclude_id=row.id):
            raise _unprocessable(f"too many enabled PINs end in {row.pin_hint}: disable one of them first")
        for key, value in fields.items():
            setattr(row, key, value)
        record(s, request, user, "pin.update", f"pin:{row.id}", _audit_fields(fields))
        return pin_out(row, utcnow(), await guard_view(request, ctx))


@router.delete("/api/pins/{pin_id}", response_model=OkOut, responses={404: {"model": ErrorOut}})
async def delete_pin(pin_id: PathId, request: Request, user: Operator, ctx: Ctx) -> OkOut:
    with ctx.db.session() as s:
        row = s.get(SpeakerPin, pin_id)
        if row is None:
            raise not_found("PIN", pin_id)
        s.delete(row)
        record(s, request, user, "pin.delete", f"pin:{pin_id}", {"label": row.label, "pin_hint": row.pin_hint})
    return OkOut()


@router.post("/api/pins/{pin_id}/unlock", response_model=PinOut, responses={404: {"model": ErrorOut}})
async def unlock_pin(pin_id: PathId, request: Request, user: Operator, ctx: Ctx) -> PinOut:
    """Lift a lock put on the PIN after repeated wrong guesses (and forget its recent failures). If the guessing
    goes on, it locks again: rotating the PIN is the lasting answer."""
    guard = pin_guard_of(request)
    with ctx.db.session() as s:
        row = s.get(SpeakerPin, pin_id)
        if row is None:
            raise not_found("PIN", pin_id)
        was_locked = guard.pin_locked_for(pin_id, time.monotonic()) > 0
        guard.unlock_pin(pin_id)
        record(s, request, user, "pin.unlock", f"pin:{pin_id}", {"was_locked": was_locked})
        return pin_out(row, utcnow(), await guard_view(request, ctx))


@router.post(
    "/api/pins/{pin_id}/rotate",
    response_model=PinCreatedOut,
    responses={404: {"model": ErrorOut}, 409: {"model": ErrorOut}},
)
async def rotate_pin(pin_id: PathId, request: Request, user: Operator, ctx: Ctx) -> PinCreatedOut:
    """Give the PIN a new generated 6-digit number, shown this once; the old number stops working at once, and
    any lock on the row is lifted (the guesser's work was on the old number)."""
    store = PinStore(ctx.db)
    with ctx.db.session() as s:
        if s.get(SpeakerPin, pin_id) is None:
            raise not_found("PIN", pin_id)
    pin, pin_hash = await asyncio.to_thread(_new_pin, store, None)
    pin_guard_of(request).unlock_pin(pin_id)
    with ctx.db.session() as s:
        row = s.get(SpeakerPin, pin_id)
        if row is None:
            raise not_found("PIN", pin_id)
        old_hint = row.pin_hint
        row.pin_hash, row.pin_hint = pin_hash, hint_of(pin)
        record(s, request, user, "pin.rotate", f"pin:{pin_id}", {"old_hint": old_hint, "pin_hint": row.pin_hint})
        s.flush()
        out = pin_out(row, utcnow())
    view = await guard_view(request, ctx)
    return PinCreatedOut(**(out.model_dump() | view.fields(pin_id, utcnow())), pin=pin)
