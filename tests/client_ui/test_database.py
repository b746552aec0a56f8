"""The database layer against SQLite and a real PostgreSQL."""

from __future__ import annotations

import csv
import io
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import insert as insert_many
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from client_ui import queries
from client_ui.database import Database
from client_ui.models import Prediction
from client_ui.queries import (
    ROLLING_WINDOW,
    TIMELINE_POINTS,
    Filters,
    ShadowComparison,
    Statistics,
    Tally,
    VersionRecord,
)
from client_ui.services import AppServices
from config import load_settings

PNG = b"\x89PNG\r\n\x1a\nnot really"
#: Which digit of a row to score: the live model's, or the shadow-tested candidate's.
Answer = Callable[[Prediction], int | None]


def row(predicted: int = 3, label: int | None = None, **overrides: object) -> dict[str, object]:
    values: dict[str, object] = {
        "predicted_digit": predicted,
        "confidence": 0.8,
        "true_label": label,
        "image_data": PNG,
        "model_version": "1.0",
        "latency_ms": 7.5,
    }
    values.update(overrides)
    return values


def insert(database: Database, *rows: dict[str, object]) -> list[int]:
    with database.session() as session:
        return [queries.insert_prediction(session, values) for values in rows]


def far_from_utc(session: Session) -> None:
    """On PostgreSQL, a session time zone 14 hours from UTC: no answer may depend on it."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SET TIME ZONE 'Pacific/Kiritimati'"))


def test_table_has_the_agreed_columns(database: Database) -> None:
    columns = {column["name"] for column in inspect(database.engine).get_columns("predictions")}
    assert columns == {
        "id", "timestamp", "predicted_digit", "confidence", "true_label",
        "image_data", "model_version", "latency_ms",
        "shadow_version", "shadow_digit", "shadow_confidence", "drawing_key",
    }  # fmt: skip


def test_a_row_round_trips_with_png_bytes_and_utc_time(database: Database) -> None:
    (row_id,) = insert(database, row(predicted=7, label=1))
    with database.session() as session:
        stored = queries.get_prediction(session, row_id)
    assert stored is not None
    assert (stored.predicted_digit, stored.true_label, stored.image_data) == (7, 1, PNG)
    age = datetime.now(timezone.utc) - stored.timestamp_utc
    assert timedelta(0) <= age < timedelta(minutes=1)


@pytest.mark.parametrize(
    "bad",
    [
        {"predicted_digit": 11},
        {"predicted_digit": -1},
        {"confidence": 1.5},
        {"confidence": -0.1},
        {"true_label": 10},
        {"latency_ms": -1.0},
    ],
)
def test_the_database_rejects_values_out_of_range(database: Database, bad: dict) -> None:
    with pytest.raises(IntegrityError, match=r"ck_predictions|CHECK"):
        insert(database, row(**bad))
    with database.session() as session:
        assert queries.count_predictions(session) == 0


def test_relabel_and_delete(database: Database) -> None:
    first, second = insert(database, row(), row())
    with database.session() as session:
        listed = queries.list_predictions(session)
        by_id = {row.id: row for row in listed}
        assert queries.set_true_label(session, by_id[first], 3)
        assert queries.delete_prediction(session, by_id[second])
        assert not queries.delete_prediction(session, by_id[second])
    with database.session() as session:
        assert queries.get_prediction(session, first).true_label == 3  # type: ignore[union-attr]
        assert queries.count_predictions(session) == 1


def test_a_listed_row_deleted_meanwhile_is_not_changed_in_the_row_that_took_its_id(
    database: Database,
) -> None:
    (first,) = insert(database, row(drawing_key="first"))
    with database.session() as session:
        listed = queries.get_prediction(session, first)
        assert queries.delete_prediction(session, listed)
    (reused,) = insert(database, row(drawing_key="second"))
    if database.engine.dialect.name == "sqlite":
        assert reused == first  # SQLite gives the newest deleted id again; PostgreSQL never
    with database.session() as session:
        assert not queries.set_true_label(session, listed, 3)
        assert not queries.delete_prediction(session, listed)
        assert queries.get_prediction(session, reused).true_label is None  # type: ignore[union-attr]


def test_filters_and_paging(database: Database) -> None:
    insert(
        database,
        row(predicted=1, label=1),
        row(predicted=1, label=7),
        row(predicted=2),
        row(predicted=7, label=7),
    )
    with database.session() as session:

        def ids(filters: Filters) -> list[int]:
            return [
                (p.predicted_digit, p.true_label)
                for p in queries.list_predictions(session, filters)
            ]

        assert sorted(ids(Filters(predicted_digit=1))) == [(1, 1), (1, 7)]
        assert sorted(ids(Filters(true_label=7))) == [(1, 7), (7, 7)]
        assert sorted(ids(Filters(correctness="right"))) == [(1, 1), (7, 7)]
        assert ids(Filters(correctness="wrong")) == [(1, 7)]
        assert queries.count_predictions(session, Filters(correctness="wrong")) == 1
        first_page = queries.list_predictions(session, offset=0, limit=3)
        second_page = queries.list_predictions(session, offset=3, limit=3)
    assert len(first_page) == 3 and len(second_page) == 1
    assert {p.id for p in first_page}.isdisjoint({p.id for p in second_page})


def test_csv_export_lists_the_filtered_rows(database: Database) -> None:
    insert(database, row(predicted=4, label=9), row(predicted=5))
    with database.session() as session:
        text = queries.export_csv(session, Filters(correctness="wrong"))
    records = list(csv.DictReader(io.StringIO(text)))
    assert len(records) == 1
    assert records[0]["predicted_digit"] == "4"
    assert records[0]["true_label"] == "9"
    assert records[0]["correct"] == "0"


def test_csv_export_writes_utc_times_with_their_offset_newest_first(database: Database) -> None:
    when = datetime(2026, 3, 1, 20, 30, tzinfo=timezone.utc)
    first, second, later = insert(
        database,
        row(timestamp=when, drawing_key="a"),
        row(timestamp=when, drawing_key="b"),
        row(timestamp=when + timedelta(hours=1), drawing_key="c"),
    )
    with database.session() as session:
        far_from_utc(session)
        records = list(csv.DictReader(io.StringIO(queries.export_csv(session))))
    assert [int(record["id"]) for record in records] == [later, second, first]
    assert [record["timestamp"] for record in records] == [
        "2026-03-01T21:30:00+00:00", "2026-03-01T20:30:00+00:00", "2026-03-01T20:30:00+00:00",
    ]  # fmt: skip


def test_statistics(database: Database) -> None:
    insert(
        database,
        row(predicted=1, label=1, confidence=0.95),
        row(predicted=1, label=7, confidence=0.55),
        row(predicted=7, label=7, confidence=0.9),
        row(predicted=2),
    )
    with database.session() as session:
        stats = queries.compute_statistics(session)
    assert (stats.total, stats.labelled, stats.correct) == (4, 3, 2)
    assert stats.accuracy == pytest.approx(2 / 3)
    assert stats.accuracy_per_digit(1) == 1.0
    assert stats.accuracy_per_digit(7) == 0.5
    assert stats.accuracy_per_digit(5) is None
    assert stats.confusion[7][1] == 1 and stats.confusion[7][7] == 1
    assert stats.histogram_right == [0] * 9 + [2]
    assert stats.histogram_wrong == [0] * 5 + [1] + [0] * 4
    assert stats.labelled_per_digit(7) == 2
    assert stats.mean_confidence_right == pytest.approx(0.925)
    assert stats.mean_confidence_wrong == pytest.approx(0.55)
    assert [accuracy for _, accuracy in stats.timeline] == pytest.approx([1.0, 0.5, 2 / 3])
    assert all(stamp.tzinfo is not None for stamp, _ in stats.timeline)


def random_rows(count: int, seed: int = 7) -> list[dict[str, object]]:
    """Drawings over several UTC days (some in the same second), of three versions, labelled
    or not, shadowed by named, empty or missing candidates or by their own version, with
    confidences on the histogram's edges and between them."""
    rng = random.Random(seed)
    start = datetime(2026, 3, 1, 20, tzinfo=timezone.utc)
    rows = []
    for number in range(count):
        predicted = rng.randrange(10)
        confidence = rng.choice([0.0, 0.1, 0.3, 0.7, 0.9, 1.0, rng.random(), rng.random()])
        rows.append(
            row(
                predicted=predicted,
                label=rng.choice([None, predicted, rng.randrange(10)]),
                confidence=confidence,
                timestamp=start + timedelta(minutes=10 * rng.randrange(600)),
                model_version=rng.choice(["1.0", "2.0", "3.0"]),
                shadow_version=rng.choice([None, "", "2.0", "3.0", "4.0"]),
                shadow_digit=rng.choice([None, rng.randrange(10)]),
                drawing_key=f"random-{number}",
            )
        )
    return rows


