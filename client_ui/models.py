"""The `predictions` table: one row per drawing, with its ranges enforced by the database.

Schema changes go through Alembic (client_ui/migrations); this class and the newest migration
describe the same table (tests/client_ui/test_migrations.py checks it).
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import CheckConstraint, Column, DateTime, Index, LargeBinary
from sqlmodel import Field, SQLModel


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class Prediction(SQLModel, table=True):
    """A drawing, what the model said about it and, once someone clicked it, its true label."""

    __tablename__ = "predictions"
    __table_args__ = (
        CheckConstraint("predicted_digit BETWEEN 0 AND 9", name="ck_predictions_predicted_digit"),
        CheckConstraint("confidence >= 0 AND confidence <= 1", name="ck_predictions_confidence"),
        CheckConstraint(
            "true_label IS NULL OR true_label BETWEEN 0 AND 9", name="ck_predictions_true_label"
        ),
        CheckConstraint("latency_ms >= 0", name="ck_predictions_latency_ms"),
        CheckConstraint(
            "shadow_digit IS NULL OR shadow_digit BETWEEN 0 AND 9",
            name="ck_predictions_shadow_digit",
        ),
        # Every column the statistics page counts: it reads this index, not the images.
        Index(
            "ix_predictions_statistics",
            "model_version",
            "timestamp",
            "true_label",
            "predicted_digit",
            "confidence",
            "shadow_version",
            "shadow_digit",
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    #: The drawing's own key (its outbox file): a restarted app finds the row it wrote.
    drawing_key: str | None = Field(default=None, index=True, unique=True)
    timestamp: datetime = Field(
        default_factory=utc_now,
        sa_column=Column(DateTime(timezone=True), nullable=False, index=True),
    )
    predicted_digit: int
    confidence: float
    true_label: int | None = Field(default=None)
    image_data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    model_version: str = Field(index=True)
    latency_ms: float
    #: The candidate version's answer to the same drawing (shadow testing), when one was asked.
    shadow_version: str | None = Field(default=None)
    shadow_digit: int | None = Field(default=None)
    shadow_confidence: float | None = Field(default=None)

    @property
    def timestamp_utc(self) -> datetime:
        """The timestamp as an aware UTC datetime (SQLite hands it back naive)."""
        if self.timestamp.tzinfo is None:
            return self.timestamp.replace(tzinfo=timezone.utc)
        return self.timestamp.astimezone(timezone.utc)
