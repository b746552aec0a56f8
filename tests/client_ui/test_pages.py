"""Page flows with NiceGUI's simulated user and a fake model client (no browser)."""

from __future__ import annotations

import asyncio
import csv
import io
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from nicegui import Client, ui
from nicegui.testing.user import User
from nicegui.testing.user_simulation import user_simulation
from sqlalchemy.exc import ProgrammingError

from client_ui import draw, history, layout, main, queries, statistics
from client_ui.canvas import DrawingCanvas, Snapshot
from client_ui.database import Database
from client_ui.draw import DELETED_TEXT, DOT_HINT, LABEL_WAITS_TEXT, PENDING_TEXT
from client_ui.history import GONE_TEXT
from client_ui.images import data_url, model_view_png
from client_ui.models import utc_now
from client_ui.outbox import Outbox, PredictionDraft
from client_ui.services import STATUS_TIMEOUT_S, AppServices
from client_ui.store import PredictionStore, SaveOutcome
from serving.client import TorchServeClient
from tests.client_ui.conftest import FakeModelClient, digit_png

# A change goes to the database on its threads and the page reloads after it: on a loaded
# machine that takes longer than should_see's default three tries of 0.1 s.
DATABASE_RETRIES = 30


def stroke(user: User, png: bytes | None = None, strokes: int = 1) -> None:
    """What canvas.js emits when a stroke ends."""
    snapshot = {"strokes": strokes, "png": data_url(png) if png else None}
    user.find(DrawingCanvas).trigger("stroke", snapshot)


