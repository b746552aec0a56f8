"""Shadow testing on the Draw page (with SHADOW_MODEL_VERSION set, every drawing also goes to the
candidate, after the live answer is shown, and its answer is stored beside the live one), and
the Statistics and History pages per model version."""

from __future__ import annotations

import threading

from nicegui import ui
from nicegui.testing.user import User

from client_ui import queries
from client_ui.database import Database
from client_ui.models import utc_now
from client_ui.services import AppServices
from tests.client_ui.conftest import FakeModelClient, digit_png
from tests.client_ui.test_pages import eventually, stroke


def shadow_columns(database: Database) -> list[tuple]:
    with database.session() as session:
        return [
            (p.predicted_digit, p.model_version, p.shadow_digit, p.shadow_version, p.true_label)
            for p in queries.list_predictions(session)
        ]


async def test_the_candidates_answer_is_stored_beside_the_live_one(
    user: User, services: AppServices, fake_client: FakeModelClient
) -> None:
    services.shadow_version = "2.0"
    await user.open("/")
    stroke(user, digit_png())
    await user.should_see("Saved as #1")
    assert user.find(marker="predicted-digit").elements.pop().text == "3"  # the live answer
    await eventually(lambda: shadow_columns(services.database) == [(3, "1.0", 4, "2.0", None)])
    assert fake_client.versions_asked == [None, "2.0"]  # live first
    user.find(marker="label-3").click()
    await user.should_see("true label 3")
    await eventually(lambda: shadow_columns(services.database) == [(3, "1.0", 4, "2.0", 3)])


async def test_a_failing_candidate_never_shows_and_the_live_answer_is_kept(
    user: User, services: AppServices, fake_client: FakeModelClient
) -> None:
    services.shadow_version = "2.0"
    fake_client.versions_down = {"2.0"}
    await user.open("/")
    stroke(user, digit_png())
    await user.should_see("Saved as #1")
    await eventually(lambda: fake_client.versions_asked == [None])
    await user.should_not_see(marker="server-banner")
    assert shadow_columns(services.database) == [(3, "1.0", None, None, None)]


async def test_without_a_candidate_only_the_live_version_is_asked(
    user: User, services: AppServices, fake_client: FakeModelClient
) -> None:
    await user.open("/")
    stroke(user, digit_png())
    await user.should_see("Saved as #1")
    assert fake_client.versions_asked == [None]
    assert shadow_columns(services.database) == [(3, "1.0", None, None, None)]


async def test_a_slow_candidate_never_delays_the_live_answers(
    user: User, services: AppServices, fake_client: FakeModelClient
) -> None:
    """More strokes than NiceGUI has threads for io_bound work, while the candidate hangs."""
    services.shadow_version = "2.0"
    fake_client.candidate_gate = threading.Event()
    await user.open("/")
    try:
        for stroke_number in range(1, 13):
            stroke(user, digit_png(280 - stroke_number))
            await eventually(lambda n=stroke_number: fake_client.versions_asked.count(None) == n)
        await user.should_see("Saved as #1")
        assert fake_client.versions_asked.count("2.0") == 1  # the first stroke's, still waiting
    finally:
        fake_client.candidate_gate.set()
    await eventually(lambda: fake_client.versions_asked.count("2.0") == 2)  # then the newest
    assert fake_client.requests[-1] == digit_png(280 - 12)
    await eventually(lambda: shadow_columns(services.database) == [(3, "1.0", 4, "2.0", None)])


async def label_3_and_clear_while_the_candidate_waits(
    user: User, services: AppServices, fake_client: FakeModelClient
) -> None:
    services.shadow_version = "2.0"
    fake_client.candidate_gate = threading.Event()
    await user.open("/")
    stroke(user, digit_png())
    await user.should_see("Saved as #1")
    user.find(marker="label-3").click()
    await user.should_see("true label 3")
    user.find(marker="clear-button").click()
    await user.should_not_see("Saved as #1")


async def test_the_candidates_answer_about_a_cleared_drawing_is_kept_with_its_label(
    user: User, services: AppServices, fake_client: FakeModelClient
) -> None:
    await label_3_and_clear_while_the_candidate_waits(user, services, fake_client)
    fake_client.candidate_gate.set()
    await eventually(lambda: shadow_columns(services.database) == [(3, "1.0", 4, "2.0", 3)])


