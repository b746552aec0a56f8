"""An index holding every column the statistics page counts: its grouped queries read the
index, not the rows with their images, which on SQLite is what keeps them within DB_TIMEOUT
on a large table (figures in docs/app.md).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

COLUMNS = [
    "model_version",
    "timestamp",
    "true_label",
    "predicted_digit",
    "confidence",
    "shadow_version",
    "shadow_digit",
]


def upgrade() -> None:
    op.create_index("ix_predictions_statistics", "predictions", COLUMNS)


def downgrade() -> None:
    op.drop_index("ix_predictions_statistics", table_name="predictions")