async def eventually(condition: Callable[[], bool], seconds: float = 5) -> None:
    for _ in range(int(seconds / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


def stored(database: Database) -> list[tuple[int, int | None, bytes]]:
    with database.session() as session:
        return [
            (p.predicted_digit, p.true_label, p.image_data)
            for p in queries.list_predictions(session)
        ]


async def test_a_stroke_shows_the_prediction_and_saves_it(
    user: User, services: AppServices, fake_client: FakeModelClient
) -> None:
    await user.open("/")
    png = digit_png()
    stroke(user, png)
    await user.should_see("90.0%", marker="confidence")
    digit = user.find(marker="predicted-digit").elements.pop()
    assert digit.text == "3"
    assert fake_client.requests == [png]
    await user.should_see("Saved as #1")
    model_view = user.find(marker="model-view").elements.pop()
    assert model_view.source.startswith("data:image/png;base64,")
    assert stored(services.database) == [(3, None, png)]


async def test_clicking_a_label_confirms_it_and_more_strokes_keep_it_on_the_same_row(
    user: User, services: AppServices, fake_client: FakeModelClient
) -> None:
    await user.open("/")
    stroke(user, digit_png())
    await user.should_see("Saved as #1")
    user.find(marker="label-8").click()
    await user.should_see("true label 8")
    assert [(d, label) for d, label, _ in stored(services.database)] == [(3, 8)]

    fake_client.digit = 5
    stroke(user, digit_png(), strokes=2)
    await eventually(lambda: [(d, lbl) for d, lbl, _ in stored(services.database)] == [(5, 8)])
    await user.should_see("Saved as #1, true label 8.")  # the label stays with the drawing


async def test_a_label_clicked_while_the_answer_is_being_saved_is_kept(
    user: User, services: AppServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer shows before "what the model saw" is drawn and the row is saved: a label
    clicked in between must not be overwritten by that save."""

    def slow_model_view(png: bytes) -> bytes:
        time.sleep(0.5)
        return model_view_png(png)

    monkeypatch.setattr(draw, "model_view_png", slow_model_view)
    await user.open("/")
    stroke(user, digit_png())
    await eventually(lambda: user.find(marker="predicted-digit").elements.pop().text == "3")
    user.find(marker="label-3").click()
    await asyncio.sleep(1.5)  # the answer's own save has landed by now
    assert stored(services.database) == [(3, 3, digit_png())]
    await user.should_see("Saved as #1, true label 3.")


async def test_a_drawing_deleted_in_history_is_not_brought_back_by_a_label(
    user: User, services: AppServices
) -> None:
    await user.open("/")
    stroke(user, digit_png())
    await user.should_see("Saved as #1")
    with services.database.session() as session:  # another tab's History page deletes it
        assert queries.delete_prediction(session, queries.get_prediction(session, 1))

    user.find(marker="label-3").click()
    await user.should_see(DELETED_TEXT, marker="save-status")
    stroke(user, digit_png(), strokes=2)
    await user.should_see("Keep drawing")
    await user.should_see(DELETED_TEXT, marker="save-status")
    assert stored(services.database) == []

    user.find(marker="clear-button").click()
    stroke(user, digit_png())
    await user.should_see("Saved as #")
    assert [(d, label) for d, label, _ in stored(services.database)] == [(3, None)]


async def test_while_the_server_is_down_no_old_answer_shows_and_a_label_waits_for_it(
    user: User, services: AppServices, fake_client: FakeModelClient
) -> None:
    await user.open("/")
    stroke(user, digit_png())
    await user.should_see("Saved as #1")
    fake_client.down = True
    stroke(user, digit_png(270), strokes=2)
    await user.should_see(marker="server-banner")
    assert user.find(marker="predicted-digit").elements.pop().text == "–"  # not the older 3
    user.find(marker="label-7").click()
    await user.should_see(LABEL_WAITS_TEXT.format(digit=7))
    assert stored(services.database) == [(3, None, digit_png())]  # no label on the old image

    fake_client.down = False
    user.find(marker="retry-button").click()
    await eventually(lambda: stored(services.database) == [(3, 7, digit_png(270))])


async def test_a_label_given_before_the_first_answer_is_saved_with_it(
    user: User, services: AppServices, fake_client: FakeModelClient
) -> None:
    fake_client.down = True
    await user.open("/")
    stroke(user, digit_png())
    await user.should_see(marker="server-banner")
    user.find(marker="label-3").click()
    await user.should_see(LABEL_WAITS_TEXT.format(digit=3))
    fake_client.down = False
    user.find(marker="retry-button").click()
    await eventually(lambda: stored(services.database) == [(3, 3, digit_png())])


async def test_a_deleted_drawing_never_overwrites_the_drawing_that_reuses_its_id(
    user: User, services: AppServices
) -> None:
    """SQLite gives the next row the id of the newest row deleted."""
    await user.open("/")
    stroke(user, digit_png())
    await user.should_see("Saved as #1")
    with services.database.session() as session:  # another tab deletes it, a third draws
        assert queries.delete_prediction(session, queries.get_prediction(session, 1))
        other = {"timestamp": utc_now(), "predicted_digit": 0, "confidence": 0.9,
                 "image_data": b"another drawing", "model_version": "1.0", "latency_ms": 5.0,
                 "drawing_key": "another tab's"}  # fmt: skip
        reused = queries.insert_prediction(session, other)

    user.find(marker="label-3").click()
    await user.should_see(DELETED_TEXT, marker="save-status")
    assert stored(services.database) == [(0, None, b"another drawing")]
    assert reused == 1


async def test_a_dot_is_not_sent_and_the_page_says_why(
    user: User, services: AppServices, fake_client: FakeModelClient
) -> None:
    await user.open("/")
    canvas = user.find(DrawingCanvas)
    canvas.trigger("stroke", {"strokes": 1, "png": data_url(digit_png()), "extent": 1.0})
    await user.should_see(DOT_HINT)
    assert fake_client.requests == [] and stored(services.database) == []
    canvas.trigger("stroke", {"strokes": 2, "png": data_url(digit_png()), "extent": 6.5})
    await user.should_see("Saved as #1")


async def test_an_empty_canvas_gives_a_hint_and_no_request(
    user: User, fake_client: FakeModelClient
) -> None:
    await user.open("/")
    stroke(user, None, strokes=0)
    await user.should_see("The canvas is empty")
    user.find(marker="label-2").click()
    await user.should_see("Draw a digit first")
    assert fake_client.requests == []


async def test_model_server_down_shows_a_banner_and_retry_works_when_it_is_back(
    user: User, services: AppServices, fake_client: FakeModelClient
) -> None:
    await user.open("/")
    fake_client.down = True
    png = digit_png()
    stroke(user, png)
    await user.should_see(marker="server-banner")
    await user.should_see("The model server is not reachable.")
    assert stored(services.database) == []

    fake_client.down = False
    user.find(marker="retry-button").click()
    await user.should_see("Saved as #1")
    await user.should_not_see(marker="server-banner")
    assert fake_client.requests == [png]


async def test_database_down_keeps_the_prediction_and_saves_it_later(
    user: User, tmp_path: Path, fake_client: FakeModelClient, services: AppServices
) -> None:
    missing = tmp_path / "db-comes-later"
    down = Database(f"sqlite:///{missing / 'predictions.db'}")
    services.database = down
    services.store = PredictionStore(down, Outbox(tmp_path / "pending"))
    await user.open("/")
    stroke(user, digit_png())
    await user.should_see("90.0%", marker="confidence")
    await user.should_see(PENDING_TEXT)
    user.find(marker="label-3").click()
    await user.should_see(PENDING_TEXT)

    missing.mkdir()
    assert services.store.flush() == 1
    await user.should_see("Saved as #1, true label 3.", retries=40)
    assert [(d, label) for d, label, _ in stored(down)] == [(3, 3)]
    down.dispose()


async def test_undo_predicts_again_or_hints_when_nothing_is_left(
    user: User, fake_client: FakeModelClient
) -> None:
    left: list[dict] = [{"strokes": 1, "png": data_url(digit_png())}, {"strokes": 0, "png": None}]
    user.javascript_rules[re.compile(r'return runMethod\(\d+, "undo"')] = lambda _: left.pop(0)
    await user.open("/")
    stroke(user, digit_png(), strokes=2)
    await user.should_see("Saved as #1")
    user.find(marker="undo-button").click()
    await eventually(lambda: len(fake_client.requests) == 2)
    await user.should_see("Saved as #1")
    user.find(marker="undo-button").click()
    await user.should_see("The canvas is empty")
    assert len(fake_client.requests) == 2


async def test_the_stroke_width_slider_reaches_the_canvas(user: User) -> None:
    await user.open("/")
    user.find(marker="stroke-width").elements.pop().set_value(30)
    assert user.find(DrawingCanvas).elements.pop().props["strokeWidth"] == 30


async def test_an_answer_for_a_drawing_cleared_meanwhile_is_dropped(
    user: User, services: AppServices, fake_client: FakeModelClient
) -> None:
    fake_client.delay_s = 0.3
    await user.open("/")
    stroke(user, digit_png())
    await eventually(lambda: len(fake_client.requests) == 1)
    user.find(marker="clear-button").click()
    await asyncio.sleep(0.6)
    assert stored(services.database) == []
    assert user.find(marker="predicted-digit").elements.pop().text == "–"
    assert user.find(marker="model-view").elements.pop().source == ""
    assert user.find(marker="save-status").elements.pop().text == ""


async def test_clear_resets_the_page(user: User, fake_client: FakeModelClient) -> None:
    await user.open("/")
    stroke(user, digit_png())
    await user.should_see("90.0%", marker="confidence")
    user.find(marker="clear-button").click()
    await user.should_not_see("90.0%")
    assert user.find(marker="predicted-digit").elements.pop().text == "–"


def add_rows(database: Database, rows: list[tuple[int, int | None]]) -> None:
    with database.session() as session:
        for predicted, label in rows:
            queries.insert_prediction(
                session,
                {
                    "predicted_digit": predicted,
                    "true_label": label,
                    "confidence": 0.75,
                    "image_data": digit_png(28),
                    "model_version": "1.0",
                    "latency_ms": 3.0,
                    "drawing_key": uuid.uuid4().hex,
                },
            )


async def test_history_filters_relabels_deletes_and_exports(
    user: User, services: AppServices
) -> None:
    add_rows(services.database, [(1, 1), (1, 7), (4, None)])
    await user.open("/history")
    await user.should_see("3 drawings")
    correctness = user.find(marker="filter-correct").elements.pop()
    correctness.set_value("wrong")
    await user.should_see("· 1 drawing")
    await user.should_see(marker="row-2")
    await user.should_not_see(marker="row-1")

    relabel = user.find(marker="relabel-2").elements.pop()
    relabel.set_value(1)
    await user.should_see("No drawings match.", retries=DATABASE_RETRIES)
    with services.database.session() as session:
        assert queries.get_prediction(session, 2).true_label == 1  # type: ignore[union-attr]

    correctness.set_value("any")
    await user.should_see("3 drawings", retries=DATABASE_RETRIES)
    user.find(marker="delete-3").click()
    await user.should_see("cannot be undone")
    user.find("Cancel").click()
    await user.should_not_see("cannot be undone")
    assert len(stored(services.database)) == 3
    user.find(marker="delete-3").click()
    await user.should_see(marker="confirm-delete")
    user.find(marker="confirm-delete").click()
    await user.should_see("2 drawings", retries=DATABASE_RETRIES)

    user.find(marker="export-csv").click()
    await user.download.next()
    records = list(csv.DictReader(io.StringIO(user.download.http_responses[-1].text)))
    assert sorted(r["id"] for r in records) == ["1", "2"]


async def test_history_never_changes_a_new_drawing_that_took_a_listed_rows_id(
    user: User, services: AppServices
) -> None:
    add_rows(services.database, [(1, None), (4, None)])
    await user.open("/history")
    await user.should_see(marker="row-2")
    with services.database.session() as session:  # another tab deletes #2
        assert queries.delete_prediction(session, queries.get_prediction(session, 2))
    add_rows(services.database, [(6, None)])  # a new drawing takes its id (SQLite)

    user.find(marker="relabel-2").elements.pop().set_value(9)
    await user.should_see(GONE_TEXT.format(id=2), retries=DATABASE_RETRIES)
    await user.should_see("predicted 6")
    assert [(d, label) for d, label, _ in stored(services.database)] == [(6, None), (1, None)]


async def test_history_pages_through_many_rows(user: User, services: AppServices) -> None:
    add_rows(services.database, [(digit % 10, None) for digit in range(25)])
    await user.open("/history")
    await user.should_see("Page 1 of 2 · 25 drawings")
    user.find(marker="page-next").click()
    await user.should_see("Page 2 of 2")
    rows = [
        e
        for e in user.find(ui.row).elements
        if re.fullmatch(r"row-\d+", e.props.get("data-testid", ""))
    ]
    assert len(rows) == 5


async def test_statistics_page_shows_accuracy_matrix_and_server_status(
    user: User, services: AppServices
) -> None:
    add_rows(services.database, [(1, 1), (1, 7), (7, 7), (2, None)])
    await user.open("/statistics")
    await user.should_see("66.7%", marker="accuracy-overall")
    await user.should_see("4", marker="count-total")
    await user.should_see("Healthy", marker="ts-health")
    await user.should_see("1.0", marker="ts-model-version")
    await user.should_see("5.0 ms", marker="ts-latency")
    await user.should_see(marker="confusion-matrix")


async def test_statistics_page_says_when_the_model_server_is_down(
    user: User, fake_client: FakeModelClient
) -> None:
    fake_client.down = True
    await user.open("/statistics")
    await user.should_see("unreachable", marker="ts-health")


async def test_the_outbox_worker_saves_pending_drawings_once_the_database_is_back(
    user: User, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "db-comes-later"
    down = Database(f"sqlite:///{missing / 'predictions.db'}")
    store = PredictionStore(down, Outbox(tmp_path / "pending"))
    assert store.save(draft_for_worker()) is SaveOutcome.PENDING
    monkeypatch.setattr(main, "OUTBOX_RETRY_SECONDS", 0.05)
    worker = asyncio.create_task(main._deliver_outbox(AppServices(down, store, FakeModelClient())))
    try:
        await asyncio.sleep(0.2)
        assert store.pending_count() == 1
        missing.mkdir()
        await eventually(lambda: store.pending_count() == 0)
    finally:
        worker.cancel()
    assert [(d, label) for d, label, _ in stored(down)] == [(6, None)]
    down.dispose()


def draft_for_worker() -> PredictionDraft:
    return PredictionDraft(
        key="w1",
        timestamp=utc_now(),
        predicted_digit=6,
        confidence=0.5,
        image_data=digit_png(28),
        model_version="1.0",
        latency_ms=4.0,
    )


async def test_a_failing_page_shows_no_exception_text_or_trace(
    services: AppServices, caplog: pytest.LogCaptureFixture
) -> None:
    async with user_simulation() as simulated:
        main.register_pages(services)

        @ui.page("/fails")
        def fails() -> None:
            raise RuntimeError("internal detail: /srv/secret.conf line 3")

        response = await simulated.http_client.get("/fails")
    assert response.status_code == 500
    assert "Something went wrong" in response.text
    assert "internal detail" not in response.text and "RuntimeError" not in response.text
    assert "internal detail" in caplog.text, "the error must reach the log"


def fails_like_a_missing_table(*args: object) -> None:
    """What PostgreSQL answers when the table is not there: a bad statement, not an outage."""
    raise ProgrammingError("SELECT ...", {}, Exception('relation "predictions" does not exist'))


@pytest.mark.parametrize(
    ("path", "query"), [("/statistics", "compute_statistics"), ("/history", "count_predictions")]
)
async def test_a_database_error_other_than_an_outage_is_shown_briefly_and_logged(
    path: str,
    query: str,
    services: AppServices,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(queries, query, fails_like_a_missing_table)
    async with user_simulation() as simulated:
        main.register_pages(services)
        await simulated.open(path)
        await simulated.should_see("the error was logged", retries=DATABASE_RETRIES)
        await simulated.should_not_see("Loading statistics")
        shown = _texts(simulated)
    assert "relation" not in shown and "ProgrammingError" not in shown
    [error] = [record for record in caplog.records if record.levelname == "ERROR"]
    assert error.exc_info is not None, "the log needs the traceback"


async def test_statistics_page_says_when_the_model_server_hangs(
    user: User, services: AppServices, black_hole: str
) -> None:
    services.status_client = TorchServeClient(
        inference_url=black_hole,
        management_url=black_hole,
        metrics_url=black_hole,
        timeout_s=STATUS_TIMEOUT_S,
        retries=0,
    )
    started = time.monotonic()
    await user.open("/statistics")
    await eventually(lambda: "no answer" in _texts(user), 3 * STATUS_TIMEOUT_S + 2)
    print(f"\nTorchServe hung: /statistics said so after {time.monotonic() - started:.2f} s")
    await user.should_see("unreachable", marker="ts-health")
    await user.should_see("Drawings")


def _texts(user: User) -> str:
    return " ".join(str(getattr(element, "text", "")) for element in user.find(ui.label).elements)


async def test_statistics_page_survives_a_status_fetch_cancelled_at_shutdown(
    user: User,
    services: AppServices,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    real_io_bound = statistics.run.io_bound

    async def cancelled_status(function, *args, **kwargs):
        """NiceGUI's io_bound answers None for work it cancels when the app stops."""
        if function is statistics.fetch_status:
            return None
        return await real_io_bound(function, *args, **kwargs)

    monkeypatch.setattr(statistics.run, "io_bound", cancelled_status)
    add_rows(services.database, [(3, 3)])
    await user.open("/statistics")
    await user.should_see("1", marker="count-total")
    await asyncio.sleep(0.2)
    assert "NoneType" not in caplog.text


@pytest.mark.parametrize("path", ["/history", "/statistics"])
async def test_a_page_fetched_without_a_browser_logs_no_error(
    path: str,
    user: User,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """curl, a monitor, a tab closed at once: the page is sent, its browser never connects."""
    monkeypatch.setattr(layout, "CONNECT_TIMEOUT_S", 0.2)
    before = set(Client.instances)
    response = await user.http_client.get(path)
    assert response.status_code == 200
    await asyncio.sleep(1)
    assert "ClientConnectionTimeout" not in caplog.text and "Traceback" not in caplog.text
    assert set(Client.instances) <= before  # the page was dropped, not left to linger


async def test_an_undo_answered_after_clear_leaves_the_new_drawing_alone(
    user: User, services: AppServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def late_undo(canvas: DrawingCanvas) -> Snapshot:
        await asyncio.sleep(0.3)  # the browser's answer to Undo, after Clear
        return Snapshot.from_js({"strokes": 1, "png": data_url(digit_png()), "extent": 6.0})

    monkeypatch.setattr(DrawingCanvas, "undo", late_undo)
    await user.open("/")
    stroke(user, digit_png(), strokes=2)
    await user.should_see("Saved as #1")
    user.find(marker="undo-button").click()
    user.find(marker="clear-button").click()
    await asyncio.sleep(0.6)
    assert user.find(marker="predicted-digit").elements.pop().text == "–"
    assert len(stored(services.database)) == 1


async def test_strokes_drawn_while_the_model_answers_are_asked_about_once(
    user: User, services: AppServices, fake_client: FakeModelClient
) -> None:
    fake_client.delay_s = 0.5
    await user.open("/")
    for count in range(1, 19):
        stroke(user, digit_png(), strokes=count)
    await user.should_see("Saved as #1", retries=DATABASE_RETRIES)
    await asyncio.sleep(0.6)
    assert len(fake_client.requests) == 2  # the first stroke's, then the newest's


async def test_history_shows_the_newest_load_when_answers_come_out_of_order(
    user: User, services: AppServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_rows(services.database, [(1, None), (4, None)])
    fetch = history.HistoryPage._fetch

    def slow_for_ones(session, filters, page):
        if filters.predicted_digit == 1:
            time.sleep(0.8)
        return fetch(session, filters, page)

    monkeypatch.setattr(history.HistoryPage, "_fetch", staticmethod(slow_for_ones))
    await user.open("/history")
    await user.should_see("2 drawings")
    predicted = user.find(marker="filter-predicted").elements.pop()
    predicted.set_value(1)
    await asyncio.sleep(0.1)
    predicted.set_value(4)
    await asyncio.sleep(1.2)
    await user.should_see("predicted 4")
    await user.should_not_see("predicted 1")


async def test_deleting_the_only_row_of_the_last_page_shows_the_page_before(
    user: User, services: AppServices
) -> None:
    add_rows(services.database, [(1, None)] * 21)
    await user.open("/history")
    await user.should_see("Page 1 of 2 · 21 drawings")
    user.find(marker="page-next").click()
    await user.should_see("Page 2 of 2")
    user.find(marker="delete-1").click()
    await user.should_see(marker="confirm-delete")
    user.find(marker="confirm-delete").click()
    await user.should_see("Page 1 of 1 · 20 drawings", retries=DATABASE_RETRIES)


async def test_a_drawing_keeps_the_time_of_its_first_answer(
    user: User, services: AppServices
) -> None:
    await user.open("/")
    stroke(user, digit_png(), strokes=1)
    await user.should_see("Saved as #1", retries=DATABASE_RETRIES)
    with services.database.session() as session:
        first = queries.get_prediction(session, 1).timestamp  # type: ignore[union-attr]
    await asyncio.sleep(0.05)
    stroke(user, digit_png(279), strokes=2)
    await eventually(lambda: stored(services.database)[0][2] == digit_png(279))
    with services.database.session() as session:
        assert queries.get_prediction(session, 1).timestamp == first  # type: ignore[union-attr]
