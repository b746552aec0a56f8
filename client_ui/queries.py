"""Reads and writes on the `predictions` table; every function takes an open session."""

from __future__ import annotations

import csv
import io
from collections import deque
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any, Literal

from sqlalchemy import ColumnElement, and_, func
from sqlmodel import Session, col, delete, select, update

from client_ui.models import Prediction

Correctness = Literal["right", "wrong"]
DIGITS = range(10)
#: How many of the latest labelled drawings the accuracy-over-time curve averages.
ROLLING_WINDOW = 20


@dataclass(frozen=True)
class Filters:
    """History filters; None means "any"."""

    predicted_digit: int | None = None
    true_label: int | None = None
    correctness: Correctness | None = None
    model_version: str | None = None

    def conditions(self) -> list[ColumnElement[bool]]:
        conditions: list[ColumnElement[bool]] = []
        if self.model_version is not None:
            conditions.append(col(Prediction.model_version) == self.model_version)
        if self.predicted_digit is not None:
            conditions.append(col(Prediction.predicted_digit) == self.predicted_digit)
        if self.true_label is not None:
            conditions.append(col(Prediction.true_label) == self.true_label)
        if self.correctness == "right":
            conditions.append(col(Prediction.true_label) == col(Prediction.predicted_digit))
        elif self.correctness == "wrong":
            conditions.append(
                and_(
                    col(Prediction.true_label).is_not(None),
                    col(Prediction.true_label) != col(Prediction.predicted_digit),
                )
            )
        return conditions


def insert_prediction(session: Session, values: dict[str, Any]) -> int:
    row = Prediction(**values)
    session.add(row)
    session.flush()
    assert row.id is not None
    return row.id


def row_id_for_key(session: Session, drawing_key: str) -> int | None:
    """The row a drawing was written to, by its key (None before its first write)."""
    statement = select(Prediction.id).where(col(Prediction.drawing_key) == drawing_key)
    return session.exec(statement).first()


def update_drawing(session: Session, drawing_key: str, values: dict[str, Any]) -> bool:
    """Overwrite the row of one drawing; False when it is gone. By key, not id: SQLite gives a
    deleted row's id to the next row, which must never take a change meant for the old one."""
    result = session.execute(
        update(Prediction).where(col(Prediction.drawing_key) == drawing_key).values(**values)
    )
    return result.rowcount > 0


def _same_row(listed: Prediction) -> ColumnElement[bool]:
    """The row a page listed, matched by id and drawing key: were it deleted meanwhile, SQLite
    may have given its id to a new drawing, which must not take the change."""
    return and_(
        col(Prediction.id) == listed.id,
        col(Prediction.drawing_key).is_not_distinct_from(listed.drawing_key),
    )


def set_true_label(session: Session, listed: Prediction, label: int | None) -> bool:
    """False when the listed row is gone."""
    result = session.execute(update(Prediction).where(_same_row(listed)).values(true_label=label))
    return result.rowcount > 0


def delete_prediction(session: Session, listed: Prediction) -> bool:
    """False when the listed row is gone."""
    result = session.execute(delete(Prediction).where(_same_row(listed)))
    return result.rowcount > 0


def get_prediction(session: Session, row_id: int) -> Prediction | None:
    return session.get(Prediction, row_id)


def model_versions(session: Session) -> list[str]:
    """Every model version that answered a stored drawing, oldest first."""
    first_seen = func.min(col(Prediction.timestamp))
    statement = (
        select(Prediction.model_version)
        .group_by(col(Prediction.model_version))
        .order_by(first_seen)
    )
    return list(session.exec(statement))


def count_predictions(session: Session, filters: Filters = Filters()) -> int:
    statement = select(func.count()).select_from(Prediction).where(*filters.conditions())
    return session.exec(statement).one()


def list_predictions(
    session: Session, filters: Filters = Filters(), *, offset: int = 0, limit: int = 20
) -> list[Prediction]:
    """Newest first."""
    statement = (
        select(Prediction)
        .where(*filters.conditions())
        .order_by(col(Prediction.timestamp).desc(), col(Prediction.id).desc())
        .offset(offset)
        .limit(limit)
    )
    return list(session.exec(statement).all())


CSV_COLUMNS = [
    "id",
    "timestamp",
    "predicted_digit",
    "confidence",
    "true_label",
    "correct",
    "model_version",
    "latency_ms",
]


def export_csv(session: Session, filters: Filters = Filters()) -> str:
    """The filtered rows as CSV (without the images), newest first."""
    columns = [getattr(Prediction, name) for name in CSV_COLUMNS if name != "correct"]
    statement = (
        select(*columns).where(*filters.conditions()).order_by(col(Prediction.timestamp).desc())
    )
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for row_id, stamp, predicted, confidence, label, version, latency in session.exec(statement):
        correct = "" if label is None else int(label == predicted)
        label_text = "" if label is None else label
        writer.writerow(
            [
                row_id,
                stamp.isoformat(),
                predicted,
                confidence,
                label_text,
                correct,
                version,
                latency,
            ]
        )
    return buffer.getvalue()