def plain_statistics(rows: list[Prediction], points: int) -> Statistics:
    """What the statistics are, computed the plain way: every row in Python."""
    labelled = [p for p in rows if p.true_label is not None]
    right = [p for p in labelled if p.true_label == p.predicted_digit]
    wrong = [p for p in labelled if p.true_label != p.predicted_digit]
    confusion = [[0] * 10 for _ in range(10)]
    for p in labelled:
        confusion[p.true_label][p.predicted_digit] += 1
    by_version = grouped(rows, lambda p: p.model_version)
    shadowed = [
        p
        for p in rows
        if p.shadow_digit is not None and (p.shadow_version or "unknown") != p.model_version
    ]
    by_candidate = grouped(shadowed, lambda p: p.shadow_version or "unknown")
    return Statistics(
        total=len(rows),
        labelled=len(labelled),
        correct=len(right),
        confusion=confusion,
        timeline=plain_timeline(labelled)[-points:],
        histogram_right=histogram(right),
        histogram_wrong=histogram(wrong),
        mean_confidence_right=sum(p.confidence for p in right) / len(right),
        mean_confidence_wrong=sum(p.confidence for p in wrong) / len(wrong),
        versions={name: version_record(group) for name, group in by_version.items()},
        shadows={name: comparison(name, group) for name, group in by_candidate.items()},
    )


