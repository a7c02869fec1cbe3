"""The console's language per user, and the telephone prompts' language per speaker PIN
(citycast.hub.db.models.User.language, SpeakerPin.language): "en" or "ur".

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Server defaults, so users and PINs made before this revision read as English, as they were.
    op.add_column("users", sa.Column("language", sa.String(length=8), server_default="en", nullable=False))
    op.add_column("speaker_pins", sa.Column("language", sa.String(length=8), server_default="en", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("speaker_pins") as batch:
        batch.drop_column("language")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("language")
