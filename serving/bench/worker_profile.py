"""Profile the worker's Python path in-process: TorchServe's own model loader and `Service`
around the archived handler, fed the same PNG drawings, timed and then run under cProfile.

This is everything a TorchServe worker does per batch except reading and writing its socket,
so it splits the worker's time into decode, preprocessing, model, postprocessing, metrics and
TorchServe's glue. It runs in its own process (it unpacks the .mar, changes directory and sets
up logging as the worker does): `python -m serving.bench.worker_profile MAR METRICS_YAML`.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import logging
import os
import pstats
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

# (file name, function name) -> the part of the worker's time it stands for (cumulative).
PARTS = {
    ("preprocessing.py", "decode_image"): "decode",
    ("preprocessing.py", "preprocess"): "preprocess",
    ("mnist_handler.py", "inference"): "model",
    ("mnist_handler.py", "postprocess"): "postprocess",
}
TOTAL = ("service.py", "predict")
METRICS_DIR = f"ts{os.sep}metrics{os.sep}"


def _batch(bodies: list[bytes], start: int, size: int) -> list[dict[str, Any]]:
    """A batch as TorchServe's frontend hands it to the worker: raw body per request."""
    return [
        {
            "requestId": f"request-{start + k}".encode(),
            "headers": [],
            "parameters": [
                {
                    "name": "body",
                    "contentType": "application/octet-stream",
                    "value": bodies[(start + k) % len(bodies)],
                }
            ],
        }
        for k in range(size)
    ]


def _load_service(mar: Path, metrics_yaml: Path, workdir: Path, batch_size: int) -> Any:
    from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
    from ts.model_loader import TsModelLoader

    with zipfile.ZipFile(mar) as archive:
        archive.extractall(workdir)
    manifest = json.loads((workdir / "MAR-INF" / "MANIFEST.json").read_text())
    os.chdir(workdir)
    sys.path.insert(0, str(workdir))
    metrics = MetricsCacheYamlImpl(config_file_path=str(metrics_yaml))
    metrics.initialize_cache()
    metrics.model_name = manifest["model"]["modelName"]
    service = TsModelLoader().load(
        manifest["model"]["modelName"],
        str(workdir),
        manifest["model"]["handler"],
        None,
        batch_size,
        metrics_cache=metrics,
    )
    service.set_cl_socket(None)
    return service


def _timed(service: Any, bodies: list[bytes], batch_size: int, seconds: float) -> float:
    """Median milliseconds per request of `service.predict` on batches of `batch_size`."""
    timings = []
    deadline = time.perf_counter() + seconds
    index = 0
    while time.perf_counter() < deadline and len(timings) < 20_000:
        batch = _batch(bodies, index, batch_size)
        started = time.perf_counter()
        service.predict(batch)
        timings.append((time.perf_counter() - started) / batch_size)
        index += batch_size
    timings.sort()
    return 1000.0 * timings[len(timings) // 2]


def _metrics_time(stats: dict[Any, Any]) -> float:
    """Cumulative time of TorchServe metric calls made from outside its metrics package."""
    total = 0.0
    for (filename, _, _), (_, _, _, _, callers) in stats.items():
        if METRICS_DIR not in filename:
            continue
        for caller, (_, _, _, cumulative) in callers.items():
            if METRICS_DIR not in caller[0]:
                total += cumulative
    return total


def _shares(service: Any, bodies: list[bytes], batch_size: int, seconds: float) -> dict:
    """Fractions of `Service.predict` spent in each part, from cProfile."""
    profiler = cProfile.Profile()
    deadline = time.perf_counter() + seconds
    index = 0
    profiler.enable()
    while time.perf_counter() < deadline:
        service.predict(_batch(bodies, index, batch_size))
        index += batch_size
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    cumulative: dict[str, float] = {}
    total = 0.0
    for (filename, _, function), (_, _, _, ct, _) in stats.items():
        name = (Path(filename).name, function)
        if name == TOTAL and "ts" in Path(filename).parts:
            total += ct
        elif name in PARTS:
            cumulative[PARTS[name]] = cumulative.get(PARTS[name], 0.0) + ct
    cumulative["metrics"] = _metrics_time(stats)
    shares = {part: value / total for part, value in cumulative.items()} if total else {}
    shares["torchserve_glue"] = max(0.0, 1.0 - sum(shares.values()))
    return shares


def profile_worker(mar: Path, metrics_yaml: Path, bodies: list[bytes], seconds: float) -> dict:
    """Per-request milliseconds of the worker's Python path at batch 1 and 8, split by part."""
    logging.basicConfig(level=logging.INFO, stream=open(os.devnull, "w"))  # noqa: SIM115
    results = {}
    with tempfile.TemporaryDirectory(prefix="mnist-worker-profile-") as tmp:
        service = _load_service(mar, metrics_yaml, Path(tmp), batch_size=8)
        for batch_size in (1, 8):
            per_request = _timed(service, bodies, batch_size, seconds / 2)
            shares = _shares(service, bodies, batch_size, seconds / 2)
            results[f"batch_{batch_size}"] = {
                "ms_per_request": per_request,
                **{f"{part}_ms": share * per_request for part, share in shares.items()},
            }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mar", type=Path)
    parser.add_argument("metrics_yaml", type=Path)
    parser.add_argument("drawings", type=Path, help="a directory of PNG files")
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    bodies = [path.read_bytes() for path in sorted(args.drawings.glob("*.png"))]
    mar, metrics_yaml = args.mar.resolve(), args.metrics_yaml.resolve()
    print(json.dumps(profile_worker(mar, metrics_yaml, bodies, args.seconds)))


if __name__ == "__main__":
    main()