async def test_the_candidates_late_answer_keeps_a_label_given_on_history_meanwhile(
    user: User, services: AppServices, fake_client: FakeModelClient
) -> None:
    await label_3_and_clear_while_the_candidate_waits(user, services, fake_client)
    with services.database.session() as session:  # History, in another tab, corrects it
        assert queries.set_true_label(session, queries.get_prediction(session, 1), 7)
    fake_client.candidate_gate.set()
    await eventually(lambda: shadow_columns(services.database) == [(3, "1.0", 4, "2.0", 7)])


def add_versioned(
    database: Database,
    rows: list[tuple[str, int, int | None, int | None]],
    candidate: str = "3.0",
) -> None:
    """(version, predicted, true label, shadow digit) rows; the shadow is `candidate`'s."""
    with database.session() as session:
        for version, predicted, label, shadow in rows:
            values = {
                "timestamp": utc_now(), "predicted_digit": predicted, "confidence": 0.9,
                "true_label": label, "image_data": digit_png(), "model_version": version,
                "latency_ms": 5.0, "shadow_digit": shadow,
                "shadow_version": None if shadow is None else candidate,
            }  # fmt: skip
            queries.insert_prediction(session, values)


async def test_statistics_compare_versions_and_the_shadow_candidate(
    user: User, services: AppServices
) -> None:
    add_versioned(
        services.database,
        [("1.0", 1, 1, None), ("1.0", 1, 7, None), ("2.0", 7, 7, 7), ("2.0", 2, 3, 3),
         ("2.0", 5, None, 6)],
    )  # fmt: skip
    await user.open("/statistics")
    await user.should_see("3", marker="shadow-count")
    table = user.find(marker="versions-table").elements.pop()
    assert [(r["version"], r["labelled"], r["accuracy"]) for r in table.rows] == [
        ("1.0", 2, "50.0%"), ("2.0", 2, "50.0%"),
    ]  # fmt: skip
    await user.should_see("2", marker="shadow-disagreements")
    await user.should_see("50.0%", marker="shadow-live-accuracy")
    await user.should_see("100.0%", marker="shadow-candidate-accuracy")


async def test_statistics_compare_each_candidate_apart_and_never_a_version_with_itself(
    user: User, services: AppServices
) -> None:
    add_versioned(services.database, [("1.0", 1, 1, 7), ("1.0", 2, 2, 5)], candidate="2.0")
    add_versioned(services.database, [("1.0", 3, 3, 3), ("1.0", 4, 9, 9)], candidate="3.0")
    add_versioned(services.database, [("3.0", 6, 6, 6)], candidate="3.0")  # after promotion
    await user.open("/statistics")
    await user.should_see("Shadow test: live against candidate 3.0")
    assert shadow_panels(user) == {
        "3.0": {"shadow-count": "2", "shadow-live-accuracy": "50.0%",
                "shadow-candidate-accuracy": "100.0%"},
        "2.0": {"shadow-count": "2", "shadow-live-accuracy": "100.0%",
                "shadow-candidate-accuracy": "0.0%"},
    }  # fmt: skip


def shadow_panels(user: User) -> dict[str, dict[str, str]]:
    """Each shadow panel's figures, keyed by the candidate version its title names."""
    panels = {}
    for panel in user.find(marker="shadow-panel").elements:
        labels = [element for element in panel.descendants() if isinstance(element, ui.label)]
        title = labels[0].text.removeprefix("Shadow test: live against candidate ")
        wanted = ("shadow-count", "shadow-live-accuracy", "shadow-candidate-accuracy")
        panels[title] = {
            label.props["data-testid"]: label.text
            for label in labels
            if label.props.get("data-testid") in wanted
        }
    return panels


async def test_statistics_show_no_shadow_panel_without_shadow_answers(
    user: User, services: AppServices
) -> None:
    add_versioned(services.database, [("1.0", 1, 1, None)])
    await user.open("/statistics")
    await user.should_see(marker="versions-table")
    await user.should_see("Healthy", marker="ts-health")  # the whole page is filled
    await user.should_not_see(marker="shadow-panel")


async def test_history_filters_by_model_version(user: User, services: AppServices) -> None:
    add_versioned(
        services.database, [("1.0", 1, 1, None), ("2.0", 7, 7, None), ("2.0", 2, None, None)]
    )
    await user.open("/history")
    await user.should_see("3 drawings")
    versions = user.find(marker="filter-version").elements.pop()
    assert list(versions.options) == ["any", "1.0", "2.0"]
    versions.set_value("2.0")
    await user.should_see("· 2 drawings")
    await user.should_not_see(marker="row-1")
