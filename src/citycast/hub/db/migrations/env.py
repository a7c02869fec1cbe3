"""Alembic environment. Runs only through `Database.upgrade()`, which hands over an open connection: the
hub configures its database from code, so there is no alembic.ini and no URL here."""

from __future__ import annotations

from alembic import context

from citycast.hub.db.models import Base

connection = context.config.attributes.get("connection")
if connection is None or context.is_offline_mode():
    raise RuntimeError("citycast migrations run through citycast.hub.db.Database(url).upgrade(), not the alembic CLI")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite cannot ALTER most things: later migrations rebuild tables in batch mode.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
