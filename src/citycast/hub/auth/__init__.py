"""Users, passwords, login sessions and roles."""

from __future__ import annotations

import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session as DbSession

from citycast.hub.auth.passwords import hash_password, needs_rehash, verify_password
from citycast.hub.auth.roles import allows
from citycast.hub.auth.sessions import (
    authenticate,
    create_session,
    delete_session,
    delete_user_sessions,
    new_token,
    purge_expired,
    token_hash,
    user_for_token,
)
from citycast.hub.db.models import Role, User

ADMIN_USERNAME = "admin"

__all__ = [
    "ADMIN_USERNAME",
    "allows",
    "authenticate",
    "create_session",
    "delete_session",
    "delete_user_sessions",
    "ensure_admin",
    "hash_password",
    "needs_rehash",
    "new_token",
    "purge_expired",
    "token_hash",
    "user_for_token",
    "verify_password",
]


def ensure_admin(s: DbSession) -> str | None:
    """Make sure someone can log in to administer the hub. If there is no enabled admin, create the user
    `admin` (or, if that name exists, make it an enabled admin again) with a new random password, log out its
    old sessions, and return the password so the hub can print it once. Otherwise return None."""
    enabled_admin = s.scalars(select(User.id).where(User.role == Role.admin, User.disabled.is_(False))).first()
    if enabled_admin is not None:
        return None
    password = secrets.token_urlsafe(12)
    user = s.scalars(select(User).where(User.username == ADMIN_USERNAME)).first()
    if user is None:
        user = User(username=ADMIN_USERNAME, password_hash=hash_password(password), role=Role.admin)
        s.add(user)
    else:
        user.password_hash = hash_password(password)
        user.role = Role.admin
        user.disabled = False
        s.flush()
        delete_user_sessions(s, user)
    s.flush()
    return password
