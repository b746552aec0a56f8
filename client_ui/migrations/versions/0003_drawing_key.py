"""Each row carries its drawing's key, unique, so a write repeated after a crash updates it.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("predictions", sa.Column("drawing_key", sa.String(), nullable=True))
    op.create_index("ix_predictions_drawing_key", "predictions", ["drawing_key"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_predictions_drawing_key", table_name="predictions")
    with op.batch_alter_table("predictions") as table:
        table.drop_column("drawing_key")
