"""The app's own metrics: counted where the work happens, served at `/metrics` by the real app."""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import pytest
from nicegui.testing.user import User
from prometheus_client import REGISTRY
from sqlalchemy import inspect

from client_ui import main, metrics
from client_ui.database import Database
from client_ui.outbox import Outbox
from client_ui.services import AppServices
from client_ui.store import PredictionStore, SaveOutcome
from serving.client import ServerUnavailableError
from tests.client_ui.conftest import FakeModelClient, digit_png
from tests.client_ui.test_app_process import App, start_app  # noqa: F401  (fixture)
from tests.client_ui.test_outbox import draft
from tests.client_ui.test_pages import stroke
from tests.conftest import require_or_skip

APP_METRICS = (
    "mnist_app_predictions_total",
    "mnist_app_prediction_latency_seconds",
    "mnist_app_torchserve_errors_total",
    "mnist_app_predictions_saved_total",
    "mnist_app_save_failures_total",
    "mnist_app_labels_total",
    "mnist_app_outbox_pending",
    "mnist_app_database_up",
    "mnist_app_torchserve_workers_ready",
    "mnist_app_torchserve_workers_min",
)


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_prediction_its_label_and_its_saves_are_counted(
    user: User, services: AppServices
) -> None:
    before = {
        "predictions": value("mnist_app_predictions_total", digit="3"),
        "answered": value("mnist_app_prediction_latency_seconds_count"),
        "saved": value("mnist_app_predictions_saved_total", via="direct"),
        "labels": value("mnist_app_labels_total", digit="5"),
    }
    await user.open("/")
    stroke(user, digit_png())
    await user.should_see("Saved as #1")
    user.find(marker="label-5").click()
    await user.should_see("true label 5")
    assert value("mnist_app_predictions_total", digit="3") == before["predictions"] + 1
    assert value("mnist_app_prediction_latency_seconds_count") == before["answered"] + 1
    assert value("mnist_app_predictions_saved_total", via="direct") == before["saved"] + 2
    assert value("mnist_app_labels_total", digit="5") == before["labels"] + 1
    assert value("mnist_app_database_up") == 1


async def test_torchserve_errors_are_counted_by_kind(
    user: User, fake_client: FakeModelClient
) -> None:
    before = value("mnist_app_torchserve_errors_total", kind="unavailable")
    fake_client.down = True
    await user.open("/")
    stroke(user, digit_png())
    await user.should_see("the model server is not reachable")
    assert value("mnist_app_torchserve_errors_total", kind="unavailable") == before + 1


def test_a_save_the_database_refuses_is_a_failure_and_waits_in_the_outbox(
    tmp_path: Path,
) -> None:
    refusing = Database(f"sqlite:///{tmp_path / 'missing' / 'app.db'}")
    store = PredictionStore(refusing, Outbox(tmp_path / "outbox"))
    metrics.bind_outbox(store.pending_count)
    before = value("mnist_app_save_failures_total")
    assert store.save(draft()) is SaveOutcome.PENDING
    assert value("mnist_app_save_failures_total") == before + 1
    assert value("mnist_app_database_up") == 0
    assert value("mnist_app_outbox_pending") == 1
    assert not refusing.ping()
    refusing.dispose()


def test_worker_gauges_come_from_the_model_description() -> None:
    metrics.record_workers(
        {"minWorkers": 2, "workers": [{"status": "READY"}, {"status": "UNLOADING"}]}
    )
    assert value("mnist_app_torchserve_workers_ready") == 1
    assert value("mnist_app_torchserve_workers_min") == 2


def test_lasting_unknown_workers_are_logged_once_and_their_return_once(
    services: AppServices, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable() -> dict:
        raise ServerUnavailableError("connection refused (fake)")

    with caplog.at_level(logging.INFO, logger="client_ui.main"):
        with monkeypatch.context() as patched:
            patched.setattr(services.model_client, "model_info", unreachable)
            known = main._probe_dependencies(services)
            for _ in range(3):
                known = main._probe_dependencies(services, known)
        known = main._probe_dependencies(services, known)
        known = main._probe_dependencies(services, known)
    messages = [record.getMessage() for record in caplog.records]
    assert [m.split(" (")[0] for m in messages] == [
        "TorchServe's workers unknown",
        "TorchServe's workers known again",
    ]
    assert known and value("mnist_app_torchserve_workers_ready") == 1


def test_the_watcher_makes_the_tables_as_soon_as_the_database_answers(
    fake_client: FakeModelClient, tmp_path: Path
) -> None:
    """Down at start, then back with no drawing saved since: History and Statistics must find
    the tables all the same."""
    folder = tmp_path / "not-yet"
    database = Database(f"sqlite:///{folder / 'app.db'}")
    services = AppServices(
        database, PredictionStore(database, Outbox(tmp_path / "outbox")), fake_client
    )
    try:
        main._probe_dependencies(services)
        assert value("mnist_app_database_up") == 0
        folder.mkdir()
        main._probe_dependencies(services)
        assert value("mnist_app_database_up") == 1
        assert inspect(database.engine).has_table("predictions")
    finally:
        database.dispose()


@pytest.mark.slow  # starts the app as its own process
def test_the_app_serves_its_metrics_on_loopback_only(start_app) -> None:  # noqa: F811
    app: App = start_app()
    page = app.get("/metrics")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/plain")
    for name in APP_METRICS:
        assert f"# TYPE {name} " in page.text, name
    assert app.get("/metrics", Host="metrics.evil.example").status_code == 400
    promtool = shutil.which("promtool")
    if promtool is None:
        require_or_skip("REQUIRE_PROMETHEUS", "promtool is not installed (Debian's prometheus)")
        return
    lint = subprocess.run(
        [promtool, "check", "metrics"], input=page.text, capture_output=True, text=True
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
