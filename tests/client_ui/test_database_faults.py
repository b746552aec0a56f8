"""Database outages with a real PostgreSQL of the test's own: refused (stopped) and hung.

A hung server is the nasty case: SIGSTOP on the postmaster and its backends leaves the kernel
accepting connections and acknowledging requests while nothing answers. Each test prints its
figures (`-s` or `-rA` shows them); docs/app.md quotes them.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from nicegui.testing.user import User
from sqlalchemy.engine import make_url

from client_ui import queries
from client_ui.database import Database
from client_ui.draw import PENDING_TEXT
from client_ui.models import utc_now
from client_ui.outbox import Outbox, PredictionDraft
from client_ui.services import AppServices
from client_ui.store import PredictionStore, SaveOutcome
from tests.client_ui.conftest import FakeModelClient, digit_png
from tests.client_ui.test_pages import eventually, stroke
from tests.fixtures.database import PostgresServer, PrivatePostgres

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

TIMEOUT_S = 2.0
#: A save waits for the drawing's earlier write, then for its own: twice the limit, plus slack.
ANSWER_BOUND_S = 2 * TIMEOUT_S + 1.5
RECOVERY_BOUND_S = 60.0
TABS = 3
DRAWINGS_BEFORE = 3
DRAWINGS_PER_TAB = 2


@pytest.fixture
def private_database(private_postgres: PrivatePostgres) -> Iterator[Database]:
    """A fresh database with its tables on the private server; the server is up again after."""
    server = PostgresServer(make_url(private_postgres.url))
    name = server.new_name()
    database = Database(server.create(name), timeout_s=TIMEOUT_S)
    database.migrate()
    try:
        yield database
    finally:
        database.dispose()
        private_postgres.resume()
        _start_if_stopped(private_postgres)
        server.drop(name)


def _start_if_stopped(server: PrivatePostgres) -> None:
    if not (server.data / "postmaster.pid").exists():
        server.start()


def draft(key: str, predicted: int) -> PredictionDraft:
    return PredictionDraft(
        key=key,
        timestamp=utc_now(),
        predicted_digit=predicted,
        confidence=0.8,
        image_data=f"png of {key}".encode(),
        model_version="1.0",
        latency_ms=5.0,
    )


def stored_rows(database: Database) -> Counter[tuple[bytes, int, int | None]]:
    rows = database.call(lambda session: queries.list_predictions(session, limit=1000))
    return Counter((row.image_data, row.predicted_digit, row.true_label) for row in rows)


def await_empty_outbox(store: PredictionStore, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while store.pending_count() and time.monotonic() < deadline:
        store.flush()
        time.sleep(0.2)


class Tab(threading.Thread):
    """One browser tab's saves during the outage: relabel an old drawing, then new drawings."""

    def __init__(self, store: PredictionStore, index: int, old: PredictionDraft) -> None:
        super().__init__(daemon=True)
        self.store = store
        self.index = index
        self.old = old
        self.answers: list[tuple[SaveOutcome, float]] = []
        self.final: list[PredictionDraft] = []

    def save(self, draft: PredictionDraft) -> None:
        started = time.monotonic()
        outcome = self.store.save(draft)
        self.answers.append((outcome, time.monotonic() - started))

    def run(self) -> None:
        relabelled = replace(self.old, true_label=self.old.predicted_digit)
        self.save(relabelled)
        self.final.append(relabelled)
        for number in range(DRAWINGS_PER_TAB):
            new = draft(f"t{self.index}n{number}", predicted=(self.index + number) % 10)
            self.save(new)
            labelled = replace(new, true_label=(new.predicted_digit + 1) % 10)
            self.save(labelled)
            self.final.append(labelled)


