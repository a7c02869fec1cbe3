"""Migrations bring an empty database to head, and head is exactly what the models describe."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, Integer, MetaData, func, inspect, select, text

from citycast.hub.db import Database, DatabaseError, default_sqlite_url
from citycast.hub.db.models import Base, Setting, Zone


def _diff(db: Database, metadata: MetaData) -> list[Any]:
    with db.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
        return list(compare_metadata(ctx, metadata))


def test_upgrade_empty_database_to_head(db_url: str) -> None:
    db = Database(db_url)
    try:
        assert db.current_revision() is None
        assert inspect(db.engine).get_table_names() == []
        db.upgrade()
        assert db.current_revision() == db.head_revision() == "0009"
        tables = set(inspect(db.engine).get_table_names())
        assert tables == set(Base.metadata.tables) | {"alembic_version"}
        db.upgrade()  # at every hub start: a no-op at head
        assert db.current_revision() == "0009"
    finally:
        db.dispose()


def test_zones_made_before_0003_read_as_full_volume_unmuted(db_url: str) -> None:
    db = Database(db_url)
    try:
        db.upgrade("0002")
        with db.engine.begin() as conn:
            conn.execute(text("INSERT INTO zones (name, channel, color, created_at) VALUES ('old', 3, '#fff', :t)"),
                         {"t": "2026-01-01 00:00:00+00:00"})  # fmt: skip
        db.upgrade()
        with db.engine.connect() as conn:
            row = conn.execute(text("SELECT volume, muted FROM zones WHERE name = 'old'")).one()
        assert (row.volume, bool(row.muted)) == (1.0, False)
    finally:
        db.dispose()


def test_zones_made_before_0004_list_no_city_server_and_new_ones_get_theirs_from_the_model(db_url: str) -> None:
    db = Database(db_url)
    try:
        db.upgrade("0003")
        with db.engine.begin() as conn:
            conn.execute(text("INSERT INTO zones (name, channel, color, created_at) VALUES ('old', 3, '#fff', :t)"),
                         {"t": "2026-01-01 00:00:00+00:00"})  # fmt: skip
        db.upgrade()
        with db.session() as s:
            old = s.scalars(select(Zone).where(Zone.name == "old")).one()
            assert old.city_servers == []
            s.add(Zone(name="new", channel=4))
        with db.session() as s:
            assert s.scalars(select(Zone).where(Zone.name == "new")).one().city_servers == []
    finally:
        db.dispose()


def test_migrated_schema_matches_models(database: Database) -> None:
    assert _diff(database, Base.metadata) == []


def test_schema_comparison_sees_a_difference(database: Database) -> None:
    # Proves the comparison above can fail: a column the migrations do not create is reported.
    changed = MetaData(naming_convention=Base.metadata.naming_convention)
    for table in Base.metadata.sorted_tables:
        table.to_metadata(changed)
    changed.tables["users"].append_column(Column("shoe_size", Integer, nullable=True))
    diff = _diff(database, changed)
    assert [(d[0], d[3].name) for d in diff if isinstance(d, tuple)] == [("add_column", "shoe_size")]


def test_session_commits_on_success_and_rolls_back_on_error(database: Database) -> None:
    with database.session() as s:
        s.add(Setting(key="kept", value="1"))
    with pytest.raises(RuntimeError, match="boom"), database.session() as s:
        s.add(Setting(key="lost", value="1"))
        s.flush()
        raise RuntimeError("boom")
    with database.session() as s:
        assert set(s.scalars(select(Setting.key))) == {"kept"}


def test_session_may_commit_part_way(database: Database) -> None:
    with pytest.raises(RuntimeError), database.session() as s:
        s.add(Setting(key="durable", value="1"))
        s.commit()
        s.add(Setting(key="lost", value="1"))
        s.flush()
        raise RuntimeError("after the commit")
    with database.session() as s:
        s.add(Setting(key="second", value="1"))
        s.commit()
        s.get_one(Setting, "second").value = "2"
    with database.session() as s:
        assert {x.key: x.value for x in s.scalars(select(Setting))} == {"durable": "1", "second": "2"}


def test_invalid_url_is_a_clear_error() -> None:
    with pytest.raises(DatabaseError, match="invalid database URL"):
        Database("not a url")
    with pytest.raises(DatabaseError, match="unsupported database 'mysql'"):
        Database("mysql://u:secret@localhost/hub")


def test_unreachable_postgres_is_a_clear_error_without_the_password() -> None:
    # Port 1 on loopback: nothing listens there, the connection is refused at once.
    db = Database("postgresql+psycopg://hub:s3cret@127.0.0.1:1/hub?connect_timeout=3")
    with pytest.raises(DatabaseError, match=r"cannot connect to .*127\.0\.0\.1:1/hub") as info:
        db.check()
    assert "s3cret" not in str(info.value)
    with pytest.raises(DatabaseError, match="cannot migrate"):
        db.upgrade()


def test_sqlite_directory_that_cannot_exist_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(DatabaseError, match="cannot create the directory"):
        Database(default_sqlite_url(blocker / "data"))


def test_sqlite_runs_wal_with_foreign_keys(sqlite_database: Database) -> None:
    with sqlite_database.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1


def test_sqlite_sessions_from_many_threads(sqlite_database: Database) -> None:
    # The hub opens sessions from the asyncio thread and from FastAPI's worker threads at once.
    barrier = threading.Barrier(8)

    def write(i: int) -> None:
        barrier.wait(timeout=10)
        for j in range(10):
            with sqlite_database.session() as s:
                s.add(Setting(key=f"t{i}-{j}", value=str(threading.get_ident())))

    with ThreadPoolExecutor(max_workers=8) as pool:
        for future in [pool.submit(write, i) for i in range(8)]:
            future.result(timeout=60)
    with sqlite_database.session() as s:
        assert s.scalar(select(func.count()).select_from(Setting)) == 80
        assert len(set(s.scalars(select(Setting.value)))) > 1  # really written from several threads


def test_sqlite_in_memory_is_one_shared_database() -> None:
    db = Database("sqlite://")
    db.upgrade()
    with db.session() as s:
        s.add(Setting(key="a", value="b"))
    with db.session() as s:
        assert s.get(Setting, "a") is not None
    db.dispose()
