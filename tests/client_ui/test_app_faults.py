"""The app against faults of the real parts it depends on: a TorchServe restarted or with
expiring tokens while a Draw page is open, and the app killed with drawings still pending.

Each test prints its figures (requests, failures, rows, time to recover) for docs/app.md.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nicegui.testing.user import User
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from client_ui.database import Database
from client_ui.outbox import Outbox
from client_ui.services import AppServices
from client_ui.store import PredictionStore
from config import PROJECT_ROOT
from serving.client import TorchServeClient
from serving.server import start_torchserve, stop
from tests.client_ui.conftest import digit_png
from tests.client_ui.test_app_process import App
from tests.client_ui.test_pages import stored, stroke
from tests.fixtures.database import PostgresServer, PrivatePostgres
from tests.fixtures.serving import Private, private_torchserve

pytestmark = pytest.mark.slow

# Minutes, as TorchServe takes them: keys that expire within the test.
TOKEN_LIFE_MIN = 0.1
PENDING_DRAWINGS = 6
DRAIN_TIMEOUT_S = 60.0


@pytest.fixture
def short_lived_tokens(scripted_model: Path, tmp_path: Path) -> Iterator[Private]:
    overrides = {"token_expiration_min": str(TOKEN_LIFE_MIN)}
    with private_torchserve(tmp_path / "torchserve", scripted_model, overrides) as instance:
        yield instance


@pytest.fixture
def services(short_lived_tokens: Private, tmp_path: Path) -> Iterator[AppServices]:
    """The app's services on a fresh SQLite file and a real client of the private TorchServe."""
    database = Database(f"sqlite:///{tmp_path / 'app.db'}")
    database.migrate()
    client = TorchServeClient(short_lived_tokens.settings)
    yield AppServices(
        database=database,
        store=PredictionStore(database, Outbox(tmp_path / "outbox")),
        model_client=client,
    )
    client.close()
    database.dispose()


async def draw_and_see_the_answer(user: User, row: int) -> None:
    """A new drawing on the open page, answered and saved as row `row`."""
    user.find(marker="clear-button").click()
    stroke(user, digit_png())
    await user.should_see(f"Saved as #{row}", retries=200)


async def test_the_draw_page_survives_expired_tokens_and_a_torchserve_restart(
    user: User, services: AppServices, short_lived_tokens: Private
) -> None:
    settings = short_lived_tokens.settings
    await user.open("/")
    await draw_and_see_the_answer(user, 1)
    first_key = settings.key_file.read_text()

    await asyncio.sleep(TOKEN_LIFE_MIN * 60 + 1)  # the page's inference key has expired
    await draw_and_see_the_answer(user, 2)

    stop(settings)
    user.find(marker="clear-button").click()
    stroke(user, digit_png())
    await user.should_see("the model server is not reachable", retries=200)
    started = time.monotonic()
    start_torchserve(settings, overrides={"token_expiration_min": str(TOKEN_LIFE_MIN)})
    restart_s = time.monotonic() - started
    assert settings.key_file.read_text() != first_key  # a new server, new keys
    await draw_and_see_the_answer(user, 3)
    await user.should_not_see("the model server is not reachable")

    rows = stored(services.database)
    print(
        f"\nDraw page open through token expiry and a TorchServe restart: 4 strokes, "
        f"1 answered 'not reachable' while stopped, {len(rows)} rows; restart took "
        f"{restart_s:.1f} s, the next stroke was answered"
    )
    assert len(rows) == 3


PENDING_WRITER = textwrap.dedent(
    """
    import sys, time
    from datetime import datetime, timezone
    from pathlib import Path
    from client_ui.database import Database
    from client_ui.outbox import Outbox, PredictionDraft
    from client_ui.store import PredictionStore, SaveOutcome

    url, outbox, count = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    store = PredictionStore(Database(url, timeout_s=1.0), Outbox(outbox))
    for number in range(count):
        draft = PredictionDraft(
            key=f"drawing-{number}", timestamp=datetime.now(timezone.utc),
            predicted_digit=number % 10, confidence=0.9, image_data=b"png %d" % number,
            model_version="1.0", latency_ms=5.0,
        )
        assert store.save(draft) is SaveOutcome.PENDING
        draft.true_label = (number + 1) % 10  # the person labels it: a second state
        assert store.save(draft) is SaveOutcome.PENDING
    print("pending", store.pending_count(), flush=True)
    time.sleep(600)
    """
)


def test_drawings_pending_when_the_app_is_killed_reach_postgres_once_after_a_restart(
    private_postgres: PrivatePostgres, tmp_path: Path
) -> None:
    """Saves made while PostgreSQL refuses wait in the outbox; the app is SIGKILLed; the
    database comes back; the restarted app (`python -m client_ui`) delivers each drawing once,
    with its latest label."""
    server = PostgresServer(make_url(private_postgres.url))
    name = server.new_name()
    url = server.create(name)
    data_dir = tmp_path / "data"
    refused = False
    try:
        private_postgres.stop()
        refused = True
        writer = subprocess.Popen(
            [
                sys.executable,
                "-c",
                PENDING_WRITER,
                url,
                str(data_dir / "outbox"),
                str(PENDING_DRAWINGS),
            ],
            cwd=PROJECT_ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert writer.stdout is not None
        assert writer.stdout.readline().split() == ["pending", str(PENDING_DRAWINGS)]
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        assert len(list((data_dir / "outbox").glob("*.json"))) == PENDING_DRAWINGS

        private_postgres.start()
        refused = False
        started = time.monotonic()
        app = App(tmp_path, DATABASE_URL=url, MNIST_DATA_DIR=str(data_dir)).start()
        try:
            rows = _rows_when_drained(url, data_dir, started)
            drained_s = time.monotonic() - started
        finally:
            app.stop()
        print(
            f"\nApp SIGKILLed with {PENDING_DRAWINGS} drawings (each saved and labelled) in the "
            f"outbox: {len(rows)} rows after the restart, drained {drained_s:.1f} s after "
            f"the app was started"
        )
        expected = [(n % 10, (n + 1) % 10, b"png %d" % n) for n in range(PENDING_DRAWINGS)]
        assert sorted(rows, key=lambda row: row[2]) == expected  # each once, latest label
    finally:
        if refused:
            private_postgres.start()
        server.drop(name)


def _rows_when_drained(url: str, data_dir: Path, started: float) -> list[tuple]:
    engine = create_engine(url)
    try:
        while time.monotonic() - started < DRAIN_TIMEOUT_S:
            if not list((data_dir / "outbox").glob("*.json")):
                with engine.connect() as connection:
                    query = "SELECT predicted_digit, true_label, image_data FROM predictions"
                    return [
                        (row[0], row[1], bytes(row[2])) for row in connection.execute(text(query))
                    ]
            time.sleep(0.2)
    finally:
        engine.dispose()
    pytest.fail(f"the outbox was not drained within {DRAIN_TIMEOUT_S:.0f} s")
