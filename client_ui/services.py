"""What the pages need from the outside world, gathered so tests can hand in fakes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from client_ui.database import Database
from client_ui.outbox import Outbox
from client_ui.store import PredictionStore
from config import Settings
from serving.client import TorchServeClient


class ModelClient(Protocol):
    """The part of `serving.client.TorchServeClient` the app uses."""

    def predict(self, image_bytes: bytes) -> dict[str, Any]: ...

    def health(self) -> dict[str, Any]: ...

    def model_info(self) -> dict[str, Any]: ...

    def metrics(self) -> str: ...


@dataclass
class AppServices:
    database: Database
    store: PredictionStore
    model_client: ModelClient

    @classmethod
    def from_settings(cls, settings: Settings) -> AppServices:
        database = Database(settings.database_url)
        store = PredictionStore(database, Outbox(settings.data_dir / "outbox"))
        return cls(database=database, store=store, model_client=TorchServeClient(settings))
