"""Hub fixtures: a real database on each backend.

`db_url` runs a test on SQLite (a file in tmp_path) and on PostgreSQL (`CITYCAST_TEST_PG_URL`, which
`eval "$(scripts/pg.sh)"` sets). Each PostgreSQL test gets its own fresh schema, dropped afterwards, so tests
are independent. Without the variable the PostgreSQL half is skipped, unless `CI` is set: there a missing
database is a failure, not a silent skip.

`database` is an upgraded `Database` on both backends; `sqlite_database` is one on SQLite only, for tests
that need a database but are not about the database."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from citycast.hub.db import Database, default_sqlite_url

PG_ENV = "CITYCAST_TEST_PG_URL"


def _postgres_base_url() -> str:
    url = os.environ.get(PG_ENV)
    if url:
        return url
    if os.environ.get("CI"):
        pytest.fail(f'{PG_ENV} is not set, but CI is: run eval "$(scripts/pg.sh)" before the tests', pytrace=False)
    pytest.skip(f'PostgreSQL: {PG_ENV} not set (eval "$(scripts/pg.sh)" sets it)')


def _fresh_postgres_schema(base_url: str) -> Iterator[str]:
    schema = f"test_{uuid.uuid4().hex[:16]}"
    admin = create_engine(base_url)
    try:
        try:
            with admin.begin() as conn:
                conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        except Exception as e:
            pytest.fail(f"cannot use the PostgreSQL at {PG_ENV}: {e}", pytrace=False)
        # Every connection of the test sees only its own schema (tables, alembic_version, everything).
        url = make_url(base_url).update_query_dict({"options": f"-c search_path={schema}"})
        yield url.render_as_string(hide_password=False)
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    finally:
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if request.param == "sqlite":
        yield default_sqlite_url(tmp_path_factory.mktemp("db"))
    else:
        yield from _fresh_postgres_schema(_postgres_base_url())


def _upgraded(url: str) -> Iterator[Database]:
    db = Database(url)
    db.upgrade()
    try:
        yield db
    finally:
        db.dispose()


@pytest.fixture
def database(db_url: str) -> Iterator[Database]:
    yield from _upgraded(db_url)


@pytest.fixture
def sqlite_database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    yield from _upgraded(default_sqlite_url(tmp_path_factory.mktemp("db")))
