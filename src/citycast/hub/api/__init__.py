"""The hub's HTTP API: `create_app(ctx)` builds a fresh FastAPI app around one `HubContext`.

Routes live in one module per resource; `docs/hub-internals.md` lists them with their roles. Every error is
`{"detail": "a sentence"}`; a body that fails validation also carries the field-level `errors`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import Scope

from citycast.hub.api import (
    addresses,
    alerts,
    auth,
    cap,
    enrol,
    exposure,
    fleet,
    golive,
    icecast,
    locale,
    pins,
    receipts,
    recordings,
    schedules,
    settings,
    sites,
    telephone,
    users,
    ws,
    zones,
)
from citycast.hub.api.deps import AccountGate, FailureLimiter
from citycast.hub.api.headers import SecurityHeaders
from citycast.hub.api.limits import BodyLimit
from citycast.hub.api.schemas import ErrorOut, ValidationErrorOut
from citycast.hub.context import HubContext
from citycast.hub.i18n import validation_message

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent.parent / "console" / "static"
LOGIN_FAILURES_PER_MINUTE = 10
ENROL_FAILURES_PER_MINUTE = 10


class ConsoleFiles(StaticFiles):
    """The console's files. Its scripts are ES modules, which a browser runs only when served as JavaScript (the
    hub also sends nosniff); StaticFiles takes the type from the platform's MIME table, which may say text/plain
    or nothing for `.js` (the Windows registry, an old /etc/mime.types), so `.js` is named here."""

    def file_response(
        self, full_path: str | os.PathLike[str], stat_result: os.stat_result, scope: Scope, status_code: int = 200
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        if os.fspath(full_path).endswith(".js") and "content-type" in response.headers:
            response.headers["content-type"] = "text/javascript; charset=utf-8"
        return response


def _where(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) if parts else "body"


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """One readable sentence in `detail` (what the console shows), the structured list in `errors`."""
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    language = await locale.request_language(request)
    messages = [validation_message(e, _where(e.get("loc", ())), language) for e in errors[:5]]
    detail = "; ".join(messages) or "invalid request"
    for e in errors:
        e.pop("input", None)  # do not echo what was sent (it may be a password)
        e.pop("ctx", None)
    return JSONResponse(status_code=422, content={"detail": detail, "errors": jsonable_encoder(errors)})


def create_app(ctx: HubContext, *, static_dir: Path | None = STATIC_DIR) -> FastAPI:
    app = FastAPI(
        title="citycast hub",
        version="1",
        description="Sites, zones, addresses, schedules, recordings and the live fleet of a citycast hub.",
        # /openapi.json is served by `exposure` (logged in, unless the operator made it public); no /docs page.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.ctx = ctx
    app.state.console_policy = settings.ConsolePolicy(ctx)
    app.state.login_limiter = FailureLimiter(limit=LOGIN_FAILURES_PER_MINUTE, window_s=60.0)
    app.state.account_gate = AccountGate()  # login failures per account, whatever the address
    app.state.enrol_limiter = FailureLimiter(limit=ENROL_FAILURES_PER_MINUTE, window_s=60.0)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, locale.translated_http_error)  # details in the reader's language
    app.add_middleware(BodyLimit)  # bodies over a route's limit: 413 before they are read (limits.py)

    # Every route may refuse a body it cannot parse (400) or that fails validation (422), and the body limits
    # (limits.py) answer before any route: too large (413) or not arrived in time (408).
    validation: dict[int | str, dict[str, Any]] = {
        400: {"model": ErrorOut, "description": "Unreadable request"},
        408: {"model": ErrorOut, "description": "The request body did not arrive in time"},
        413: {"model": ErrorOut, "description": "The request body is larger than this route takes"},
        422: {"model": ValidationErrorOut, "description": "Invalid request"},
    }
    for module in (
        auth,
        users,
        zones,
        sites,
        enrol,
        addresses,
        schedules,
        recordings,
        receipts,
        settings,
        alerts,
        fleet,
        pins,
        golive,
        telephone,
        cap,
        icecast,
        locale,
    ):
        app.include_router(module.router, responses=validation)
    app.include_router(ws.router)
    app.include_router(exposure.router)

    if static_dir is not None and static_dir.is_dir():
        # Last, so every API route above wins; html=True serves index.html at "/".
        app.mount("/", ConsoleFiles(directory=static_dir, html=True), name="console")
    elif static_dir is not None:
        log.warning("console files not found at %s: serving the API only", static_dir)
    # Added last, so it wraps everything else: every response carries the CSP, frame and sniffing headers.
    app.add_middleware(SecurityHeaders, policy=app.state.console_policy)
    return app
