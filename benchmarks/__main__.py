"""`python -m benchmarks [--quick]`: the in-process predictor, REST and gRPC through a private
TorchServe over a concurrency sweep, TorchServe's cold start and the training speed, side by
side in one run.

Writes `benchmark.json` (every figure), `benchmark.md` (tables and the targets) and
`benchmark.png` (throughput and latency against concurrency) into the results directory.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.inprocess import measure_predictor
from benchmarks.loadgen import DRAWING_STYLE, LoadSpec, Payload, load_payloads
from benchmarks.served import LABELS, measure, running, warm_up
from config import PROJECT_ROOT, get_settings
from serving.archive import build_archive
from training.train import HISTORY_FILE

Entry = dict[str, Any]


@dataclass(frozen=True)
class Plan:
    """How much a run measures: drawings sent, callers of the sweep, seconds per point."""

    drawings: int
    concurrency: tuple[int, ...]
    seconds: float
    # The JVM's JIT needs tens of seconds under load to reach its steady cost per request.
    warmup_s: float
    in_process_s: float
    # Arguments of `python -m training` when the training speed has to be measured here.
    training_args: tuple[str, ...]


QUICK = Plan(64, (1, 8, 32), 2.0, 4.0, 1.0, ("--epochs", "1", "--train-subset", "10000"))
FULL = Plan(256, (1, 2, 4, 8, 16, 32, 64), 6.0, 30.0, 5.0, ())


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    settings = get_settings()
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="fewer, shorter points: about a minute"
    )
    parser.add_argument("--model-path", type=Path, default=settings.torchscript_path)
    parser.add_argument("--results-dir", type=Path, default=settings.results_dir)
    parser.add_argument("--data-dir", type=Path, default=settings.data_dir)
    parser.add_argument(
        "--training-history",
        type=Path,
        help="training speed from this history of `make train` (default: RESULTS_DIR/"
        "training_history.json); without one, a short training run measures it",
    )
    return parser.parse_args(argv)


def _run_module(*args: str) -> None:
    subprocess.run([sys.executable, "-m", *args], check=True, cwd=PROJECT_ROOT)


def ensure_model(model_path: Path, data_dir: Path, results_dir: Path, quick: bool) -> None:
    """Train the model first (one epoch in a quick run) when there is none yet."""
    if model_path.is_file():
        return
    print(f"No model at {model_path}: training one first.", flush=True)
    epochs = ["--epochs", "1"] if quick else []
    _run_module(
        *("training", "--mode", "train", "--model-path", str(model_path), *epochs),
        *("--data-dir", str(data_dir), "--results-dir", str(results_dir)),
    )


def training_entry(history: Path, plan: Plan, data_dir: Path, workdir: Path) -> Entry:
    """Training speed from a training history (`make train` writes one), or else from a short
    training run of its own."""
    source = f"the history in {history}"
    if not history.is_file():
        print("== no training history: a short training run measures the speed", flush=True)
        model = workdir / "training" / "mnist_cnn.pt"
        _run_module(
            *("training", "--mode", "train", "--model-path", str(model), *plan.training_args),
            *("--data-dir", str(data_dir), "--results-dir", str(model.parent)),
        )
        history = model.parent / HISTORY_FILE
        source = "measured by this run: " + (" ".join(plan.training_args) or "default settings")
    figures = json.loads(history.read_text())
    keys = ("images_per_second", "seconds_to_99", "final_test_accuracy", "device", "threads")
    return {
        "name": "training",
        "kind": "training",
        "source": source,
        "epochs": len(figures.get("epochs", [])),
        **{key: figures.get(key) for key in keys},
    }


def measure_served(
    mar: Path, workdir: Path, plan: Plan, payloads: Sequence[Payload]
) -> list[Entry]:
    """Cold start, then REST and gRPC at every concurrency of the plan, on one TorchServe."""
    print("== TorchServe as configured by the repository, on private ports", flush=True)
    with running(mar, workdir / "torchserve") as instance:
        entries: list[Entry] = [
            {"name": "cold start", "kind": "cold-start", "cold_start_s": instance.cold_start_s}
        ]
        print(f"   ready after {instance.cold_start_s:.1f} s; warming up", flush=True)
        warm_up(instance, plan.warmup_s, payloads)
        for concurrency in plan.concurrency:
            # REST and gRPC back to back, so each pair the report compares shares its moment.
            for protocol in LABELS:
                spec = LoadSpec(concurrency, plan.seconds, warmup_requests=max(20, concurrency))
                entries.append(measure(instance, protocol, spec, payloads))
                print(report.one_line(entries[-1]), flush=True)
    return entries


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    plan = QUICK if args.quick else FULL
    started = datetime.now(timezone.utc)
    machine = report.machine_info()
    if not (args.data_dir / "MNIST" / "raw").is_dir():
        _run_module("training.data", "--data-dir", str(args.data_dir))
    ensure_model(args.model_path, args.data_dir, args.results_dir, args.quick)
    payloads = load_payloads(plan.drawings, args.data_dir)
    history = args.training_history or args.results_dir / HISTORY_FILE
    with tempfile.TemporaryDirectory(prefix="mnist-bench-") as tmp:
        workdir = Path(tmp)
        print("== in-process MNISTPredictor, 1 torch thread", flush=True)
        entries = measure_predictor(args.model_path, payloads, plan.in_process_s)
        for entry in entries:
            print(report.one_line(entry), flush=True)
        mar = build_archive(args.model_path, workdir / "archive", get_settings().model_name)
        entries += measure_served(mar, workdir, plan, payloads)
        entries.append(training_entry(history, plan, args.data_dir, workdir))
    report.add_ratios(entries)
    return {
        "date": started.isoformat(timespec="seconds"),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "machine": machine,
        "setup": {
            "model_path": str(args.model_path),
            "drawings": len(payloads),
            "drawing_style": DRAWING_STYLE,
            **asdict(plan),
        },
        "configurations": entries,
        "targets": report.evaluate_targets(entries),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results = run_benchmark(args)
    paths = report.write_all(results, args.results_dir)
    for target in results["targets"]:
        status = {True: "met", False: "NOT met", None: "not measured"}[target["met"]]
        print(f"{target['target']:<26} {target['goal']:<30} {target['measured']:<36} {status}")
    print("Wrote " + ", ".join(str(path) for path in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