@pytest.mark.parametrize("fault", ["refused", "hung"])
def test_every_drawing_and_label_is_stored_once_through_an_outage(
    private_postgres: PrivatePostgres, private_database: Database, tmp_path: Path, fault: str
) -> None:
    store = PredictionStore(private_database, Outbox(tmp_path / "outbox"))
    before = [draft(f"b{number}", predicted=number) for number in range(DRAWINGS_BEFORE)]
    for old in before:
        store.save(old)
    await_empty_outbox(store, RECOVERY_BOUND_S)  # setup on a busy machine may need a retry
    assert store.pending_count() == 0

    if fault == "hung":
        private_postgres.hang()
    else:
        private_postgres.stop()
    tabs = [Tab(store, index, before[index % DRAWINGS_BEFORE]) for index in range(TABS)]
    started = time.monotonic()
    for tab in tabs:
        tab.start()
    expected_saves = 1 + 2 * DRAWINGS_PER_TAB
    for tab in tabs:
        tab.join(timeout=ANSWER_BOUND_S * expected_saves - (time.monotonic() - started))
    answers = [answer for tab in tabs for answer in tab.answers]
    unanswered = TABS * expected_saves - len(answers)
    slowest = max((seconds for _, seconds in answers), default=float("nan"))

    recovered = time.monotonic()
    if fault == "hung":
        private_postgres.resume()
    else:
        private_postgres.start()
    for tab in tabs:
        tab.join(timeout=RECOVERY_BOUND_S)
    await_empty_outbox(store, RECOVERY_BOUND_S)
    recovery_s = time.monotonic() - recovered

    final = {state.key: state for state in before}
    for tab in tabs:
        final.update({state.key: state for state in tab.final})
    expected = Counter(
        (state.image_data, state.predicted_digit, state.true_label) for state in final.values()
    )
    actual = stored_rows(private_database)
    lost = sum((expected - actual).values())
    duplicates = sum(count - 1 for count in actual.values() if count > 1)
    outcomes = Counter(outcome.value for outcome, _ in answers)
    print(
        f"\nPostgreSQL {fault}: {len(answers) + unanswered} saves sent during the outage by "
        f"{TABS} tabs, {unanswered} unanswered, outcomes {dict(outcomes)}, slowest answer "
        f"{slowest:.2f} s (bound {ANSWER_BOUND_S:.1f} s); after recovery: rows lost {lost}, "
        f"duplicates {duplicates}, wrong rows {sum((actual - expected).values())}, outbox "
        f"drained in {recovery_s:.2f} s"
    )
    assert unanswered == 0, "saves still waiting on the database"
    assert slowest <= ANSWER_BOUND_S
    assert set(outcomes) == {SaveOutcome.PENDING.value}
    assert store.pending_count() == 0
    assert actual == expected


@pytest.fixture
def services(
    private_database: Database, fake_client: FakeModelClient, tmp_path: Path
) -> AppServices:
    """The app's services on the private server (the model is not what is tested here)."""
    store = PredictionStore(private_database, Outbox(tmp_path / "outbox"))
    return AppServices(database=private_database, store=store, model_client=fake_client)


async def timed(check: Callable[[], bool], seconds: float) -> float:
    started = time.monotonic()
    await eventually(check, seconds)
    return time.monotonic() - started


def shows(user: User, text: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return bool(user.find(text).elements)
        except AssertionError:
            return False

    return check


async def test_pages_say_the_database_is_down_while_it_hangs_and_the_save_arrives_later(
    user: User, services: AppServices, private_postgres: PrivatePostgres
) -> None:
    private_postgres.hang()
    await user.open("/history")
    history_s = await timed(shows(user, "The database is unreachable"), 2 * TIMEOUT_S + 1)
    await user.open("/statistics")
    statistics_s = await timed(shows(user, "The database is unreachable"), 2 * TIMEOUT_S + 1)
    await user.open("/")
    stroke(user, digit_png())
    await user.should_see("90.0%", marker="confidence")
    pending_s = await timed(shows(user, PENDING_TEXT), ANSWER_BOUND_S)
    user.find(marker="label-3").click()

    private_postgres.resume()
    resumed = time.monotonic()
    await eventually(lambda: services.store.flush() >= 0 and not services.store.pending_count(), 30)
    await eventually(shows(user, "Saved as #1, true label 3."), 10)
    print(
        f"\nPostgreSQL hung, pages: /history said so after {history_s:.2f} s, /statistics after "
        f"{statistics_s:.2f} s, 'not saved yet' after {pending_s:.2f} s; saved "
        f"{time.monotonic() - resumed:.2f} s after the database was back"
    )
    rows = stored_rows(services.database)
    assert list(rows.values()) == [1] and next(iter(rows))[1:] == (3, 3)
