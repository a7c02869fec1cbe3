"""A zone keeps its own volume and mute (citycast.hub.db.models.Zone): the console shows them, joining sites take them.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Server defaults, so zones made before this revision read as full volume, not muted.
    op.add_column("zones", sa.Column("volume", sa.Float(), server_default="1", nullable=False))
    op.add_column("zones", sa.Column("muted", sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("zones") as batch:
        batch.drop_column("muted")
        batch.drop_column("volume")
