"""Fixtures for the app's tests: database fixtures, a fake model client, NiceGUI's user."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from nicegui.testing.user import User
from nicegui.testing.user_simulation import user_simulation
from PIL import Image, ImageDraw

from client_ui.database import Database
from client_ui.main import register_pages
from client_ui.outbox import Outbox
from client_ui.services import AppServices
from client_ui.store import PredictionStore
from serving.client import ServerUnavailableError
from tests.fixtures.database import (  # noqa: F401  (fixtures)
    database,
    postgres_database,
    postgres_server,
    postgres_url,
    private_postgres,
    sqlite_database,
)


class FakeModelClient:
    """Answers like the handler: a fixed digit, or ServerUnavailableError while `down`."""

    def __init__(self, digit: int = 3, confidence: float = 0.9) -> None:
        self.digit = digit
        self.confidence = confidence
        self.down = False
        self.delay_s = 0.0
        self.requests: list[bytes] = []
        #: What a version other than the default answers, and the versions that fail.
        self.shadow_digit = (digit + 1) % 10
        self.versions_down: set[str] = set()
        self.versions_asked: list[str | None] = []
        #: When set, the candidate (any version) answers only once the gate is opened.
        self.candidate_gate: threading.Event | None = None

    def predict(self, image_bytes: bytes, *, version: str | None = None) -> dict[str, Any]:
        if self.down or (version is not None and version in self.versions_down):
            raise ServerUnavailableError("connection refused (fake)")
        self.requests.append(image_bytes)
        self.versions_asked.append(version)
        if version is not None and self.candidate_gate is not None:
            self.candidate_gate.wait(timeout=30)
        time.sleep(self.delay_s)
        digit = self.digit if version is None else self.shadow_digit
        rest = (1 - self.confidence) / 9
        probabilities = [self.confidence if d == digit else rest for d in range(10)]
        return {
            "digit": digit,
            "confidence": self.confidence,
            "probabilities": probabilities,
            "model_version": version or "1.0",
        }

    def health(self) -> dict[str, Any]:
        if self.down:
            raise ServerUnavailableError("connection refused (fake)")
        return {"status": "Healthy"}

    def model_info(self) -> dict[str, Any]:
        return {"version": "1.0", "workers": [{"status": "READY"}]}

    def metrics(self) -> str:
        return (
            "# HELP ts_inference_requests_total Total number of inference requests.\n"
            'ts_inference_requests_total{uuid="a",model_name="mnist"} 12.0\n'
            'ts_inference_latency_microseconds{uuid="a",model_name="mnist"} 60000.0\n'
        )


def digit_png(size: int = 280) -> bytes:
    """A black stroke on white, like the canvas sends."""
    image = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(image).line([(140, 40), (140, 240)], fill="black", width=20)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A TCP server that accepts connections and never answers: a hung TorchServe."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    server.close()


@pytest.fixture
def fake_client() -> FakeModelClient:
    return FakeModelClient()


@pytest.fixture
def services(fake_client: FakeModelClient, tmp_path: Path) -> Iterator[AppServices]:
    """The app's services on a fresh SQLite file and the fake model client."""
    app_database = Database(f"sqlite:///{tmp_path / 'app.db'}")
    app_database.migrate()
    store = PredictionStore(app_database, Outbox(tmp_path / "outbox"))
    yield AppServices(database=app_database, store=store, model_client=fake_client)
    app_database.dispose()


@pytest.fixture
async def user(services: AppServices, caplog: pytest.LogCaptureFixture) -> AsyncIterator[User]:
    """NiceGUI's simulated user on the app built with `services` (no browser, no server)."""
    async with user_simulation() as simulated:
        register_pages(services)
        yield simulated
    errors = [record for record in caplog.get_records("call") if record.levelname == "ERROR"]
    assert not errors, f"unexpected ERROR logs: {errors}"
