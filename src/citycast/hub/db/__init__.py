"""The hub's database: models, engine and sessions, migrations."""

from citycast.hub.db.engine import Database, DatabaseError, default_sqlite_url

__all__ = ["Database", "DatabaseError", "default_sqlite_url"]
