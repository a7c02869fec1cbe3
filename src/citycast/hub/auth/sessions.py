"""Login sessions. The client holds a random token; the database holds only its SHA-256, so a leaked database
(or backup) logs nobody in. The token has 256 bits of entropy, so a plain fast hash is enough: nothing to
brute-force, unlike a password."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import secrets

from sqlalchemy import delete, select
from sqlalchemy.orm import Session as DbSession

from citycast.hub.auth.hashing import HashPool, default_pool
from citycast.hub.auth.passwords import hash_password, needs_rehash, verify_dummy, verify_password
from citycast.hub.db.engine import Database
from citycast.hub.db.models import AuditEntry, User, utcnow
from citycast.hub.db.models import Session as LoginSession

TOKEN_BYTES = 32
# A token is base64url of TOKEN_BYTES: anything much longer is not one of ours and is not worth hashing.
MAX_TOKEN_CHARS = 256


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def create_session(s: DbSession, user: User, ttl: dt.timedelta, *, now: dt.datetime | None = None) -> str:
    """Store a new session for `user` and return its token (shown to the client once, never stored)."""
    if user.disabled:
        raise ValueError(f"user {user.username!r} is disabled")
    if ttl <= dt.timedelta(0):
        raise ValueError(f"session lifetime must be positive, got {ttl}")
    now = now or utcnow()
    token = new_token()
    s.add(LoginSession(token_hash=token_hash(token), user=user, created_at=now, expires_at=now + ttl))
    s.flush()
    return token


def user_for_token(s: DbSession, token: str | None, *, now: dt.datetime | None = None) -> User | None:
    """The user a token logs in, or None if the token is unknown, expired, or its user is disabled."""
    if not token or len(token) > MAX_TOKEN_CHARS:
        return None
    now = now or utcnow()
    row = s.scalars(select(LoginSession).where(LoginSession.token_hash == token_hash(token))).first()
    if row is None or row.expires_at <= now or row.user.disabled:
        return None
    return row.user


def delete_session(s: DbSession, token: str) -> bool:
    """Log out: forget the session. True if there was one."""
    row = s.scalars(select(LoginSession).where(LoginSession.token_hash == token_hash(token))).first()
    if row is None:
        return False
    s.delete(row)
    s.flush()
    return True


def delete_user_sessions(s: DbSession, user: User) -> int:
    """Log a user out everywhere (after a password change, a demotion or disabling). Returns how many."""
    rows = list(s.scalars(select(LoginSession).where(LoginSession.user_id == user.id)))
    for row in rows:
        s.delete(row)
    s.flush()
    return len(rows)


def purge_expired(s: DbSession, *, now: dt.datetime | None = None) -> int:
    """Delete sessions past their expiry. Returns how many."""
    result = s.execute(delete(LoginSession).where(LoginSession.expires_at <= (now or utcnow())))
    return int(getattr(result, "rowcount", 0) or 0)


def authenticate(s: DbSession, username: str, password: str) -> User | None:
    """The user if `username` and `password` match an enabled account, else None. Takes as long for an unknown
    username as for a wrong password, and upgrades the stored hash when the hashing parameters have grown."""
    user = s.scalars(select(User).where(User.username == username)).first()
    if user is None:
        verify_dummy(password)
        return None
    if not verify_password(user.password_hash, password) or user.disabled:
        return None
    if needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    return user


async def check_password(db: Database, username: str, password: str, pool: HashPool | None = None) -> int | None:
    """`authenticate` for an event loop: the user's id if `username` and `password` match an enabled account,
    else None. The lookup runs in a thread and the Argon2 check in the bounded hash pool, so no loop waits on
    either; raises `HashPoolBusy` when too many checks are already waiting. An outdated hash is upgraded (in the
    pool too). An unknown name costs one check like a known one."""
    pool = pool or default_pool()

    def lookup() -> tuple[int, str, bool] | None:
        with db.session() as s:
            row = s.execute(select(User.id, User.password_hash, User.disabled).where(User.username == username)).first()
            return None if row is None else (int(row[0]), str(row[1]), bool(row[2]))

    found = await asyncio.to_thread(lookup)
    if found is None:
        await pool.run(verify_dummy, password)
        return None
    user_id, stored, disabled = found
    if not await pool.run(verify_password, stored, password) or disabled:
        return None
    if needs_rehash(stored):
        new_hash = await pool.run(hash_password, password)

        def upgrade() -> None:
            with db.session() as s:
                user = s.get(User, user_id)
                if user is not None and user.password_hash == stored:
                    user.password_hash = new_hash

        await asyncio.to_thread(upgrade)
    return user_id


def logged_in_from(s: DbSession, username: str, remote: str, since: dt.datetime) -> bool:
    """True if `username` logged in from `remote` since `since` (the audit log's successful logins)."""
    if not remote:
        return False
    q = select(AuditEntry.id).where(
        AuditEntry.action == "login",
        AuditEntry.target == f"user:{username}"[:200],
        AuditEntry.remote == remote[:64],
        AuditEntry.at >= since,
    )
    return s.scalars(q.limit(1)).first() is not None
