"""Alembic migrations on SQLite and PostgreSQL: a database made before migrations upgrades in
place with its rows, a new one gets the newest schema, and that schema is the model's."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import (
    CheckConstraint,
    Column,
    DateTime,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    create_engine,
    inspect,
    text,
)  # fmt: skip
from sqlalchemy.exc import IntegrityError
from sqlmodel import SQLModel

from client_ui.database import Database
from tests.fixtures.database import PostgresServer


def table_before_migrations(metadata: MetaData) -> Table:
    """`predictions` as the app's `create_all` made it before it had migrations."""
    return Table(
        "predictions",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("timestamp", DateTime(timezone=True), nullable=False, index=True),
        Column("predicted_digit", Integer, nullable=False),
        Column("confidence", Float, nullable=False),
        Column("true_label", Integer),
        Column("image_data", LargeBinary, nullable=False),
        Column("model_version", String, nullable=False),
        Column("latency_ms", Float, nullable=False),
        CheckConstraint("predicted_digit BETWEEN 0 AND 9", name="ck_predictions_predicted_digit"),
        CheckConstraint("confidence >= 0 AND confidence <= 1", name="ck_predictions_confidence"),
        CheckConstraint(
            "true_label IS NULL OR true_label BETWEEN 0 AND 9", name="ck_predictions_true_label"
        ),
        CheckConstraint("latency_ms >= 0", name="ck_predictions_latency_ms"),
    )


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def empty_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = server.new_name()
    yield server.create(name)
    server.drop(name)


def schema_differences(url: str) -> list:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return compare_metadata(MigrationContext.configure(connection), SQLModel.metadata)
    finally:
        engine.dispose()


def test_a_database_from_before_migrations_upgrades_in_place(empty_url: str) -> None:
    engine = create_engine(empty_url)
    old = table_before_migrations(MetaData())
    old.metadata.create_all(engine)
    stamp = datetime(2026, 12, 1, tzinfo=timezone.utc)
    row = {"timestamp": stamp, "predicted_digit": 3, "confidence": 0.9, "true_label": 5,
           "image_data": b"png", "model_version": "1.0", "latency_ms": 4.0}  # fmt: skip
    with engine.begin() as connection:
        connection.execute(old.insert(), row)
    engine.dispose()

    database = Database(empty_url)
    database.migrate()
    with database.engine.connect() as connection:
        kept = connection.execute(text("SELECT * FROM predictions")).mappings().one()
        version = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    database.dispose()
    assert {key: kept[key] for key in ("predicted_digit", "true_label", "model_version")} == {
        "predicted_digit": 3, "true_label": 5, "model_version": "1.0",
    }  # fmt: skip
    assert kept["shadow_version"] is None and kept["shadow_digit"] is None
    assert version == "0003"
    assert schema_differences(empty_url) == []


def test_a_new_database_gets_the_models_schema_and_migrating_twice_changes_nothing(
    empty_url: str,
) -> None:
    database = Database(empty_url)
    database.migrate()
    database.migrate()
    columns = {c["name"] for c in inspect(database.engine).get_columns("predictions")}
    database.dispose()
    assert {"shadow_version", "shadow_digit", "shadow_confidence"} <= columns
    assert schema_differences(empty_url) == []


def test_the_database_refuses_a_shadow_digit_out_of_range(empty_url: str) -> None:
    database = Database(empty_url)
    database.migrate()
    bad = text(
        "INSERT INTO predictions (timestamp, predicted_digit, confidence, image_data, "
        "model_version, latency_ms, shadow_digit) VALUES (:t, 1, 0.5, :i, '1', 1, 11)"
    )
    refused = pytest.raises(IntegrityError, match=r"ck_predictions_shadow_digit|CHECK")
    with refused, database.engine.begin() as connection:
        connection.execute(bad, {"t": datetime.now(timezone.utc), "i": b"x"})
    database.dispose()
