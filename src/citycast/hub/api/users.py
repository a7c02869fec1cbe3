"""User accounts (admin only) and the audit log."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, status
from sqlalchemy import func, select
from sqlalchemy.orm import Session as DbSession

from citycast.hub.api.auth import user_out
from citycast.hub.api.deps import Admin, Ctx, PathId, not_found, record, utc
from citycast.hub.api.schemas import AUTH_ERRORS, AuditOut, ErrorOut, OkOut, UserIn, UserOut, UserPatch
from citycast.hub.auth.hashing import HashPoolBusy
from citycast.hub.auth.passwords import hash_password_off_loop
from citycast.hub.auth.sessions import delete_user_sessions
from citycast.hub.db.models import AuditEntry, Role, User

router = APIRouter(tags=["users"], responses=AUTH_ERRORS)


def _other_active_admins(s: DbSession, user: User) -> int:
    return int(
        s.scalar(
            select(func.count())
            .select_from(User)
            .where(User.role == Role.admin, User.disabled.is_(False), User.id != user.id)
        )
        or 0
    )


async def _hash(password: str) -> str:
    """Argon2 off the event loop, in the bounded pool every secret check shares."""
    try:
        return await hash_password_off_loop(password)
    except HashPoolBusy:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, "the hub is busy checking passwords: try again", {"Retry-After": "2"}
        ) from None


@router.get("/api/users", response_model=list[UserOut])
async def list_users(_: Admin, ctx: Ctx) -> list[UserOut]:
    with ctx.db.session() as s:
        return [user_out(u) for u in s.scalars(select(User).order_by(User.id))]


@router.post("/api/users", response_model=UserOut, status_code=201, responses={409: {"model": ErrorOut}})
async def create_user(body: UserIn, request: Request, admin: Admin, ctx: Ctx) -> UserOut:
    password_hash = await _hash(body.password)
    with ctx.db.session() as s:
        if s.scalar(select(User.id).where(User.username == body.username)) is not None:
            raise HTTPException(status.HTTP_409_CONFLICT, f"user {body.username!r} already exists")
        user = User(username=body.username, password_hash=password_hash, role=body.role)
        s.add(user)
        s.flush()
        record(s, request, admin, "user.create", f"user:{user.username}", {"role": user.role.value})
        return user_out(user)


@router.patch(
    "/api/users/{user_id}", response_model=UserOut, responses={404: {"model": ErrorOut}, 409: {"model": ErrorOut}}
)
async def update_user(user_id: PathId, body: UserPatch, request: Request, admin: Admin, ctx: Ctx) -> UserOut:
    password_hash = await _hash(body.password) if body.password is not None else None
    with ctx.db.session() as s:
        user = s.get(User, user_id)
        if user is None:
            raise not_found("user", user_id)
        loses_admin = (body.role is not None and body.role != Role.admin) or body.disabled is True
        if user.role == Role.admin and not user.disabled and loses_admin and _other_active_admins(s, user) == 0:
            raise HTTPException(status.HTTP_409_CONFLICT, "this is the last active admin: keep at least one")
        changed: dict[str, object] = {}
        if body.role is not None and body.role != user.role:
            user.role = body.role
            changed["role"] = body.role.value
        if body.disabled is not None and body.disabled != user.disabled:
            user.disabled = body.disabled
            changed["disabled"] = body.disabled
        if password_hash is not None:
            user.password_hash = password_hash
            changed["password"] = "changed"
        if changed:
            # A new password, a demotion or disabling takes effect now, not when old sessions expire.
            delete_user_sessions(s, user)
        record(s, request, admin, "user.update", f"user:{user.username}", changed)
        return user_out(user)


@router.delete(
    "/api/users/{user_id}", response_model=OkOut, responses={404: {"model": ErrorOut}, 409: {"model": ErrorOut}}
)
async def delete_user(user_id: PathId, request: Request, admin: Admin, ctx: Ctx) -> OkOut:
    with ctx.db.session() as s:
        user = s.get(User, user_id)
        if user is None:
            raise not_found("user", user_id)
        if user.id == admin.id:
            raise HTTPException(status.HTTP_409_CONFLICT, "you cannot delete your own account")
        if user.role == Role.admin and not user.disabled and _other_active_admins(s, user) == 0:
            raise HTTPException(status.HTTP_409_CONFLICT, "this is the last active admin: keep at least one")
        delete_user_sessions(s, user)
        s.delete(user)
        record(s, request, admin, "user.delete", f"user:{user.username}")
    return OkOut()


@router.get("/api/audit", response_model=list[AuditOut], tags=["audit"])
async def list_audit(_: Admin, ctx: Ctx, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[AuditOut]:
    with ctx.db.session() as s:
        rows = s.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit))
        return [
            AuditOut(
                id=r.id,
                at=utc(r.at) or r.at,
                user_id=r.user_id,
                username=r.username,
                action=r.action,
                target=r.target,
                detail=r.detail or {},
                remote=r.remote,
            )
            for r in rows
        ]