def grouped(
    rows: list[Prediction], key: Callable[[Prediction], str]
) -> dict[str, list[Prediction]]:
    """Rows by `key`, in the order each key first appears (its earliest time, then its name)."""
    groups: defaultdict[str, list[Prediction]] = defaultdict(list)
    for p in rows:
        groups[key(p)].append(p)
    first_seen = {name: min(p.timestamp_utc for p in group) for name, group in groups.items()}
    return {name: groups[name] for name in sorted(groups, key=lambda n: (first_seen[n], n))}


def tally(rows: list[Prediction], answer: Answer = lambda p: p.predicted_digit) -> Tally:
    labelled = [p for p in rows if p.true_label is not None]
    return Tally(len(labelled), sum(answer(p) == p.true_label for p in labelled))


def histogram(rows: list[Prediction]) -> list[int]:
    counts = [0] * 10
    for p in rows:
        counts[min(int(p.confidence * 10), 9)] += 1
    return counts


def version_record(rows: list[Prediction]) -> VersionRecord:
    days: defaultdict[date, list[Prediction]] = defaultdict(list)
    for p in rows:
        if p.true_label is not None:
            days[p.timestamp_utc.date()].append(p)
    return VersionRecord(len(rows), tally(rows), {day: tally(days[day]) for day in days})


def comparison(candidate: str, rows: list[Prediction]) -> ShadowComparison:
    def per_digit(answer: Answer) -> list[Tally]:
        return [tally([p for p in rows if p.true_label == d], answer) for d in range(10)]

    return ShadowComparison(
        candidate_version=candidate,
        shadowed=len(rows),
        disagreements=sum(p.predicted_digit != p.shadow_digit for p in rows),
        live=tally(rows),
        candidate=tally(rows, lambda p: p.shadow_digit),
        live_per_digit=per_digit(lambda p: p.predicted_digit),
        candidate_per_digit=per_digit(lambda p: p.shadow_digit),
    )


