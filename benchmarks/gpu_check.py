"""`make gpu-check`: the project on a CUDA GPU, end to end, with figures.

Trains one epoch on CUDA, archives the model, serves it from a private TorchServe with one GPU,
shows from TorchServe's own worker log that the workers loaded it on `cuda:N`, and measures
accuracy and latency over REST on canvas drawings of MNIST test digits. Where Java is missing
(TorchServe's frontend cannot run), it runs what can: the handler through TorchServe's Python
handler API with a real worker context, and `MNISTPredictor`, both on CUDA, and says that the
JVM part was not run. Writes results/gpu_check.json.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests
import torch

from benchmarks.loadgen import latency_summary
from benchmarks.served import running
from benchmarks.worker import WorkerContext
from config import PROJECT_ROOT, get_settings
from handler.mnist_handler import MNISTHandler
from model.predictor import MNISTPredictor
from serving.archive import build_archive
from training.drawings import drawings, spread_step

WORKER_DEVICE = re.compile(r"MNIST model \S+ loaded on (\S+)")
# The worker log reaches its file shortly after the worker reports READY.
LOG_WAIT_S = 10.0


def train_one_epoch(model_path: Path) -> str:
    """`python -m training` for one epoch on CUDA; returns its last line (the test accuracy)."""
    command = [
        sys.executable, "-m", "training", "--epochs", "1", "--model-path", str(model_path),
        "--results-dir", str(model_path.parent / "results"),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=PROJECT_ROOT, check=True)
    lines = [line for line in done.stdout.splitlines() if "cuda" in line or "accuracy" in line]
    return "\n".join(lines)


def served_on_gpu(mar: Path, workdir: Path, samples: list[tuple[bytes, int]]) -> dict[str, Any]:
    """A private TorchServe with one GPU: the workers' devices, accuracy and REST latency."""
    with running(mar, workdir, overrides={"number_of_gpu": "1"}) as instance:
        workers = len(instance.frontend.children())  # the JVM starts each worker process
        model_log = worker_log(instance.settings.log_dir / "model_log.log", workers)
        devices = sorted(set(WORKER_DEVICE.findall(model_log)))
        url = f"{instance.settings.inference_url}/predictions/{mar.stem}"
        latencies, correct = [], 0
        started = time.perf_counter()
        for image, label in samples:
            sent = time.perf_counter()
            answer = requests.post(url, data=image, headers=instance.headers(), timeout=30)
            latencies.append((time.perf_counter() - sent) * 1000)
            answer.raise_for_status()
            correct += answer.json()["digit"] == label
        seconds = time.perf_counter() - started
    return {
        "worker_devices": devices,
        "worker_log_lines": [line for line in model_log.splitlines() if "loaded on" in line],
        "accuracy": correct / len(samples),
        "rest_latency": latency_summary(latencies, seconds),
    }


def worker_log(path: Path, workers: int) -> str:
    """The workers' log once each of `workers` said where it loaded the model, or as it is
    after LOG_WAIT_S."""
    deadline = time.monotonic() + LOG_WAIT_S
    while True:
        text = path.read_text() if path.is_file() else ""
        if len(WORKER_DEVICE.findall(text)) >= workers or time.monotonic() > deadline:
            return text
        time.sleep(0.2)


def all_on_cuda(devices: list[str]) -> bool:
    """True when workers reported their device and every one is a CUDA device."""
    return bool(devices) and all(device.startswith("cuda:") for device in devices)


def in_process_on_gpu(model_path: Path, samples: list[tuple[bytes, int]]) -> dict[str, Any]:
    """The handler with TorchServe's worker context (gpu 0), and MNISTPredictor, on CUDA."""
    context = WorkerContext(model_path, version="gpu-check", gpu_id=0)
    handler = MNISTHandler()
    handler.initialize(context.context)
    correct = 0
    latencies = []
    started = time.perf_counter()
    for image, label in samples:
        sent = time.perf_counter()
        [answer] = handler.handle([{"body": image}], context.for_batch(1))
        latencies.append((time.perf_counter() - sent) * 1000)
        correct += answer["digit"] == label
    seconds = time.perf_counter() - started
    predictor = MNISTPredictor(model_path, device="cuda")
    answers = predictor.predict_batch([image for image, _ in samples])
    predictor_correct = sum(
        a.digit == label for a, (_, label) in zip(answers, samples, strict=True)
    )
    return {
        "handler_device": str(handler.device),
        "handler_accuracy": correct / len(samples),
        "handler_latency": latency_summary(latencies, seconds),
        "predictor_device": str(predictor.device),
        "predictor_accuracy": predictor_correct / len(samples),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1000, help="drawings sent (default: 1000)")
    args = parser.parse_args(argv)
    try:
        every = spread_step(args.samples)
    except ValueError as error:
        parser.error(f"--samples {error}")
    if not torch.cuda.is_available():
        print("No CUDA GPU here (torch.cuda.is_available() is False): nothing to check.")
        return 1
    report: dict[str, Any] = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
    print(f"GPU: {report['gpu']}, torch {report['torch']}", flush=True)
    samples = drawings("black_on_white", args.samples, every=every)
    with tempfile.TemporaryDirectory(prefix="mnist-gpu-check-") as workspace:
        workdir = Path(workspace)
        model_path = workdir / "mnist_cnn.pt"
        report["training"] = train_one_epoch(model_path)
        print(report["training"], flush=True)
        mar = build_archive(model_path, workdir / "store", "mnist", "gpu-check")
        if shutil.which("java"):
            report["served"] = served_on_gpu(mar, workdir / "served", samples)
        else:
            report["served"] = "not run: no Java here, so TorchServe's frontend cannot start"
        report["in_process"] = in_process_on_gpu(model_path, samples)
    out = get_settings().results_dir / "gpu_check.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print(f"Written to {out}")
    served = report["served"]
    on_cuda = isinstance(served, str) or all_on_cuda(served["worker_devices"])
    return 0 if on_cuda and report["in_process"]["handler_device"].startswith("cuda") else 1


if __name__ == "__main__":
    raise SystemExit(main())
