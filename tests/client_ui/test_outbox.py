"""A database outage never loses a drawing: it waits in the outbox and is saved later.

The outage is real: the database does not exist yet (PostgreSQL) or its directory is missing
(SQLite); it "comes back" when the test creates it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from client_ui import queries
from client_ui.database import Database
from client_ui.models import utc_now
from client_ui.outbox import Outbox, PredictionDraft
from client_ui.store import PredictionStore, SaveOutcome
from tests.fixtures.database import PostgresServer

PNG = b"\x89PNG\r\n\x1a\nfake"


def draft(key: str = "a1", predicted: int = 4) -> PredictionDraft:
    return PredictionDraft(
        key=key,
        timestamp=utc_now(),
        predicted_digit=predicted,
        confidence=0.7,
        image_data=PNG,
        model_version="1.0",
        latency_ms=5.0,
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def outage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Database, Callable]]:
    """A database that is down until the returned `bring_back()` is called."""
    if request.param == "sqlite":
        directory = tmp_path / "not-yet"
        database = Database(f"sqlite:///{directory / 'predictions.db'}")
        yield database, lambda: directory.mkdir()
    else:
        server: PostgresServer = request.getfixturevalue("postgres_server")
        name = server.new_name()
        database = Database(server.url_for(name))
        try:
            yield database, lambda: server.create(name)
        finally:
            database.dispose()
            server.drop(name)
    database.dispose()


def rows(database: Database) -> list[tuple[int, int | None]]:
    with database.session() as session:
        return [(p.predicted_digit, p.true_label) for p in queries.list_predictions(session)]


def test_drawings_wait_in_the_outbox_and_are_saved_when_the_database_is_back(
    outage: tuple[Database, Callable], tmp_path: Path
) -> None:
    database, bring_back = outage
    store = PredictionStore(database, Outbox(tmp_path / "outbox"))
    assert not store.ensure_schema()

    first = draft("a1", predicted=4)
    assert store.save(first) is SaveOutcome.PENDING
    # the label joins the pending draft
    assert store.save(replace(first, true_label=9)) is SaveOutcome.PENDING
    assert store.save(draft("b2", predicted=2)) is SaveOutcome.PENDING
    assert store.is_pending("a1") and store.pending_count() == 2
    assert store.flush() == 0

    bring_back()
    assert store.flush() == 2
    assert store.pending_count() == 0 and not store.is_pending("a1")
    assert sorted(rows(database)) == [(2, None), (4, 9)]


def test_the_outbox_survives_a_restart_of_the_app(
    outage: tuple[Database, Callable], tmp_path: Path
) -> None:
    database, bring_back = outage
    store = PredictionStore(database, Outbox(tmp_path / "outbox"))
    assert store.save(draft()) is SaveOutcome.PENDING

    bring_back()
    restarted = PredictionStore(database, Outbox(tmp_path / "outbox"))
    assert restarted.flush() == 1
    assert rows(database) == [(4, None)]


def test_later_saves_of_a_drawing_update_its_row(sqlite_database: Database, tmp_path: Path) -> None:
    store = PredictionStore(sqlite_database, Outbox(tmp_path / "outbox"))
    first = draft("c3", predicted=1)
    assert store.save(first) is SaveOutcome.SAVED
    assert store.save(replace(first, predicted_digit=7, true_label=7)) is SaveOutcome.SAVED
    assert rows(sqlite_database) == [(7, 7)]
    assert store.row_id("c3") is not None
    assert store.pending_count() == 0


def test_a_later_save_without_a_label_keeps_a_label_given_on_history(
    sqlite_database: Database, tmp_path: Path
) -> None:
    """The candidate's late answer, or another stroke, about a drawing labelled meanwhile on
    the History page of another tab."""
    store = PredictionStore(sqlite_database, Outbox(tmp_path / "outbox"))
    first = draft("h1", predicted=1)
    assert store.save(first) is SaveOutcome.SAVED
    with sqlite_database.session() as session:
        [listed] = queries.list_predictions(session)
        assert queries.set_true_label(session, listed, 7)
    assert store.save(replace(first, shadow_version="2.1", shadow_digit=7)) is SaveOutcome.SAVED
    assert rows(sqlite_database) == [(1, 7)]
    assert store.save(replace(first, true_label=1)) is SaveOutcome.SAVED
    assert rows(sqlite_database) == [(1, 1)]


def test_an_app_killed_after_the_database_took_a_row_updates_it_on_restart(
    database: Database, tmp_path: Path
) -> None:
    """The database took the drawing's row, but the app died before it removed the outbox
    file (the file still has no row id): the restarted app finds the row by the drawing's key."""
    outbox = Outbox(tmp_path / "outbox")
    first = draft("d4", predicted=2)
    assert PredictionStore(database, outbox).save(first) is SaveOutcome.SAVED
    outbox.put(replace(first, true_label=2), row_id=None)  # what the killed app left behind
    restarted = PredictionStore(database, outbox)
    assert restarted.flush() == 1
    assert rows(database) == [(2, 2)]


