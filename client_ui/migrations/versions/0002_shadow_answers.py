"""A candidate version's answer beside the live one (shadow testing), and versions indexed.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Batch mode: SQLite adds a CHECK constraint only by copying the table.
    with op.batch_alter_table("predictions") as table:
        table.add_column(sa.Column("shadow_version", sa.String(), nullable=True))
        table.add_column(sa.Column("shadow_digit", sa.Integer(), nullable=True))
        table.add_column(sa.Column("shadow_confidence", sa.Float(), nullable=True))
        table.create_check_constraint(
            "ck_predictions_shadow_digit", "shadow_digit IS NULL OR shadow_digit BETWEEN 0 AND 9"
        )
    op.create_index("ix_predictions_model_version", "predictions", ["model_version"])


def downgrade() -> None:
    op.drop_index("ix_predictions_model_version", table_name="predictions")
    with op.batch_alter_table("predictions") as table:
        table.drop_constraint("ck_predictions_shadow_digit", type_="check")
        table.drop_column("shadow_confidence")
        table.drop_column("shadow_digit")
        table.drop_column("shadow_version")
