"""Languages and the time zone: each user's console language (kept with the user), the hub's display time zone
(an admin's setting, Asia/Karachi unless set), and the API's error messages in the reader's language.

A refusal's `detail` is translated (citycast.hub.i18n) into the language of the signed-in user who made the
request, else the best of the request's Accept-Language; the console sends its user's language there too, so the
sign-in page's "wrong user name or password" is in the language chosen on it.
"""

from __future__ import annotations

import asyncio
import zoneinfo
from typing import Annotated

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.exception_handlers import http_exception_handler
from pydantic import BaseModel, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from citycast.hub.api.auth import user_out
from citycast.hub.api.deps import Admin, Ctx, Viewer, record, token_of, user_of_token
from citycast.hub.api.schemas import AUTH_ERRORS, Strict, UserOut
from citycast.hub.context import HubContext
from citycast.hub.db.models import Setting, User
from citycast.hub.i18n import DEFAULT_TIME_ZONE, LANGUAGES, Language, pick_language, supported, translate_detail

TIME_ZONE_KEY = "time_zone"

router = APIRouter(tags=["locale"], responses=AUTH_ERRORS)


class LanguageIn(Strict):
    language: Language


class LocaleOut(BaseModel):
    languages: list[str] = Field(description="The languages the console and the server messages exist in")
    time_zone: str = Field(description="The IANA time zone the console shows times in")


class LocaleIn(Strict):
    time_zone: Annotated[str, Field(min_length=1, max_length=64)]

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError) as e:  # OSError: "Asia" is a folder
            raise ValueError(f"no such time zone: {value!r} (an IANA name, e.g. Asia/Karachi)") from e
        return value


def time_zone(ctx: HubContext) -> str:
    with ctx.db.session() as s:
        row = s.get(Setting, TIME_ZONE_KEY)
        return row.value if row is not None else DEFAULT_TIME_ZONE


@router.put("/api/me/language", response_model=UserOut)
async def set_my_language(body: LanguageIn, request: Request, user: Viewer, ctx: Ctx) -> UserOut:
    """Any signed-in user chooses their own console language."""
    with ctx.db.session() as s:
        row = s.get(User, user.id)
        if row is None:  # deleted since the session was checked
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "not logged in (or the session expired)")
        row.language = body.language
        record(s, request, row, "user.language", f"user:{row.username}", {"language": body.language})
        return user_out(row)


@router.get("/api/locale", response_model=LocaleOut)
async def get_locale(_: Viewer, ctx: Ctx) -> LocaleOut:
    return LocaleOut(languages=list(LANGUAGES), time_zone=await asyncio.to_thread(time_zone, ctx))


@router.put("/api/locale", response_model=LocaleOut)
async def set_locale(body: LocaleIn, request: Request, admin: Admin, ctx: Ctx) -> LocaleOut:
    with ctx.db.session() as s:
        row = s.get(Setting, TIME_ZONE_KEY)
        if row is None:
            s.add(Setting(key=TIME_ZONE_KEY, value=body.time_zone))
        else:
            row.value = body.time_zone
        record(s, request, admin, "settings.time_zone", "settings", {"time_zone": body.time_zone})
    return LocaleOut(languages=list(LANGUAGES), time_zone=body.time_zone)


def _user_language(ctx: HubContext, token: str | None) -> str | None:
    user = user_of_token(ctx, token) if token else None
    return supported(user.language) if user is not None else None


async def request_language(request: Request) -> str:
    """The signed-in user's language, else the best supported one of Accept-Language, else English."""
    token = token_of(request)
    if token:
        language = await asyncio.to_thread(_user_language, request.app.state.ctx, token)
        if language is not None:
            return language
    return pick_language(request.headers.get("accept-language"))


async def translated_http_error(request: Request, exc: Exception) -> Response:
    """FastAPI's own answer to an HTTPException, with its sentence in the reader's language."""
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc.detail, str):
        language = await request_language(request)
        detail = translate_detail(exc.detail, language)
        if detail != exc.detail:
            exc = StarletteHTTPException(exc.status_code, detail, exc.headers)
    return await http_exception_handler(request, exc)
