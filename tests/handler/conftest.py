"""Fixtures for the handler tests: MNIST test digits and TorchServe's own worker context."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from benchmarks.worker import WorkerContext

METRIC_LINE = re.compile(r"\[METRICS\](\w+)\.(\w+):([\d.]+)\|#([^|]*)\|#type:(\w+)")


@pytest.fixture
def worker_context(scripted_model: Path) -> WorkerContext:
    return WorkerContext(scripted_model)


def emitted_metrics(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    """The metric lines the worker would print for the frontend, parsed."""
    found = []
    for record in caplog.records:
        match = METRIC_LINE.search(record.getMessage())
        if match:
            name, unit, value, dimensions, kind = match.groups()
            found.append({
                "name": name, "unit": unit, "value": float(value), "type": kind,
                "dimensions": dict(pair.split(":", 1) for pair in dimensions.split(",")),
            })  # fmt: skip
    return found


@pytest.fixture
def capture_metrics(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="ts.metrics")
    return caplog
