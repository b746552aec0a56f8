"""TorchServe's own worker context, built outside TorchServe: the handler run in this process
exactly as a worker runs it (the handler tests, and `make gpu-check` where no JVM runs)."""

from __future__ import annotations

from pathlib import Path

import yaml
from ts.context import Context, RequestProcessor
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

HANDLER_DIR = Path(__file__).resolve().parent.parent / "handler"


class WorkerContext:
    """Builds the real `ts.context.Context` a TorchServe worker passes to the handler."""

    def __init__(self, model_file: Path, version: str = "7.5", gpu_id: int | None = None) -> None:
        self.manifest = {"model": {"serializedFile": model_file.name, "modelVersion": version}}
        self.model_dir = model_file.parent
        self.metrics = MetricsCacheYamlImpl(str(HANDLER_DIR / "metrics.yaml"))
        self.metrics.initialize_cache()
        self.metrics.model_name = "mnist"
        config = yaml.safe_load((HANDLER_DIR / "model-config.yaml").read_text())
        self.context = Context(
            "mnist", str(self.model_dir), self.manifest, 8, gpu_id, "0.12.0",
            metrics=self.metrics, model_yaml_config=config,
        )  # fmt: skip

    def for_batch(self, size: int) -> Context:
        """The context as `Service.predict` prepares it for a batch of `size` requests."""
        request_ids = {index: f"request-{index}" for index in range(size)}
        self.context.request_ids = request_ids
        self.context.request_processor = [RequestProcessor({}) for _ in range(size)]
        self.metrics.request_ids = request_ids
        return self.context
