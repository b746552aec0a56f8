"""Fixtures for the handler tests: MNIST test digits and TorchServe's own worker context."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import yaml
from ts.context import Context, RequestProcessor
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

HANDLER_DIR = Path(__file__).resolve().parents[2] / "handler"
METRIC_LINE = re.compile(r"\[METRICS\](\w+)\.(\w+):([\d.]+)\|#([^|]*)\|#type:(\w+)")


class WorkerContext:
    """Builds the real `ts.context.Context` a TorchServe worker passes to the handler."""

    def __init__(self, model_file: Path, version: str = "7.5") -> None:
        self.manifest = {"model": {"serializedFile": model_file.name, "modelVersion": version}}
        self.model_dir = model_file.parent
        self.metrics = MetricsCacheYamlImpl(str(HANDLER_DIR / "metrics.yaml"))
        self.metrics.initialize_cache()
        self.metrics.model_name = "mnist"
        config = yaml.safe_load((HANDLER_DIR / "model-config.yaml").read_text())
        self.context = Context(
            "mnist", str(self.model_dir), self.manifest, 8, None, "0.12.0",
            metrics=self.metrics, model_yaml_config=config,
        )  # fmt: skip

    def for_batch(self, size: int) -> Context:
        """The context as `Service.predict` prepares it for a batch of `size` requests."""
        request_ids = {index: f"request-{index}" for index in range(size)}
        self.context.request_ids = request_ids
        self.context.request_processor = [RequestProcessor({}) for _ in range(size)]
        self.metrics.request_ids = request_ids
        return self.context


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
