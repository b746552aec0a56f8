"""Alembic migrations on SQLite and PostgreSQL: a database made before migrations upgrades in
place with its rows, a new one gets the newest schema, and that schema is the model's; a
migration is all or nothing, and migrations started together take turns."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.operations import Operations
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
from sqlalchemy.exc import IntegrityError, OperationalError
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
    assert version == "0004"
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


def test_a_migration_that_fails_halfway_is_undone_and_the_next_try_completes(
    empty_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last migration adds a column, then an index: the index fails, as on a locked
    database. Nothing of the upgrade may stay, or every later try would fail for good."""
    create_index = Operations.create_index

    def refused_for_the_drawing_key(self: Operations, name: str, *args, **kwargs) -> None:
        if "drawing_key" in name:
            raise OperationalError("CREATE INDEX", {}, Exception("database is locked"))
        create_index(self, name, *args, **kwargs)

    database = Database(empty_url)
    with monkeypatch.context() as patched:
        patched.setattr(Operations, "create_index", refused_for_the_drawing_key)
        with pytest.raises(OperationalError, match="database is locked"):
            database.migrate()
    assert inspect(database.engine).get_table_names() == []
    database.migrate()
    database.dispose()
    assert schema_differences(empty_url) == []


def test_migrations_started_together_in_one_process_take_turns(empty_url: str) -> None:
    database = Database(empty_url, timeout_s=10)
    with ThreadPoolExecutor(4) as threads:
        for migrated in [threads.submit(database.migrate) for _ in range(4)]:
            migrated.result()
    database.dispose()
    assert schema_differences(empty_url) == []


@pytest.mark.postgres
def test_two_apps_starting_together_on_one_postgresql_both_migrate(
    postgres_server: PostgresServer,
) -> None:
    """Two replicas of the app: each process migrates at start, at the same moment."""
    name = postgres_server.new_name()
    url = postgres_server.create(name)
    at = str(time.time() + 5)
    script = (
        "import sys, time; from client_ui.database import Database; "
        "database = Database(sys.argv[1]); time.sleep(max(0, float(sys.argv[2]) - time.time())); "
        "database.migrate()"
    )
    root = Path(__file__).resolve().parents[2]
    apps = [
        subprocess.Popen([sys.executable, "-c", script, url, at], cwd=root, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    try:
        errors = [app.communicate(timeout=60)[1].decode() for app in apps]
        assert [app.returncode for app in apps] == [0, 0], errors
        assert schema_differences(url) == []
    finally:
        postgres_server.drop(name)
