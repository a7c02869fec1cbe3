"""What every route needs: the hub context, the logged-in user and their role, the client's address, the audit
log, and a limit on failed attempts per address.

Database sessions are short and opened inside each handler (`with ctx.db.session() as s:`), never held across
an `await`: the address manager and the monitor write through their own sessions on the same thread, and a
SQLite write lock held across an await would stall them.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Path, Request, WebSocket, status
from sqlalchemy.orm import Session as DbSession

from citycast.hub.audit import audit
from citycast.hub.auth.roles import allows
from citycast.hub.auth.sessions import user_for_token
from citycast.hub.context import HubContext
from citycast.hub.db.models import Role, User

COOKIE_NAME = "citycast_session"
MAX_ID = 2**31 - 1

# A row id in a path: a positive 32-bit integer (anything else is a 422, never a database error).
PathId = Annotated[int, Path(ge=1, le=MAX_ID)]


def get_ctx(request: Request) -> HubContext:
    ctx: HubContext = request.app.state.ctx
    return ctx


Ctx = Annotated[HubContext, Depends(get_ctx)]


def remote_of(request: Request | WebSocket) -> str:
    """The peer's address as the socket sees it. Forwarded headers are not trusted: anyone can set them, and the
    login limit would be worthless."""
    return request.client.host if request.client is not None else ""


def token_of(request: Request | WebSocket) -> str | None:
    """The session token from `Authorization: Bearer`, else the session cookie."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.cookies.get(COOKIE_NAME) or None


def user_of_token(ctx: HubContext, token: str | None) -> User | None:
    with ctx.db.session() as s:
        return user_for_token(s, token)


async def current_user(request: Request, ctx: Ctx) -> User:
    user = user_of_token(ctx, token_of(request))
    if user is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "not logged in (or the session expired)", {"WWW-Authenticate": "Bearer"}
        )
    return user


def require(role: Role) -> Callable[[User], Awaitable[User]]:
    """A dependency that lets in users with at least `role` and refuses the rest with 403."""

    async def check(user: Annotated[User, Depends(current_user)]) -> User:
        if not allows(user.role, role):
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"this needs the {role.value} role (you are {user.role})")
        return user

    return check


Viewer = Annotated[User, Depends(require(Role.viewer))]
Speaker = Annotated[User, Depends(require(Role.speaker))]
Operator = Annotated[User, Depends(require(Role.operator))]
Admin = Annotated[User, Depends(require(Role.admin))]


def record(
    s: DbSession,
    request: Request,
    user: User | None,
    action: str,
    target: str = "",
    detail: dict[str, Any] | None = None,
) -> None:
    """Write one audit row in the caller's transaction, so the change and its record commit together."""
    audit(s, user, action, target, detail, remote_of(request))


def utc(t: dt.datetime | None) -> dt.datetime | None:
    """SQLite gives naive datetimes back even for timezone-aware columns: they are UTC."""
    if t is None:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.UTC)


def not_found(what: str, ident: object) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"{what} {ident} does not exist")


class FailureLimiter:
    """At most `limit` failures per `window_s` from one remote address (sans-IO: time is passed in).

    While an address is over the limit every attempt from it is refused, a right password too, so guessing
    costs the same whether or not the guess was right. Memory is bounded: the least recently failing
    addresses are forgotten past `max_remotes`.
    """

    def __init__(self, limit: int = 10, window_s: float = 60.0, max_remotes: int = 10_000) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_remotes = max_remotes
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, remote: str, now: float) -> deque[float] | None:
        times = self._failures.get(remote)
        if times is None:
            return None
        while times and now - times[0] >= self.window_s:
            times.popleft()
        if not times:
            del self._failures[remote]
            return None
        return times

    def retry_after(self, remote: str, now: float) -> float:
        """0 if `remote` may try now, else the seconds until it may."""
        times = self._recent(remote, now)
        if times is None or len(times) < self.limit:
            return 0.0
        return max(0.0, times[-self.limit] + self.window_s - now)

    def failed(self, remote: str, now: float) -> None:
        times = self._recent(remote, now)
        if times is None:
            # Room past the limit, so forgiving one attempt counted ahead never forgets an older real failure.
            times = self._failures[remote] = deque(maxlen=4 * self.limit)
        times.append(now)
        self._failures.move_to_end(remote)
        while len(self._failures) > self.max_remotes:
            self._failures.popitem(last=False)

    def forgive(self, remote: str) -> None:
        """Take back the latest failure of `remote`: an attempt is counted as failed before it is checked (so
        parallel guesses cannot all slip under the limit) and forgiven when it turns out right."""
        times = self._failures.get(remote)
        if times:
            times.pop()
            if not times:
                del self._failures[remote]

    def check(self, remote: str, now: float) -> None:
        """Raise 429 with Retry-After if `remote` has failed too often lately."""
        wait = self.retry_after(remote, now)
        if wait > 0:
            raise HTTPException(
                status.HTTP_429_TOO_MANY_REQUESTS,
                f"too many failed attempts from {remote or 'this address'}: try again in {math.ceil(wait)} s",
                {"Retry-After": str(math.ceil(wait))},
            )


class AccountGate:
    """A limit per account, whatever the address (sans-IO: time passed in).

    Past `limit` failures in `window_s` an account is *slowed*, not locked: from then on, attempts on it from
    addresses that never logged in to it are let through one at a time, at most one per `slow_s` across all such
    addresses, so a stranger with a thousand addresses gets one guess per `slow_s` instead of ten per minute from
    each. Its owner is not locked out by them: from an address the account has logged in from before (the audit
    log says so; the caller checks) an attempt is always let through, and from a new address the owner waits at
    most about `slow_s` for the next slot. Memory is bounded (`max_accounts`, least recently failing forgotten).
    """

    def __init__(self, limit: int = 20, window_s: float = 600.0, slow_s: float = 30.0, max_accounts: int = 10_000):
        self.failures = FailureLimiter(limit=limit, window_s=window_s, max_remotes=max_accounts)
        self.slow_s = slow_s
        self._next_slot: OrderedDict[str, float] = OrderedDict()
        self.max_accounts = max_accounts

    def slowed(self, account: str, now: float) -> bool:
        return self.failures.retry_after(account, now) > 0

    def take_slot(self, account: str, now: float) -> float:
        """0 if an attempt on a slowed account may go ahead now (and takes the slot), else the seconds to wait."""
        due = self._next_slot.get(account, 0.0)
        if now < due:
            return due - now
        self._next_slot[account] = now + self.slow_s
        self._next_slot.move_to_end(account)
        while len(self._next_slot) > self.max_accounts:
            self._next_slot.popitem(last=False)
        return 0.0

    def failed(self, account: str, now: float) -> None:
        self.failures.failed(account, now)

    def forgive(self, account: str) -> None:
        self.failures.forgive(account)


def too_many(message: str, wait_s: float) -> HTTPException:
    wait = max(1, math.ceil(wait_s))
    return HTTPException(
        status.HTTP_429_TOO_MANY_REQUESTS, f"{message}: try again in {wait} s", {"Retry-After": str(wait)}
    )
