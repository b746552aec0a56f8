"""The whole loop with the real parts: labelled drawings in a real PostgreSQL, `training.retrain`
archives a candidate, a real TorchServe serves both versions, the app (NiceGUI's simulated
user on the real client) shadow-tests the candidate, then promotion and rollback change the
version that answers, with no restart of the app."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from nicegui.testing.user import User

from client_ui import queries
from client_ui.database import Database
from client_ui.outbox import Outbox
from client_ui.services import AppServices
from client_ui.store import PredictionStore
from config import Settings, load_settings
from model import versions
from serving.client import TorchServeClient
from serving.models import promote, rollback
from serving.server import private_instance_env, start_torchserve, stop
from tests.client_ui.test_pages import eventually, stroke
from tests.training.test_retrain import model_store, store_drawings
from training.drawings import drawings
from training.retrain import main as retrain

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


@dataclass(frozen=True)
class Loop:
    services: AppServices
    candidate: str
    settings: Settings
    client: TorchServeClient


@pytest.fixture
def loop(
    postgres_database: Database, trained_model: Path, mnist_dir: Path, tmp_path: Path
) -> Iterator[Loop]:
    """Retrain from the database into a fresh store, then serve the store."""
    store = model_store(trained_model, tmp_path)
    url = store_drawings(postgres_database, 400, mnist_dir)
    # --force: whether a candidate is good enough is tests/training/test_retrain.py's question.
    argv = [
        "--database-url", url, "--model-path", str(store / "mnist_cnn.pt"),
        "--results-dir", str(tmp_path / "results"), "--min-drawings", "200", "--force",
    ]  # fmt: skip
    assert retrain(argv) == 0
    [_, candidate] = [archive.version for archive in versions.archives(store, "mnist")]
    settings = load_settings({**os.environ, **private_instance_env(tmp_path, store, "mnist")})
    start_torchserve(settings)
    client = TorchServeClient(settings)
    services = AppServices(
        database=postgres_database,
        store=PredictionStore(postgres_database, Outbox(tmp_path / "outbox")),
        model_client=client,
        shadow_version=candidate,
    )
    try:
        yield Loop(services, candidate, settings, client)
    finally:
        client.close()
        stop(settings)


@pytest.fixture
def services(loop: Loop) -> AppServices:
    """What the `user` fixture builds the app from: the real client and database."""
    return loop.services


def rows(database: Database) -> list[tuple[str, str]]:
    """(live version, shadow version or "") of every row, oldest first."""
    with database.session() as session:
        found = reversed(queries.list_predictions(session))  # the list is newest first
        return [(p.model_version, p.shadow_version or "") for p in found]


async def test_retrain_shadow_promote_and_roll_back(
    user: User, loop: Loop, mnist_dir: Path
) -> None:
    candidate, database = loop.candidate, loop.services.database
    with database.session() as session:  # only the app's drawings from here on
        for row in queries.list_predictions(session, limit=1000):
            queries.delete_prediction(session, row)
    [(image, _)] = drawings("black_on_white", 1, data_dir=mnist_dir, seed=5)

    await user.open("/")
    stroke(user, image)
    await user.should_see("Saved as #")
    await eventually(lambda: rows(database) == [("1.0", candidate)], seconds=30)
    print(f"\nshadow-tested: {rows(database)}")

    promote(loop.client, loop.settings, candidate)
    user.find(marker="clear-button").click()
    stroke(user, image)
    await eventually(lambda: [r[0] for r in rows(database)] == ["1.0", candidate], seconds=30)

    assert rollback(loop.client, loop.settings) == "1.0"
    user.find(marker="clear-button").click()
    stroke(user, image)
    await eventually(
        lambda: [r[0] for r in rows(database)] == ["1.0", candidate, "1.0"], seconds=30
    )
