"""The in-process reference: `MNISTPredictor` on the same encoded drawings the server gets.

It is the floor every served figure is compared with: what the model and its preprocessing
cost with no server, no network and no serialisation around them.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.loadgen import Payload, latency_summary
from model.predictor import MNISTPredictor

BATCH_SIZES = (1, 32)
WARMUP_CALLS = 10


def measure_predictor(
    model_path: Path, payloads: Sequence[Payload], seconds: float
) -> list[dict[str, Any]]:
    """Decode + predict one drawing per call, then 32 per call, for `seconds` each.

    One torch thread, as each TorchServe worker gets (handler/model-config.yaml), so the
    comparison is per core.
    """
    torch.set_num_threads(1)
    predictor = MNISTPredictor(model_path, device="cpu")
    order = itertools.cycle(payloads)
    entries = []
    for batch_size in BATCH_SIZES:

        def call(batch_size: int = batch_size) -> None:
            predictor.predict_batch([next(order).body for _ in range(batch_size)])

        for _ in range(WARMUP_CALLS):
            call()
        timings_ms: list[float] = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            call()
            timings_ms.append(1000.0 * (time.perf_counter() - started))
        summary = latency_summary(timings_ms, sum(timings_ms) / 1000.0)
        entries.append(
            {
                "name": "in-process, 1 image"
                if batch_size == 1
                else f"in-process, batch {batch_size}",
                "kind": "in-process",
                "batch_size": batch_size,
                "requests": len(timings_ms),
                "errors": 0,
                **summary,
                "images_per_s": summary["requests_per_s"] * batch_size,
            }
        )
    return entries
