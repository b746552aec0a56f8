"""TorchServe's state for the status panel: health, served version, a few live metrics."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from client_ui.services import ModelClient
from serving.client import (
    AuthorizationError,
    ServerUnavailableError,
    ServerUnhealthyError,
    metric_totals,
)

log = logging.getLogger(__name__)

#: (metric name, how to show it); summed over all label sets.
SHOWN_METRICS = [
    ("ts_inference_requests_total", "Inference requests"),
    ("ts_inference_latency_microseconds", "Total inference time (µs)"),
    ("ts_queue_latency_microseconds", "Total queue time (µs)"),
    ("Requests4XX", "4xx answers"),
    ("Requests5XX", "5xx answers"),
    ("mnist_rejected_inputs_total", "Rejected inputs"),
]


@dataclass
class ServerStatus:
    healthy: bool = False
    health_text: str = "unreachable"
    model_version: str = "unknown"
    workers: str = "unknown"
    figures: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def mean_latency_ms(self) -> float | None:
        requests = self.figures.get("Inference requests")
        total_us = self.figures.get("Total inference time (µs)")
        if not requests or total_us is None:
            return None
        return total_us / requests / 1000


def fetch_status(client: ModelClient) -> ServerStatus:
    """Blocking: three calls to TorchServe, each allowed to fail on its own."""
    status = ServerStatus()
    try:
        health = client.health()
        status.health_text = str(health.get("status", health))
        status.healthy = status.health_text.lower() == "healthy"
    except ServerUnhealthyError as error:  # an answer: it runs, with no healthy worker
        log.warning("status call health: %s", error)
        status.health_text = "Unhealthy"
    except Exception as error:  # shown on the page, never raised
        status.errors.append(_problem("health", error))
    try:
        info = client.model_info()
        status.model_version = str(info.get("version", info.get("modelVersion", "unknown")))
        status.workers = _describe_workers(info.get("workers"))
    except Exception as error:
        status.errors.append(_problem("model info", error))
    try:
        totals = metric_totals(client.metrics())
        status.figures = {title: totals[name] for name, title in SHOWN_METRICS if name in totals}
    except Exception as error:
        status.errors.append(_problem("metrics", error))
    return status


def _problem(what: str, error: Exception) -> str:
    """For the page: which call failed and how, without the error's text (that is logged)."""
    log.warning("status call %s failed: %s", what, error)
    if isinstance(error, ServerUnavailableError):
        return f"{what}: no answer (down or too slow)"
    if isinstance(error, AuthorizationError):
        return f"{what}: the access token was refused"
    return f"{what}: unexpected answer"


def _describe_workers(workers: Any) -> str:
    if isinstance(workers, list):
        ready = sum(1 for worker in workers if str(worker.get("status", "")).upper() == "READY")
        return f"{ready} ready of {len(workers)}"
    return "unknown" if workers is None else str(workers)
