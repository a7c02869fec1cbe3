"""Speaker PINs for the telephone (citycast.hub.db.models.SpeakerPin).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "speaker_pins",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(length=128), nullable=False),
        sa.Column("pin_hash", sa.String(length=255), nullable=False),
        sa.Column("pin_hint", sa.String(length=2), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("zone_ids", sa.JSON(), nullable=False),
        sa.Column(
            "priority",
            sa.Enum("emergency", "live", "scheduled", "fill", name="priority", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column("valid_from", sa.DateTime(timezone=True), nullable=True),
        sa.Column("valid_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_speaker_pins_user_id_users"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_speaker_pins")),
    )
    op.create_index(op.f("ix_speaker_pins_pin_hint"), "speaker_pins", ["pin_hint"], unique=False)
    op.create_index(op.f("ix_speaker_pins_user_id"), "speaker_pins", ["user_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_speaker_pins_user_id"), table_name="speaker_pins")
    op.drop_index(op.f("ix_speaker_pins_pin_hint"), table_name="speaker_pins")
    op.drop_table("speaker_pins")
