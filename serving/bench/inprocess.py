"""The in-process reference: `MNISTPredictor` on the same PNG bytes the server gets.

It gives the floor the served figures are divided by, and the per-stage costs (decode,
MNIST-style preprocessing, model) that the profile subtracts from a served request.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from handler.preprocessing import decode_image, normalise, to_mnist_pixels
from model.predictor import MNISTPredictor
from serving.bench.loadgen import Payload
from training.export import load_torchscript

BATCH_SIZE = 32
# A lone request reaches the worker after the machine has idled; a pause before each call
# shows what that alone does to the same work (see `measure_predictor`).
IDLE_PAUSE_S = 0.001


def _bounded_timings(
    work: Callable[[int], None], max_calls: int, max_seconds: float, pause_s: float = 0.0
) -> list[float]:
    """Milliseconds per call of `work(i)`, stopping at `max_calls` or `max_seconds`; with
    `pause_s`, the process sleeps that long (untimed) before each call."""
    timings: list[float] = []
    deadline = time.perf_counter() + max_seconds
    for index in range(max_calls):
        if pause_s:
            time.sleep(pause_s)
        started = time.perf_counter()
        work(index)
        timings.append(1000.0 * (time.perf_counter() - started))
        if time.perf_counter() > deadline:
            break
    return timings


def _latency_summary(timings_ms: list[float], images_per_call: int) -> dict[str, float | int]:
    values = np.asarray(timings_ms)
    return {
        "requests": len(values),
        "errors": 0,
        "median_ms": float(np.percentile(values, 50)),
        "p95_ms": float(np.percentile(values, 95)),
        "p99_ms": float(np.percentile(values, 99)),
        "mean_ms": float(values.mean()),
        "requests_per_s": 1000.0 * len(values) / float(values.sum()),
        "images_per_s": 1000.0 * images_per_call * len(values) / float(values.sum()),
    }


def measure_predictor(
    model_path: Path, payloads: Sequence[Payload], max_calls: int, max_seconds: float
) -> list[dict[str, Any]]:
    """Decode + predict one drawing at a time, then batches of 32, on 1 torch thread; then
    one drawing at a time again, each after a 1 ms pause.

    One thread because that is what a TorchServe worker gets on this machine: on 2 shared
    cores a second OpenMP thread makes the model several times slower, not faster. The pause
    row is the lone request's situation: the same call right after the CPU has idled, which
    on the shared virtual machines measured here runs markedly slower than back to back.
    """
    predictor = MNISTPredictor(model_path, device="cpu")
    count = len(payloads)
    entries = []
    torch.set_num_threads(1)
    for batch, pause_s in ((1, 0.0), (BATCH_SIZE, 0.0), (1, IDLE_PAUSE_S)):

        def one_call(index: int, batch: int = batch) -> None:
            chunk = [payloads[(index * batch + k) % count] for k in range(batch)]
            images = [decode_image(payload.body) for payload in chunk]
            if batch == 1:
                predictor.predict(images[0])
            else:
                predictor.predict_batch(images)

        _bounded_timings(one_call, 20, max_seconds)
        calls = max(max_calls // batch, 5)
        timings = _bounded_timings(one_call, calls, max_seconds, pause_s)
        name = "in-process single" if batch == 1 else f"in-process batch {batch}"
        entry = {
            "name": f"{name}, after a {pause_s * 1000:g} ms pause" if pause_s else name,
            "kind": "in-process",
            "protocol": "python",
            "concurrency": 1,
            "batch_size": batch,
            "pause_ms": pause_s * 1000,
            "torch_threads": 1,
            **_latency_summary(timings, batch),
        }
        entries.append(entry)
    return entries


def measure_stages(
    model_path: Path, payloads: Sequence[Payload], max_seconds: float
) -> dict[str, float]:
    """Median microseconds per image of each step a served request also pays for."""
    torch.set_num_threads(1)
    model = load_torchscript(model_path)
    images = [decode_image(payload.body) for payload in payloads]
    pixels = [to_mnist_pixels(image) for image in images]
    tensors = [normalise(values) for values in pixels]
    batch = torch.stack([tensors[k % len(tensors)] for k in range(BATCH_SIZE)])
    count = len(payloads)
    budget = max_seconds / 5

    def forward(inputs: torch.Tensor) -> None:
        with torch.inference_mode():
            model(inputs)

    stages = {
        "decode_png": lambda i: decode_image(payloads[i % count].body),
        "mnist_preprocess": lambda i: to_mnist_pixels(images[i % count]),
        "normalise": lambda i: normalise(pixels[i % count]),
        "model_batch_1": lambda i: forward(tensors[i % count].unsqueeze(0)),
    }
    medians = {
        name: 1000.0 * float(np.median(_bounded_timings(work, 2000, budget)))
        for name, work in stages.items()
    }
    per_batch = np.median(_bounded_timings(lambda _: forward(batch), 500, budget))
    medians[f"model_per_image_in_batch_{BATCH_SIZE}"] = 1000.0 * float(per_batch) / BATCH_SIZE
    return {f"{name}_us": round(value, 1) for name, value in medians.items()}