def delete_row(database: Database, row_id: int) -> None:
    with database.session() as session:
        assert queries.delete_prediction(session, queries.get_prediction(session, row_id))


def test_a_deleted_drawing_is_not_saved_again(database: Database, tmp_path: Path) -> None:
    store = PredictionStore(database, Outbox(tmp_path / "outbox"))
    kept, deleted = draft("k1", predicted=2), draft("d1", predicted=5)
    assert store.save(kept) is SaveOutcome.SAVED
    assert store.save(deleted) is SaveOutcome.SAVED
    row_id = store.row_id("d1")
    assert row_id is not None
    delete_row(database, row_id)

    assert store.save(replace(deleted, true_label=5)) is SaveOutcome.DELETED
    assert store.save(replace(deleted, predicted_digit=6)) is SaveOutcome.DELETED
    assert store.is_deleted("d1") and not store.is_deleted("k1")
    assert store.save(replace(kept, true_label=2)) is SaveOutcome.SAVED
    assert rows(database) == [(2, 2)]


def test_a_pending_change_to_a_drawing_deleted_meanwhile_is_dropped(
    database: Database, tmp_path: Path
) -> None:
    """The app restarts with a labelled drawing in its outbox; its row was deleted meanwhile."""
    first = PredictionStore(database, Outbox(tmp_path / "outbox"))
    assert first.save(draft("p1", predicted=3)) is SaveOutcome.SAVED
    row_id = first.row_id("p1")
    assert row_id is not None
    Outbox(tmp_path / "outbox").put(replace(draft("p1", predicted=3), true_label=3), row_id)
    delete_row(database, row_id)

    restarted = PredictionStore(database, Outbox(tmp_path / "outbox"))
    assert restarted.pending_count() == 1
    assert restarted.flush() == 0
    assert restarted.pending_count() == 0 and restarted.is_deleted("p1")
    assert rows(database) == []


def test_a_label_waiting_in_the_outbox_is_kept_by_a_later_save_without_one(
    outage: tuple[Database, Callable], tmp_path: Path
) -> None:
    """The candidate's answer, saved without the label, while the labelled state still waits."""
    database, bring_back = outage
    store = PredictionStore(database, Outbox(tmp_path / "outbox"))
    labelled = replace(draft("w1", predicted=2), true_label=2)
    assert store.save(labelled) is SaveOutcome.PENDING
    assert store.save(replace(labelled, true_label=None, shadow_digit=5)) is SaveOutcome.PENDING
    bring_back()
    assert store.flush() == 1
    with database.session() as session:
        [row] = queries.list_predictions(session)
    assert (row.true_label, row.shadow_digit) == (2, 5)


def test_an_unreadable_entry_is_set_aside_and_holds_up_no_other(
    sqlite_database: Database, tmp_path: Path
) -> None:
    outbox = Outbox(tmp_path / "outbox")
    outbox.put(draft("a1", predicted=1), None)
    (tmp_path / "outbox" / "b2.json").write_text("")  # cut short by a power cut
    store = PredictionStore(sqlite_database, outbox)
    assert store.flush() == 1
    assert rows(sqlite_database) == [(1, None)]
    assert (tmp_path / "outbox" / "b2.unreadable").exists() and store.pending_count() == 0


def test_a_drawing_the_database_refuses_holds_up_no_other(
    database: Database, tmp_path: Path
) -> None:
    outbox = Outbox(tmp_path / "outbox")
    outbox.put(draft("a1", predicted=11), None)  # older, and out of the CHECK's range
    outbox.put(draft("b2", predicted=2), None)
    store = PredictionStore(database, outbox)
    assert store.flush() == 1
    assert rows(database) == [(2, None)]
    assert store.is_pending("a1") and not store.is_pending("b2")


def test_a_migration_that_fails_is_tried_once_a_round_not_once_a_drawing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = Database(f"sqlite:///{tmp_path / 'new.db'}")
    tries: list[int] = []

    def failing() -> None:
        tries.append(1)
        raise RuntimeError("a migration with a bug")

    monkeypatch.setattr(database, "migrate", failing)
    outbox = Outbox(tmp_path / "outbox")
    for key in ("a1", "b2", "c3"):
        outbox.put(draft(key), None)
    store = PredictionStore(database, outbox)
    assert store.flush() == 0 and store.flush() == 0
    assert len(tries) == 2 and store.pending_count() == 3
    database.dispose()


def test_outbox_rejects_keys_that_are_not_plain_ids(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a drawing key"):
        Outbox(tmp_path).put(draft(key="../escape"), None)