@dataclass
class Tally:
    """Labelled drawings and how many of them a model read right."""

    labelled: int = 0
    correct: int = 0

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    def add(self, right: bool) -> None:
        self.labelled += 1
        self.correct += right


@dataclass
class VersionRecord:
    """One model version's drawings, and its accuracy overall and per UTC day."""

    drawings: int = 0
    overall: Tally = field(default_factory=Tally)
    days: dict[date, Tally] = field(default_factory=dict)


@dataclass
class ShadowComparison:
    """The live versions against one shadow-tested candidate version, on the same drawings."""

    candidate_version: str
    #: Drawings that got both answers, and those of them where the two differ.
    shadowed: int = 0
    disagreements: int = 0
    live: Tally = field(default_factory=Tally)
    candidate: Tally = field(default_factory=Tally)
    live_per_digit: list[Tally] = field(default_factory=lambda: [Tally() for _ in DIGITS])
    candidate_per_digit: list[Tally] = field(default_factory=lambda: [Tally() for _ in DIGITS])


@dataclass
class Statistics:
    """Everything the statistics page shows, computed from the labelled and unlabelled rows."""

    total: int = 0
    labelled: int = 0
    correct: int = 0
    #: confusion[true][predicted]
    confusion: list[list[int]] = field(default_factory=lambda: [[0] * 10 for _ in DIGITS])
    #: (time of a labelled drawing, accuracy over the last ROLLING_WINDOW labelled), oldest first
    timeline: list[tuple[datetime, float]] = field(default_factory=list)
    confidence_right: list[float] = field(default_factory=list)
    confidence_wrong: list[float] = field(default_factory=list)
    versions: dict[str, VersionRecord] = field(default_factory=dict)
    #: One comparison per candidate version, in the order they were first shadow-tested.
    shadows: dict[str, ShadowComparison] = field(default_factory=dict)

    @property
    def mean_confidence_right(self) -> float | None:
        return _mean(self.confidence_right)

    @property
    def mean_confidence_wrong(self) -> float | None:
        return _mean(self.confidence_wrong)

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    def labelled_per_digit(self, digit: int) -> int:
        return sum(self.confusion[digit])

    def accuracy_per_digit(self, digit: int) -> float | None:
        """Share of drawings of `digit` that the model recognised."""
        labelled = self.labelled_per_digit(digit)
        return self.confusion[digit][digit] / labelled if labelled else None


def compute_statistics(session: Session) -> Statistics:
    statement = select(
        Prediction.predicted_digit,
        Prediction.true_label,
        Prediction.confidence,
        Prediction.timestamp,
        Prediction.model_version,
        Prediction.shadow_version,
        Prediction.shadow_digit,
    )
    stats = Statistics()
    recent: deque[bool] = deque(maxlen=ROLLING_WINDOW)
    rows = session.exec(statement.order_by(col(Prediction.timestamp), col(Prediction.id)))
    for predicted, label, confidence, stamp, version, shadow_version, shadow_digit in rows:
        stats.total += 1
        record = stats.versions.setdefault(version, VersionRecord())
        record.drawings += 1
        candidate = shadow_version or "unknown"
        if shadow_digit is not None and candidate != version:  # not a version against itself
            comparison = stats.shadows.setdefault(candidate, ShadowComparison(candidate))
            _compare(comparison, predicted, shadow_digit, label)
        if label is None:
            continue
        right = label == predicted
        stats.labelled += 1
        stats.correct += right
        stats.confusion[label][predicted] += 1
        (stats.confidence_right if right else stats.confidence_wrong).append(confidence)
        recent.append(right)
        stamp = _as_utc(stamp)
        stats.timeline.append((stamp, sum(recent) / len(recent)))
        record.overall.add(right)
        record.days.setdefault(stamp.date(), Tally()).add(right)
    return stats


def _compare(shadow: ShadowComparison, live: int, candidate: int, label: int | None) -> None:
    shadow.shadowed += 1
    shadow.disagreements += live != candidate
    if label is not None:
        shadow.live.add(live == label)
        shadow.candidate.add(candidate == label)
        shadow.live_per_digit[label].add(live == label)
        shadow.candidate_per_digit[label].add(candidate == label)


def _as_utc(stamp: datetime) -> datetime:
    """PostgreSQL answers in the session's time zone, SQLite naive in UTC: normalise both."""
    return stamp.astimezone(timezone.utc) if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
