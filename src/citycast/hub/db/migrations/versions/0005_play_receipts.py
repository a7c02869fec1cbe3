"""Proof of play: the receipts sites sign for what they played (citycast.hub.db.models.PlayReceiptRecord).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "play_receipts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("address_id", sa.Integer(), nullable=False),
        sa.Column("site_id", sa.Integer(), nullable=False),
        sa.Column("channel", sa.Integer(), nullable=False),
        sa.Column("stream", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("final", sa.Boolean(), nullable=False),
        sa.Column("first_ns", sa.BigInteger(), nullable=False),
        sa.Column("last_ns", sa.BigInteger(), nullable=False),
        sa.Column("concealed", sa.Integer(), nullable=False),
        sa.Column("fallback_s", sa.Float(), nullable=False),
        sa.Column("sync_error_ms", sa.Float(), nullable=False),
        sa.Column("level_rms_dbfs", sa.Float(), nullable=False),
        sa.Column("level_peak_dbfs", sa.Float(), nullable=False),
        sa.Column("sent_ns", sa.BigInteger(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("signed", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["address_id"], ["addresses.id"], name=op.f("fk_play_receipts_address_id_addresses"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["site_id"], ["sites.id"], name=op.f("fk_play_receipts_site_id_sites"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_play_receipts")),
        sa.UniqueConstraint("site_id", "stream", "first_ns", "seq", name="uq_play_receipts_span_seq"),
    )
    op.create_index(op.f("ix_play_receipts_address_id"), "play_receipts", ["address_id"], unique=False)
    op.create_index(op.f("ix_play_receipts_site_id"), "play_receipts", ["site_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_play_receipts_site_id"), table_name="play_receipts")
    op.drop_index(op.f("ix_play_receipts_address_id"), table_name="play_receipts")
    op.drop_table("play_receipts")
