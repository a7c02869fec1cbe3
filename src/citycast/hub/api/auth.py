"""Login, logout, who am I, and the health probe."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

from fastapi import APIRouter, HTTPException, Request, Response, status

from citycast.hub.api.deps import (
    COOKIE_NAME,
    AccountGate,
    Ctx,
    FailureLimiter,
    Viewer,
    record,
    remote_of,
    token_of,
    too_many,
)
from citycast.hub.api.schemas import ErrorOut, LoginIn, LoginOut, OkOut, UserOut
from citycast.hub.auth.hashing import HashPoolBusy
from citycast.hub.auth.sessions import check_password, create_session, delete_session, logged_in_from
from citycast.hub.context import HubContext
from citycast.hub.db.models import User, utcnow

router = APIRouter(tags=["auth"])


def user_out(user: User) -> UserOut:
    return UserOut(
        id=user.id, username=user.username, role=user.role, disabled=user.disabled, language=user.language or "en"
    )


@router.get("/api/health", response_model=OkOut)
async def health() -> OkOut:
    return OkOut()


@router.post(
    "/api/login",
    response_model=LoginOut,
    responses={401: {"model": ErrorOut}, 429: {"model": ErrorOut}, 503: {"model": ErrorOut}},
)
async def login(body: LoginIn, request: Request, response: Response, ctx: Ctx) -> LoginOut:
    """Nothing here runs on the event loop but bookkeeping: the database in threads, Argon2 in the hash pool.

    Limits: per address (`login_limiter`) and per account (`account_gate`, see `AccountGate`). An attempt counts
    as a failure before it is checked and is forgiven if right, so parallel guesses cannot all pass the limit."""
    limiter: FailureLimiter = request.app.state.login_limiter
    accounts: AccountGate = request.app.state.account_gate
    remote = remote_of(request)
    account = body.username
    now = time.monotonic()
    limiter.check(remote, now)
    if accounts.slowed(account, now):
        since = utcnow() - KNOWN_ADDRESS_DAYS
        known = await asyncio.to_thread(_logged_in_from, ctx, account, remote, since)
        if not known:
            wait = accounts.take_slot(account, time.monotonic())
            if wait > 0:
                raise too_many(f"too many failed logins to {account!r} lately", wait)
    limiter.failed(remote, now)
    accounts.failed(account, now)
    try:
        user_id = await check_password(ctx.db, body.username, body.password)
    except HashPoolBusy:
        limiter.forgive(remote)
        accounts.forgive(account)
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "the hub is busy checking logins: try again in a second",
            {"Retry-After": "1"},
        ) from None
    if user_id is None:
        await asyncio.to_thread(_record_failure, ctx, request, body.username)
        # The same answer for an unknown name and a wrong password: it must not tell which names exist.
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "wrong username or password")
    limiter.forgive(remote)
    accounts.forgive(account)
    out = await asyncio.to_thread(_open_session, ctx, request, user_id)
    if out is None:  # disabled or deleted between the check and now
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "wrong username or password")
    response.set_cookie(
        COOKIE_NAME,
        out.token,
        max_age=int(ctx.session_ttl.total_seconds()),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return out


# An address the account logged in from within this long passes a slowed account's queue.
KNOWN_ADDRESS_DAYS = dt.timedelta(days=30)


def _logged_in_from(ctx: HubContext, username: str, remote: str, since: dt.datetime) -> bool:
    with ctx.db.session() as s:
        return logged_in_from(s, username, remote, since)


def _record_failure(ctx: HubContext, request: Request, username: str) -> None:
    with ctx.db.session() as s:
        record(s, request, None, "login.failed", f"user:{username}"[:200])


def _open_session(ctx: HubContext, request: Request, user_id: int) -> LoginOut | None:
    with ctx.db.session() as s:
        user = s.get(User, user_id)
        if user is None or user.disabled:
            return None
        token = create_session(s, user, ctx.session_ttl)
        record(s, request, user, "login", f"user:{user.username}")
        return LoginOut(token=token, user=user_out(user))


@router.post("/api/logout", response_model=OkOut, responses={401: {"model": ErrorOut}})
async def logout(request: Request, response: Response, user: Viewer, ctx: Ctx) -> OkOut:
    token = token_of(request)
    with ctx.db.session() as s:
        if token is not None:
            delete_session(s, token)
        record(s, request, user, "logout", f"user:{user.username}")
    response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="strict")
    return OkOut()


@router.get("/api/me", response_model=UserOut, responses={401: {"model": ErrorOut}})
async def me(user: Viewer) -> UserOut:
    return user_out(user)
