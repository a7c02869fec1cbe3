"""Login, logout, who am I, and the health probe."""

from __future__ import annotations

import time

from fastapi import APIRouter, HTTPException, Request, Response, status

from citycast.hub.api.deps import COOKIE_NAME, Ctx, FailureLimiter, Viewer, record, remote_of, token_of
from citycast.hub.api.schemas import ErrorOut, LoginIn, LoginOut, OkOut, UserOut
from citycast.hub.auth.sessions import authenticate, create_session, delete_session
from citycast.hub.db.models import User

router = APIRouter(tags=["auth"])


def user_out(user: User) -> UserOut:
    return UserOut(id=user.id, username=user.username, role=user.role, disabled=user.disabled)


@router.get("/api/health", response_model=OkOut)
async def health() -> OkOut:
    return OkOut()


@router.post(
    "/api/login",
    response_model=LoginOut,
    responses={401: {"model": ErrorOut}, 429: {"model": ErrorOut}},
)
async def login(body: LoginIn, request: Request, response: Response, ctx: Ctx) -> LoginOut:
    limiter: FailureLimiter = request.app.state.login_limiter
    remote = remote_of(request)
    limiter.check(remote, time.monotonic())
    with ctx.db.session() as s:
        user = authenticate(s, body.username, body.password)
        if user is None:
            limiter.failed(remote, time.monotonic())
            record(s, request, None, "login.failed", f"user:{body.username}"[:200])
        else:
            token = create_session(s, user, ctx.session_ttl)
            record(s, request, user, "login", f"user:{user.username}")
            out = LoginOut(token=token, user=user_out(user))
    if user is None:
        # The same answer for an unknown name and a wrong password: it must not tell which names exist.
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
