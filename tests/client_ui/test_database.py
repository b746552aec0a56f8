"""The database layer against SQLite and a real PostgreSQL."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from client_ui import queries
from client_ui.database import Database
from client_ui.models import Prediction
from client_ui.queries import Filters
from client_ui.services import AppServices
from config import load_settings

PNG = b"\x89PNG\r\n\x1a\nnot really"


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
    assert sorted(stats.confidence_right) == [0.9, 0.95]
    assert stats.confidence_wrong == [0.55]
    assert stats.labelled_per_digit(7) == 2
    assert stats.mean_confidence_wrong == pytest.approx(0.55)
    assert [accuracy for _, accuracy in stats.timeline] == pytest.approx([1.0, 0.5, 2 / 3])
    assert all(stamp.tzinfo is not None for stamp, _ in stats.timeline)


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
