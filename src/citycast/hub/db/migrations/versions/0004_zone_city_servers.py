"""A zone lists its city servers (citycast.hub.db.models.Zone.city_servers): enrolment hands a site all of them.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A server default fills the zones made before this revision (no city server: their sites dial the hub's
    # URLs); then it goes, as in the model, where new zones get theirs from Python. PostgreSQL cannot compare a
    # json default (no = operator for json), so a default kept in the schema would also break the check that the
    # migrations build exactly the models' schema.
    op.add_column("zones", sa.Column("city_servers", sa.JSON(), server_default="[]", nullable=False))
    with op.batch_alter_table("zones") as batch:
        batch.alter_column("city_servers", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("zones") as batch:
        batch.drop_column("city_servers")
