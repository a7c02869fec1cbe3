"""What the hub shows beyond its users, each an operator's choice with a closed default.

- `/openapi.json`: the API's map, for logged-in users (any role); public only with `serve --public-api-docs`.
  There is no `/docs` page: FastAPI's Swagger UI loads its script from a CDN and runs inline script, which the
  console's Content-Security-Policy forbids (and a hub may have no internet). Point any OpenAPI viewer at
  `/openapi.json` with a bearer token instead.
- `/metrics`: fleet numbers (site names, states, who is on air) for a logged-in user, for a scraper holding the
  configured scrape token (`serve --metrics-token-file`, sent as `Authorization: Bearer`), or for anyone with
  `serve --public-metrics`.
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import JSONResponse

from citycast.hub.api.deps import Ctx, token_of, user_of_token
from citycast.hub.context import HubContext

router = APIRouter()

_NOT_LOGGED_IN = HTTPException(
    status.HTTP_401_UNAUTHORIZED, "not logged in (or the session expired)", {"WWW-Authenticate": "Bearer"}
)


def _logged_in(request: Request, ctx: HubContext) -> bool:
    return user_of_token(ctx, token_of(request)) is not None


def require_metrics_reader(request: Request, ctx: Ctx) -> None:
    """A dependency of `/metrics`: 401 unless the scrape is allowed (see the module's docstring)."""
    if ctx.public_metrics:
        return
    token = token_of(request)
    scrape = ctx.metrics_token
    if scrape and token is not None and hmac.compare_digest(token.encode(), scrape.encode()):
        return
    if not _logged_in(request, ctx):
        raise _NOT_LOGGED_IN


@router.get("/openapi.json", include_in_schema=False)
async def openapi(request: Request, ctx: Ctx) -> JSONResponse:
    if not ctx.public_api_docs and not _logged_in(request, ctx):
        raise _NOT_LOGGED_IN
    return JSONResponse(request.app.openapi())
