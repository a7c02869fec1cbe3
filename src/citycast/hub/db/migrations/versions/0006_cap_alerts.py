"""CAP alerts from the authorities (citycast.hub.db.models.CapAlert): each message received and what became of it.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "cap_alerts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sender", sa.String(length=255), nullable=True),
        sa.Column("identifier", sa.String(length=255), nullable=True),
        sa.Column("sent", sa.String(length=40), nullable=True),
        sa.Column("msg_type", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("origin", sa.String(length=500), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("headline", sa.String(length=500), nullable=False),
        sa.Column("priority", sa.String(length=16), nullable=True),
        sa.Column("address_id", sa.Integer(), nullable=True),
        sa.Column("sites", sa.JSON(), nullable=False),
        sa.Column("area", sa.JSON(), nullable=True),
        sa.Column("references", sa.JSON(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("signed", sa.Boolean(), nullable=False),
        sa.Column("xml", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["address_id"], ["addresses.id"], name="fk_cap_alerts_address_id_addresses", ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_cap_alerts"),
        sa.UniqueConstraint("sender", "identifier", "sent", name="uq_cap_alerts_key"),
    )
    op.create_index("ix_cap_alerts_address_id", "cap_alerts", ["address_id"])
    op.create_index("ix_cap_alerts_received_at", "cap_alerts", ["received_at"])


def downgrade() -> None:
    op.drop_index("ix_cap_alerts_received_at", table_name="cap_alerts")
    op.drop_index("ix_cap_alerts_address_id", table_name="cap_alerts")
    op.drop_table("cap_alerts")
