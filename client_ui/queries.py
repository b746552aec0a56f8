"""Reads and writes on the `predictions` table; every function takes an open session."""

from __future__ import annotations

import csv
import io
from collections import deque
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any, Literal

from sqlalchemy import ColumnElement, Date, and_, case, cast, func
from sqlmodel import Session, col, delete, select, update

from client_ui.models import Prediction

Correctness = Literal["right", "wrong"]
DIGITS = range(10)
#: How many of the latest labelled drawings the accuracy-over-time curve averages.
ROLLING_WINDOW = 20
#: The newest labelled drawings the accuracy-over-time chart shows: the page's work and what
#: it sends to the browser stay the same however many drawings there are.
TIMELINE_POINTS = 500
#: Bins of the confidence histograms, 0.1 wide; a confidence of 1.0 goes in the last.
CONFIDENCE_BINS = 10


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
    """The filtered rows as CSV (without the images), newest first, times in UTC with offset."""
    columns = [getattr(Prediction, name) for name in CSV_COLUMNS if name != "correct"]
    statement = (
        select(*columns)
        .where(*filters.conditions())
        .order_by(col(Prediction.timestamp).desc(), col(Prediction.id).desc())
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
                _as_utc(stamp).isoformat(),
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

    def __add__(self, other: Tally) -> Tally:
        return Tally(self.labelled + other.labelled, self.correct + other.correct)


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
    #: (time of one of the newest TIMELINE_POINTS labelled drawings, accuracy over the last
    #: ROLLING_WINDOW labelled up to it), oldest first
    timeline: list[tuple[datetime, float]] = field(default_factory=list)
    #: Labelled drawings per confidence bin (CONFIDENCE_BINS of 0.1, 1.0 in the last).
    histogram_right: list[int] = field(default_factory=lambda: [0] * CONFIDENCE_BINS)
    histogram_wrong: list[int] = field(default_factory=lambda: [0] * CONFIDENCE_BINS)
    mean_confidence_right: float | None = None
    mean_confidence_wrong: float | None = None
    #: In the order the versions first answered.
    versions: dict[str, VersionRecord] = field(default_factory=dict)
    #: One comparison per candidate version, in the order they were first shadow-tested.
    shadows: dict[str, ShadowComparison] = field(default_factory=dict)

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    def labelled_per_digit(self, digit: int) -> int:
        return sum(self.confusion[digit])

    def accuracy_per_digit(self, digit: int) -> float | None:
        """Share of drawings of `digit` that the model recognised."""
        labelled = self.labelled_per_digit(digit)
        return self.confusion[digit][digit] / labelled if labelled else None


_LABELLED = col(Prediction.true_label).is_not(None)
_RIGHT = col(Prediction.true_label) == col(Prediction.predicted_digit)


def compute_statistics(session: Session) -> Statistics:
    """Counted by the database, grouped, in three passes over an index that holds the columns
    counted (client_ui/models.py), and a timeline of bounded length: the memory held does not
    grow with the rows, and the time grows slowly (every row read into Python outgrew
    DB_TIMEOUT, and the page said the database was down; figures in docs/app.md)."""
    stats = Statistics()
    _add_versions(session, stats)
    _add_labelled(session, stats)
    _add_shadows(session, stats)
    stats.timeline = _timeline(session)
    return stats


def _add_versions(session: Session, stats: Statistics) -> None:
    """Each version's drawings and accuracy, overall and per UTC day, and all drawings."""
    version, day = col(Prediction.model_version), _utc_day(session)
    statement = select(
        version,
        day,
        func.count(),
        func.count(col(Prediction.true_label)),
        _count_if(_RIGHT),
        func.min(col(Prediction.timestamp)),
    ).group_by(version, day)
    by_first_seen = sorted(session.exec(statement), key=lambda row: (row[-1], row[0]))
    for name, when, drawings, labelled, correct, _ in by_first_seen:
        record = stats.versions.setdefault(name, VersionRecord())
        record.drawings += drawings
        stats.total += drawings
        if labelled:
            record.days[when] = Tally(labelled, correct)
            record.overall += record.days[when]


def _add_labelled(session: Session, stats: Statistics) -> None:
    """The confusion matrix, and the confidence of right and wrong answers (histograms and
    means), in one pass over the labelled rows."""
    label, predicted, bin_ = col(Prediction.true_label), col(Prediction.predicted_digit), _bin()
    statement = (
        select(label, predicted, bin_, func.count(), func.sum(col(Prediction.confidence)))
        .where(_LABELLED)
        .group_by(label, predicted, bin_)
    )
    sums = {True: 0.0, False: 0.0}
    for true_digit, predicted_digit, index, count, confidences in session.exec(statement):
        stats.confusion[true_digit][predicted_digit] += count
        right = true_digit == predicted_digit
        (stats.histogram_right if right else stats.histogram_wrong)[index] += count
        sums[right] += confidences
    stats.labelled = sum(map(sum, stats.confusion))
    stats.correct = sum(stats.confusion[digit][digit] for digit in DIGITS)
    wrong = stats.labelled - stats.correct
    stats.mean_confidence_right = sums[True] / stats.correct if stats.correct else None
    stats.mean_confidence_wrong = sums[False] / wrong if wrong else None


def _add_shadows(session: Session, stats: Statistics) -> None:
    """Live against each candidate, per true label, never a version against itself."""
    shadow_digit = col(Prediction.shadow_digit)
    candidate = func.coalesce(func.nullif(col(Prediction.shadow_version), ""), "unknown")
    label = col(Prediction.true_label)
    statement = (
        select(
            candidate,
            label,
            func.count(),
            _count_if(col(Prediction.predicted_digit) != shadow_digit),
            _count_if(_RIGHT),
            _count_if(shadow_digit == label),
            func.min(col(Prediction.timestamp)),
        )
        .where(shadow_digit.is_not(None), candidate != col(Prediction.model_version))
        .group_by(candidate, label)
    )
    by_first_seen = sorted(session.exec(statement), key=lambda row: (row[-1], row[0]))
    for name, true_digit, shadowed, disagreements, live_right, candidate_right, _ in by_first_seen:
        comparison = stats.shadows.setdefault(name, ShadowComparison(name))
        comparison.shadowed += shadowed
        comparison.disagreements += disagreements
        if true_digit is None:
            continue
        live, chosen = Tally(shadowed, live_right), Tally(shadowed, candidate_right)
        comparison.live_per_digit[true_digit] = live
        comparison.candidate_per_digit[true_digit] = chosen
        comparison.live += live
        comparison.candidate += chosen


def _timeline(session: Session) -> list[tuple[datetime, float]]:
    """The rolling accuracy at each of the newest TIMELINE_POINTS labelled drawings; the
    ROLLING_WINDOW - 1 before them are read too, so that the oldest points average a full window."""
    statement = (
        select(Prediction.timestamp, _RIGHT)
        .where(_LABELLED)
        .order_by(col(Prediction.timestamp).desc(), col(Prediction.id).desc())
        .limit(TIMELINE_POINTS + ROLLING_WINDOW - 1)
    )
    recent: deque[bool] = deque(maxlen=ROLLING_WINDOW)
    timeline = []
    for stamp, right in reversed(session.exec(statement).all()):
        recent.append(bool(right))
        timeline.append((_as_utc(stamp), sum(recent) / len(recent)))
    return timeline[-TIMELINE_POINTS:]


def _count_if(condition: ColumnElement[bool]) -> ColumnElement[int]:
    return func.sum(case((condition, 1), else_=0))


def _bin() -> ColumnElement[int]:
    """A confidence's histogram bin, int(confidence * 10) with 1.0 in the last, by comparisons
    that give the same on every backend (a cast to integer rounds on PostgreSQL, truncates on
    SQLite)."""
    tenths = col(Prediction.confidence) * CONFIDENCE_BINS
    edges = range(CONFIDENCE_BINS - 1, 0, -1)
    return case(*((tenths >= edge, edge) for edge in edges), else_=0)


def _utc_day(session: Session) -> ColumnElement[date]:
    """The UTC day of a drawing. PostgreSQL keeps an instant, whose day it gives in the
    session's time zone unless told UTC; SQLite keeps naive UTC text."""
    stamp = col(Prediction.timestamp)
    if session.get_bind().dialect.name == "postgresql":
        return cast(func.timezone("UTC", stamp), Date)
    return func.date(stamp, type_=Date)


def _as_utc(stamp: datetime) -> datetime:
    """PostgreSQL answers in the session's time zone, SQLite naive in UTC: normalise both."""
    return stamp.astimezone(timezone.utc) if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)
