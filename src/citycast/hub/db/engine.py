"""The hub's database: one engine, short sync sessions, Alembic migrations run from code.

SQLite (the default, one file in the hub's data directory) or PostgreSQL (`postgresql+psycopg://...`).
Hub code runs short sync sessions, also from the asyncio thread, so SQLite connections may move between
threads, run in WAL mode (readers never wait for the writer) and wait a little for a lock instead of failing."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_S = 5.0
SUPPORTED_BACKENDS = ("sqlite", "postgresql")


class DatabaseError(Exception):
    """The database cannot be used: a bad URL, an unreachable server, a failed migration. The message says
    which and is meant for the operator."""


def default_sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{(Path(data_dir) / 'hub.db').resolve()}"


def _redacted(url: URL) -> str:
    return url.render_as_string(hide_password=True)


class Database:
    def __init__(self, url: str) -> None:
        try:
            parsed = make_url(url)
        except exc.ArgumentError as e:
            raise DatabaseError(
                "invalid database URL: expected e.g. sqlite:///path/hub.db or "
                "postgresql+psycopg://user:password@host/dbname"
            ) from e
        if parsed.get_backend_name() not in SUPPORTED_BACKENDS:
            raise DatabaseError(
                f"unsupported database {parsed.get_backend_name()!r} in {_redacted(parsed)}: use sqlite or postgresql"
            )
        self.url = url
        self._parsed = parsed
        try:
            self.engine = self._create_engine(parsed)
        except (exc.ArgumentError, exc.NoSuchModuleError, ImportError) as e:
            raise DatabaseError(f"cannot use database URL {_redacted(parsed)}: {e}") from e
        # expire_on_commit=False: callers build responses from objects after the session has committed.
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def is_sqlite(self) -> bool:
        return self._parsed.get_backend_name() == "sqlite"

    def _create_engine(self, url: URL) -> Engine:
        if url.get_backend_name() != "sqlite":
            # pre-ping: a PostgreSQL restart must not fail the first request after it.
            return create_engine(url, pool_pre_ping=True)
        memory = url.database in (None, "", ":memory:")
        if not memory:
            try:
                Path(str(url.database)).parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise DatabaseError(f"cannot create the directory for SQLite database {url.database}: {e}") from e
        connect_args: dict[str, Any] = {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S}
        # An in-memory database exists once per connection: share one so every session sees the same tables.
        engine = (
            create_engine(url, connect_args=connect_args, poolclass=StaticPool)
            if memory
            else create_engine(url, connect_args=connect_args)
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute("PRAGMA foreign_keys=ON")  # off by default in SQLite: ON DELETE rules need it
                if not memory:
                    cursor.execute("PRAGMA journal_mode=WAL")
                    cursor.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; a crash loses no committed row
            finally:
                cursor.close()

        return engine

    def _fail(self, doing: str, e: Exception) -> DatabaseError:
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()
        return DatabaseError(f"cannot {doing} {_redacted(self._parsed)}: {reason[0] if reason else type(e).__name__}")

    def check(self) -> None:
        """Connect once; raise `DatabaseError` saying why if that fails."""
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except exc.SQLAlchemyError as e:
            raise self._fail("connect to", e) from e

    def _alembic_config(self) -> Config:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
        return config

    def upgrade(self, revision: str = "head") -> None:
        """Bring the schema to `revision` (the newest by default). Safe to call at every start."""
        config = self._alembic_config()
        try:
            with self.engine.begin() as conn:
                config.attributes["connection"] = conn
                command.upgrade(config, revision)
        except exc.SQLAlchemyError as e:
            raise self._fail("migrate", e) from e

    def current_revision(self) -> str | None:
        try:
            with self.engine.connect() as conn:
                return MigrationContext.configure(conn).get_current_revision()
        except exc.SQLAlchemyError as e:
            raise self._fail("read the schema version of", e) from e

    def head_revision(self) -> str | None:
        return ScriptDirectory.from_config(self._alembic_config()).get_current_head()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: commits when the block ends, rolls back if it raises. Keep it short. The block may
        also commit part-way (`s.commit()`), e.g. to make a row durable before announcing it."""
        session = self._sessions()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def dispose(self) -> None:
        self.engine.dispose()

    def __repr__(self) -> str:
        return f"Database({_redacted(self._parsed)!r})"
