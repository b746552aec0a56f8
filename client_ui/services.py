"""What the pages need from the outside world, gathered so tests can hand in fakes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, TypeVar

from client_ui.database import Database
from client_ui.outbox import Outbox
from client_ui.store import PredictionStore
from config import Settings
from serving.client import TorchServeClient


class ModelClient(Protocol):
    """The part of `serving.client.TorchServeClient` the app uses."""

    def predict(self, image_bytes: bytes, *, version: str | None = None) -> dict[str, Any]: ...

    def explain(self, image_bytes: bytes) -> dict[str, Any]: ...

    def health(self) -> dict[str, Any]: ...

    def model_info(self) -> dict[str, Any]: ...

    def metrics(self) -> str: ...


#: Seconds each status call to TorchServe may take: the status panel must not wait for a hung
#: server as long as a prediction would.
STATUS_TIMEOUT_S = 1.0
#: Threads for the shadow-tested candidate, apart from the ones live predictions and saves use,
#: so a slow candidate never delays a live answer; each page asks it one drawing at a time.
SHADOW_THREADS = 2
#: Threads for the Draw pages' calls to TorchServe (predictions, explanations), apart from the
#: ones saves and pages use, so a hung TorchServe holds only these; each page has at most one
#: prediction in flight.
MODEL_THREADS = 8

T = TypeVar("T")


def _shadow_threads() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=SHADOW_THREADS, thread_name_prefix="shadow")


def _model_threads() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=MODEL_THREADS, thread_name_prefix="model")


@dataclass
class AppServices:
    database: Database
    store: PredictionStore
    model_client: ModelClient
    #: For the status panel; the model client when None.
    status_client: ModelClient | None = None
    #: The candidate version every drawing is also sent to (shadow testing), or None.
    shadow_version: str | None = None
    shadow_executor: ThreadPoolExecutor = field(default_factory=_shadow_threads)
    model_executor: ThreadPoolExecutor = field(default_factory=_model_threads)

    @property
    def status(self) -> ModelClient:
        return self.status_client or self.model_client

    async def ask_model(self, call: Callable[..., T], *args: Any) -> T:
        """`call(*args)`, a call to TorchServe, on the model threads."""
        return await asyncio.get_running_loop().run_in_executor(
            self.model_executor, partial(call, *args)
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> AppServices:
        database = Database(settings.database_url, timeout_s=settings.db_timeout_s)
        store = PredictionStore(database, Outbox(settings.data_dir / "outbox"))
        status_timeout_s = min(STATUS_TIMEOUT_S, settings.request_timeout_s)
        return cls(
            database=database,
            store=store,
            model_client=TorchServeClient(settings),
            status_client=TorchServeClient(settings, timeout_s=status_timeout_s, retries=0),
            shadow_version=settings.shadow_model_version,
        )
