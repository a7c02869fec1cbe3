"""A zone's chime before every address and its start lead, for the sites' amplifiers
(citycast.hub.db.models.Zone.chime, Zone.start_lead_ms).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Zones made before this revision: no chime, no lead, as they played until now.
    op.add_column("zones", sa.Column("chime", sa.String(length=255), nullable=True))
    op.add_column("zones", sa.Column("start_lead_ms", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("zones") as batch:
        batch.drop_column("start_lead_ms")
        batch.drop_column("chime")
