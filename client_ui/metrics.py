"""The app's Prometheus metrics, served at `/metrics` (docs/observability.md says what each
means and which alert watches it).

They live in prometheus_client's default registry, created once per process; the page code and
the store only count, and `bind_outbox` points the outbox gauge at the running app's store.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from serving.client import (
    AuthorizationError,
    InputRejectedError,
    TorchServeError,
    WorkerDiedError,
)

# Round trips to TorchServe, in seconds: a warm one takes milliseconds, a cold or overloaded
# one up to the client's timeout (docs/performance.md has the measured latencies).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

PREDICTIONS = Counter(
    "mnist_app_predictions_total", "Drawings TorchServe answered for the app", ["digit"]
)
PREDICTION_LATENCY = Histogram(
    "mnist_app_prediction_latency_seconds",
    "Round trip of an answered prediction, app to TorchServe and back",
    buckets=LATENCY_BUCKETS,
)
TORCHSERVE_ERRORS = Counter(
    "mnist_app_torchserve_errors_total",
    "Calls to TorchServe that failed, by kind (rejected, unavailable, worker_died, token)",
    ["kind"],
)
SAVES = Counter(
    "mnist_app_predictions_saved_total", "Drawing states written to the database", ["via"]
)
SAVE_FAILURES = Counter(
    "mnist_app_save_failures_total",
    "Saves the database did not take in time; each waits in the outbox",
)
LABELS = Counter("mnist_app_labels_total", "True labels people gave", ["digit"])
SHADOW_ANSWERS = Counter(
    "mnist_app_shadow_answers_total",
    "Answers of the shadow-tested candidate version, by whether it agreed with the live one",
    ["outcome"],
)
OUTBOX_PENDING = Gauge("mnist_app_outbox_pending", "Drawings waiting in the outbox")
DATABASE_UP = Gauge("mnist_app_database_up", "1 while the database answers, 0 while it does not")
WORKERS_READY = Gauge("mnist_app_torchserve_workers_ready", "Workers READY for the model")
WORKERS_MIN = Gauge("mnist_app_torchserve_workers_min", "The model's configured minimum of workers")


ERROR_KINDS = ("rejected", "unavailable", "worker_died", "token")
# Every known label value starts at 0, so rates and ratios exist before the first event.
for _digit in range(10):
    PREDICTIONS.labels(str(_digit))
    LABELS.labels(str(_digit))
for _kind in ERROR_KINDS:
    TORCHSERVE_ERRORS.labels(_kind)
for _via in ("direct", "outbox"):
    SAVES.labels(_via)
for _outcome in ("agreed", "disagreed", "failed"):
    SHADOW_ANSWERS.labels(_outcome)


def error_kind(error: TorchServeError) -> str:
    """The label of `error` in mnist_app_torchserve_errors_total."""
    if isinstance(error, InputRejectedError):
        return "rejected"
    if isinstance(error, AuthorizationError):
        return "token"
    if isinstance(error, WorkerDiedError):
        return "worker_died"
    return "unavailable"


def bind_outbox(pending_count: Callable[[], int]) -> None:
    """Report the running store's outbox at every scrape."""
    OUTBOX_PENDING.set_function(pending_count)


def record_workers(model_info: dict) -> None:
    """Worker gauges from TorchServe's describe-model answer."""
    workers = model_info.get("workers") or []
    WORKERS_READY.set(sum(1 for worker in workers if str(worker.get("status")) == "READY"))
    WORKERS_MIN.set(int(model_info.get("minWorkers", 0)))


def exposition() -> tuple[bytes, str]:
    """The metrics page: Prometheus text and its content type."""
    return generate_latest(), CONTENT_TYPE_LATEST
