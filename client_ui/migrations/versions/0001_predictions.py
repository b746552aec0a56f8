"""The predictions table as the app created it before migrations.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "predictions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("predicted_digit", sa.Integer(), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("true_label", sa.Integer(), nullable=True),
        sa.Column("image_data", sa.LargeBinary(), nullable=False),
        sa.Column("model_version", sa.String(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.CheckConstraint(
            "predicted_digit BETWEEN 0 AND 9", name="ck_predictions_predicted_digit"
        ),
        sa.CheckConstraint("confidence >= 0 AND confidence <= 1", name="ck_predictions_confidence"),
        sa.CheckConstraint(
            "true_label IS NULL OR true_label BETWEEN 0 AND 9", name="ck_predictions_true_label"
        ),
        sa.CheckConstraint("latency_ms >= 0", name="ck_predictions_latency_ms"),
    )
    op.create_index("ix_predictions_timestamp", "predictions", ["timestamp"])


def downgrade() -> None:
    op.drop_index("ix_predictions_timestamp", table_name="predictions")
    op.drop_table("predictions")
