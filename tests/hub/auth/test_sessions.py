"""Login sessions and accounts against a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest
from argon2 import PasswordHasher
from sqlalchemy import func, select

from citycast.hub.auth import (
    authenticate,
    create_session,
    delete_session,
    delete_user_sessions,
    ensure_admin,
    hash_password,
    new_token,
    purge_expired,
    token_hash,
    user_for_token,
    verify_password,
)
from citycast.hub.db import Database
from citycast.hub.db.models import Role, Session, User

HOUR = dt.timedelta(hours=1)
NOW = dt.datetime(2024, 6, 1, 12, 0, tzinfo=dt.UTC)


def _user(db: Database, name: str = "bilal", role: Role = Role.speaker, password: str = "pw-1234") -> int:
    with db.session() as s:
        user = User(username=name, password_hash=hash_password(password), role=role)
        s.add(user)
        s.flush()
        return user.id


def _login(db: Database, user_id: int, ttl: dt.timedelta = HOUR, now: dt.datetime = NOW) -> str:
    with db.session() as s:
        return create_session(s, s.get_one(User, user_id), ttl, now=now)


def test_tokens_are_random_and_only_their_hash_is_stored(database: Database) -> None:
    assert len({new_token() for _ in range(100)}) == 100
    uid = _user(database)
    token = _login(database, uid)
    assert len(token) >= 43  # 32 random bytes in base64url
    assert token_hash(token) == hashlib.sha256(token.encode()).hexdigest()
    with database.session() as s:
        stored = s.scalars(select(Session)).one()
        assert stored.token_hash == token_hash(token) and token not in stored.token_hash
        assert stored.expires_at == NOW + HOUR


def test_valid_token_gives_its_user(database: Database) -> None:
    uid = _user(database)
    other = _user(database, "chand")
    token, other_token = _login(database, uid), _login(database, other)
    with database.session() as s:
        user = user_for_token(s, token, now=NOW + dt.timedelta(minutes=59))
        assert user is not None and (user.id, user.username, user.role) == (uid, "bilal", Role.speaker)
        other_user = user_for_token(s, other_token, now=NOW)
        assert other_user is not None and other_user.id == other


def test_token_with_real_clock(database: Database) -> None:
    uid = _user(database)
    with database.session() as s:
        token = create_session(s, s.get_one(User, uid), HOUR)
    with database.session() as s:
        user = user_for_token(s, token)
        assert user is not None and user.id == uid


def test_expired_token_gives_nobody(database: Database) -> None:
    token = _login(database, _user(database))
    with database.session() as s:
        assert user_for_token(s, token, now=NOW + HOUR) is None
        assert user_for_token(s, token, now=NOW + 2 * HOUR) is None


def test_disabled_user_is_logged_out(database: Database) -> None:
    uid = _user(database)
    token = _login(database, uid)
    with database.session() as s:
        s.get_one(User, uid).disabled = True
    with database.session() as s:
        assert user_for_token(s, token, now=NOW) is None
        with pytest.raises(ValueError, match="disabled"):
            create_session(s, s.get_one(User, uid), HOUR)


def test_unknown_and_malformed_tokens_give_nobody(database: Database) -> None:
    _login(database, _user(database))
    with database.session() as s:
        for bad in [new_token(), "", None, "x" * 10_000, "\udcff\x00'; DROP TABLE users; --"]:
            assert user_for_token(s, bad, now=NOW) is None


def test_logout(database: Database) -> None:
    uid = _user(database)
    token, kept = _login(database, uid), _login(database, uid)
    with database.session() as s:
        assert delete_session(s, token)
        assert not delete_session(s, token)
    with database.session() as s:
        assert user_for_token(s, token, now=NOW) is None
        assert user_for_token(s, kept, now=NOW) is not None
        assert delete_user_sessions(s, s.get_one(User, uid)) == 1
    with database.session() as s:
        assert user_for_token(s, kept, now=NOW) is None


def test_purge_expired(database: Database) -> None:
    uid = _user(database)
    _login(database, uid, ttl=HOUR)
    live = _login(database, uid, ttl=3 * HOUR)
    with database.session() as s:
        assert purge_expired(s, now=NOW + 2 * HOUR) == 1
    with database.session() as s:
        assert s.scalar(select(func.count()).select_from(Session)) == 1
        assert user_for_token(s, live, now=NOW + 2 * HOUR) is not None


def test_bad_ttl_is_refused(database: Database) -> None:
    uid = _user(database)
    with database.session() as s, pytest.raises(ValueError, match="positive"):
        create_session(s, s.get_one(User, uid), dt.timedelta(0))


def test_authenticate(database: Database) -> None:
    uid = _user(database, password="right-pw")
    with database.session() as s:
        user = authenticate(s, "bilal", "right-pw")
        assert user is not None and user.id == uid
        assert authenticate(s, "bilal", "wrong-pw") is None
        assert authenticate(s, "nobody", "right-pw") is None
        assert authenticate(s, "bilal", "") is None
        s.get_one(User, uid).disabled = True
        assert authenticate(s, "bilal", "right-pw") is None


def test_login_upgrades_a_weak_hash(database: Database) -> None:
    weak = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1).hash("old-pw")
    with database.session() as s:
        s.add(User(username="old", password_hash=weak, role=Role.viewer))
    with database.session() as s:
        assert authenticate(s, "old", "old-pw") is not None
    with database.session() as s:
        stored = s.scalars(select(User.password_hash).where(User.username == "old")).one()
        assert stored != weak and verify_password(stored, "old-pw")


def test_ensure_admin_creates_one_admin_once(database: Database) -> None:
    with database.session() as s:
        password = ensure_admin(s)
    assert password is not None and len(password) >= 12
    with database.session() as s:
        admin = authenticate(s, "admin", password)
        assert admin is not None and admin.role is Role.admin
        assert ensure_admin(s) is None
        assert s.scalar(select(func.count()).select_from(User)) == 1


def test_ensure_admin_keeps_an_existing_admin(database: Database) -> None:
    _user(database, "root-user", Role.admin)
    _user(database, "admin", Role.viewer)  # a viewer who happens to be called admin stays a viewer
    with database.session() as s:
        assert ensure_admin(s) is None
        assert s.scalars(select(User.role).where(User.username == "admin")).one() is Role.viewer


def test_ensure_admin_restores_a_locked_out_hub(database: Database) -> None:
    uid = _user(database, "admin", Role.admin, password="forgotten")
    old_token = _login(database, uid)
    with database.session() as s:
        s.get_one(User, uid).disabled = True
    with database.session() as s:
        password = ensure_admin(s)
    assert password is not None
    with database.session() as s:
        assert authenticate(s, "admin", "forgotten") is None
        admin = authenticate(s, "admin", password)
        assert admin is not None and admin.id == uid and admin.role is Role.admin and not admin.disabled
        assert user_for_token(s, old_token, now=NOW) is None  # old sessions are gone