def plain_timeline(labelled: list[Prediction]) -> list[tuple[datetime, float]]:
    ordered = sorted(labelled, key=lambda p: (p.timestamp_utc, p.id))
    rights = [p.true_label == p.predicted_digit for p in ordered]
    timeline = []
    for end, p in enumerate(ordered, start=1):
        window = rights[max(0, end - ROLLING_WINDOW) : end]
        timeline.append((p.timestamp_utc, sum(window) / len(window)))
    return timeline


def test_statistics_equal_a_plain_computation_over_random_rows(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(queries, "TIMELINE_POINTS", 40)  # fewer than the labelled drawings
    with database.session() as session:
        session.execute(insert_many(Prediction), random_rows(300))
    with database.session() as session:
        far_from_utc(session)
        actual = queries.compute_statistics(session)
        expected = plain_statistics(list(session.exec(select(Prediction))), points=40)
    assert len(expected.versions) == 3 and len(expected.shadows) == 4  # "unknown" too
    assert list(actual.versions) == list(expected.versions)
    assert list(actual.shadows) == list(expected.shadows)
    assert actual.mean_confidence_right == pytest.approx(expected.mean_confidence_right)
    assert actual.mean_confidence_wrong == pytest.approx(expected.mean_confidence_wrong)
    means = {"mean_confidence_right": None, "mean_confidence_wrong": None}
    assert replace(actual, **means) == replace(expected, **means)


def test_the_timeline_holds_only_the_newest_labelled_drawings(database: Database) -> None:
    """However many there are; the oldest point shown still averages a full window."""
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    count = TIMELINE_POINTS + ROLLING_WINDOW + 30
    rows = [
        row(predicted=1, label=2 if number % 4 == 0 else 1, drawing_key=f"labelled-{number}",
            timestamp=start + timedelta(minutes=number))
        for number in range(count)
    ] + [row(drawing_key="unlabelled", timestamp=start + timedelta(minutes=count))]  # fmt: skip
    with database.session() as session:
        session.execute(insert_many(Prediction), rows)
    with database.session() as session:
        timeline = queries.compute_statistics(session).timeline
    assert len(timeline) == TIMELINE_POINTS
    assert timeline[0][0] == start + timedelta(minutes=count - TIMELINE_POINTS)
    assert timeline[-1][0] == start + timedelta(minutes=count - 1)
    assert {accuracy for _, accuracy in timeline} == {0.75}  # 5 wrong in every 20


def test_raw_sql_with_digit_11_is_refused_by_the_database_itself(database: Database) -> None:
    statement = text(
        "INSERT INTO predictions (timestamp, predicted_digit, confidence, image_data,"
        " model_version, latency_ms) VALUES (:stamp, 11, 0.5, :png, '1.0', 1.0)"
    )
    refused = pytest.raises(IntegrityError, match="ck_predictions_predicted_digit")
    with refused, database.engine.begin() as connection:
        connection.execute(statement, {"stamp": datetime.now(timezone.utc), "png": PNG})


def test_ids_come_from_a_serial_sequence(database: Database) -> None:
    ids = insert(database, row(), row(), row())
    assert ids == sorted(ids) and len(set(ids)) == 3
    (id_column,) = [
        c
        for c in inspect(database.engine).get_columns(Prediction.__tablename__)
        if c["name"] == "id"
    ]
    if database.engine.dialect.name == "postgresql":
        assert "nextval" in str(id_column["default"])


@pytest.mark.postgres
@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_the_app_starts_on_a_plain_postgresql_url(
    postgres_database: Database, scheme: str, tmp_path: Path
) -> None:
    """`postgresql://user@host/db`, as people write it, means the driver the project ships."""
    plain = make_url(postgres_database.url).set(drivername=scheme)
    url = plain.render_as_string(hide_password=False)
    assert url.startswith(f"{scheme}://")
    settings = load_settings({"DATABASE_URL": url, "MNIST_DATA_DIR": str(tmp_path)}, env_file=None)
    services = AppServices.from_settings(settings)
    try:
        assert services.store.ensure_schema()
        with services.database.session() as session:
            assert queries.count_predictions(session) == 0
    finally:
        services.database.dispose()
