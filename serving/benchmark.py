"""`python -m serving.benchmark [--quick]`: the in-process predictor, REST and gRPC through a
private TorchServe, TorchServe's cold start and the training speed, side by side in one run.

Writes `benchmark.json` (one entry per configuration), `benchmark.md` (tables, ratios to the
in-process predictor, targets and a profile of where a request's time goes) and
`benchmark.png` into the results directory. Every TorchServe it starts listens on free ports of
127.0.0.1 with its own TMPDIR and logs, and is stopped before the run ends, even on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from serving.bench import analysis, report
from serving.bench.analysis import LABELS
from serving.bench.loadgen import LoadSpec, Payload, run_grpc, run_rest
from serving.bench.plan import FULL, QUICK, SHIPPED, SHIPPED_UNBATCHED, Plan, tuning_variants
from serving.bench.served import measure_variant, shipped_runs, tuning_runs, unbatched_runs
from serving.server import free_ports
from serving.settings import PROJECT_ROOT, get_settings
from training.drawings import drawings

Entry = dict[str, Any]
DRAWING_STYLE = "canvas_transparent"
BASELINE_START_TIMEOUT_S = 30.0
LOAD_GENERATOR = (
    "asyncio + aiohttp (REST, a keep-alive connection per caller), grpc.aio (gRPC, every call "
    "on one HTTP/2 connection); closed loop, in the benchmark process, separate from TorchServe"
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    settings = get_settings()
    parser = argparse.ArgumentParser(prog="python -m serving.benchmark", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short run (under a minute)")
    parser.add_argument("--model-path", type=Path, default=settings.torchscript_path)
    parser.add_argument("--results-dir", type=Path, default=settings.results_dir)
    parser.add_argument("--data-dir", type=Path, default=settings.data_dir)
    parser.add_argument(
        "--training-history",
        type=Path,
        default=settings.results_dir / "training_history.json",
        help="read training speed from here (written by `make train`)",
    )
    return parser.parse_args(argv)


def _run_module(args: list[str]) -> None:
    subprocess.run([sys.executable, "-m", *args], check=True, cwd=PROJECT_ROOT)


def ensure_model(model_path: Path, data_dir: Path, results_dir: Path, plan: Plan) -> Path:
    """The trained TorchScript model; trains one (1 epoch in quick mode) if there is none."""
    if model_path.is_file():
        return model_path
    print(f"No model at {model_path}: training one first.", flush=True)
    _run_module(["training.data", "--data-dir", str(data_dir)])
    command = ["training", "--mode", "train", "--model-path", str(model_path)]
    command += ["--data-dir", str(data_dir), "--results-dir", str(results_dir)]
    _run_module(command + (["--epochs", "1"] if plan.quick else []))
    return model_path


def load_payloads(count: int, data_dir: Path) -> list[Payload]:
    """MNIST test digits drawn like a browser canvas (black ink on transparent PNG)."""
    if not (data_dir / "MNIST" / "raw").is_dir():
        _run_module(["training.data", "--data-dir", str(data_dir)])
    return [
        Payload(body, label) for body, label in drawings(DRAWING_STYLE, count, data_dir=data_dir)
    ]


def build_archive(model_path: Path, export_dir: Path) -> Path:
    """A fresh .mar of this model with the repository's handler and model-config.yaml."""
    from serving.archive import build_archive as build

    return build(model_path, export_dir, get_settings().model_name)


def measure_loadgen(plan: Plan, payloads: Sequence[Payload]) -> list[Entry]:
    """What the load generator does against a server that answers instantly."""
    http_port, grpc_port = free_ports(2)
    command = [sys.executable, "-m", "serving.bench.baseline_server", str(http_port)]
    server = subprocess.Popen(
        [*command, str(grpc_port)], stdout=subprocess.PIPE, cwd=PROJECT_ROOT, text=True
    )
    try:
        _wait_for_line(server, "ready", BASELINE_START_TIMEOUT_S)
        entries = []
        for protocol in ("rest", "grpc"):
            for concurrency in (1, 32):
                spec = LoadSpec(concurrency, plan.max_requests, plan.loadgen_seconds, 20)
                if protocol == "rest":
                    url = f"http://127.0.0.1:{http_port}/predictions/baseline"
                    run = run_rest(url, {}, payloads, spec)
                else:
                    run = run_grpc(f"127.0.0.1:{grpc_port}", "baseline", [], payloads, spec)
                summary = asyncio.run(run).summary()
                entries.append(
                    {
                        "name": f"load generator alone {LABELS[protocol]} c={concurrency}",
                        "kind": "loadgen",
                        "protocol": protocol,
                        "concurrency": concurrency,
                        **summary,
                    }
                )
                print(report.one_line(entries[-1]), flush=True)
        return entries
    finally:
        server.kill()
        server.wait(timeout=10)


def _wait_for_line(process: subprocess.Popen[str], expected: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.strip() == expected:
            return
        if not line and process.poll() is not None:
            break
    raise RuntimeError(f"baseline server did not start (exit code {process.poll()})")


def training_entry(history_path: Path, plan: Plan, data_dir: Path, workdir: Path) -> Entry:
    """Training speed from `make train`'s history; in a full run, trains (measured) if absent."""
    source = "results of `make train`"
    if not history_path.is_file() and not plan.quick:
        print("== no training history: training the default model to measure it", flush=True)
        out = workdir / "training"
        command = ["training", "--mode", "train", "--model-path", str(out / "mnist_cnn.pt")]
        _run_module([*command, "--data-dir", str(data_dir), "--results-dir", str(out)])
        history_path, source = out / "training_history.json", "measured by this run"
    if not history_path.is_file():
        note = f"{history_path} not found; run `make train` (a full run trains if absent)"
        return {"name": "training", "kind": "training", "available": False, "note": note}
    history = json.loads(history_path.read_text())
    keys = (
        "images_per_second",
        "seconds_to_99",
        "epoch_reaching_99",
        "final_test_accuracy",
        "total_seconds",
        "seconds_per_epoch",
        "device",
        "threads",
    )
    return {
        "name": "training",
        "kind": "training",
        "available": True,
        "source": source,
        "epochs": len(history.get("epochs", [])),
        **{key: history.get(key) for key in keys},
    }


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    plan = QUICK if args.quick else FULL
    started = datetime.now(timezone.utc)
    machine = report.machine_info()
    model_path = ensure_model(args.model_path, args.data_dir, args.results_dir, plan)
    payloads = load_payloads(plan.drawings, args.data_dir)
    entries: list[Entry] = []
    with tempfile.TemporaryDirectory(prefix="mnist-bench-") as tmp:
        workdir = Path(tmp)
        mar = build_archive(model_path, workdir / "archive")
        entries += _in_process(model_path, payloads, plan)
        stages = _stages(model_path, payloads, plan)
        worker = profile_worker(mar, payloads, workdir, plan)
        entries += measure_loadgen(plan, payloads)
        entries += measure_variant(
            SHIPPED, mar, workdir, plan, payloads, shipped_runs(plan), "main", plan.warmup_seconds
        )
        if not plan.quick:
            runs, warmup = tuning_runs(plan), plan.tuning_warmup_seconds
            entries += measure_variant(
                SHIPPED_UNBATCHED,
                mar,
                workdir,
                plan,
                payloads,
                unbatched_runs(plan),
                "tuning",
                warmup,
            )
            for variant in tuning_variants():
                entries += measure_variant(
                    variant, mar, workdir, plan, payloads, runs, "tuning", warmup
                )
        entries.append(training_entry(args.training_history, plan, args.data_dir, workdir))
    analysis.add_ratios(entries)
    return {
        "date": started.isoformat(timespec="seconds"),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "load_average_at_end": os.getloadavg()[0],
        "mode": "quick" if plan.quick else "full",
        "machine": machine,
        "setup": {
            "model_path": str(model_path),
            "drawings": len(payloads),
            "drawing_style": DRAWING_STYLE,
            "mean_drawing_bytes": sum(len(p.body) for p in payloads) / len(payloads),
            "load_generator": LOAD_GENERATOR,
        },
        "stages_us": stages,
        "worker_profile": worker,
        "configurations": entries,
        "targets": analysis.evaluate_targets(entries, worker),
    }


def profile_worker(mar: Path, payloads: Sequence[Payload], workdir: Path, plan: Plan) -> dict:
    """The worker's Python path under cProfile, in its own process (see worker_profile)."""
    drawings = workdir / "drawings"
    drawings.mkdir(parents=True, exist_ok=True)
    for index, payload in enumerate(payloads):
        (drawings / f"{index:04d}.png").write_bytes(payload.body)
    metrics_yaml = PROJECT_ROOT / "handler" / "metrics.yaml"
    command = [sys.executable, "-m", "serving.bench.worker_profile", str(mar), str(metrics_yaml)]
    command += [str(drawings), "--seconds", str(plan.in_process_seconds * 2)]
    print("== worker's Python path under cProfile", flush=True)
    completed = subprocess.run(
        command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _in_process(model_path: Path, payloads: Sequence[Payload], plan: Plan) -> list[Entry]:
    from serving.bench.inprocess import measure_predictor

    print("== in-process MNISTPredictor", flush=True)
    entries = measure_predictor(
        model_path, payloads, plan.in_process_calls, plan.in_process_seconds
    )
    for entry in entries:
        print(report.one_line(entry), flush=True)
    return entries


def _stages(model_path: Path, payloads: Sequence[Payload], plan: Plan) -> dict[str, float]:
    from serving.bench.inprocess import measure_stages

    return measure_stages(model_path, payloads, plan.in_process_seconds)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    """Turn SIGTERM into SystemExit so every TorchServe is stopped by its `finally`."""
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    results = run_benchmark(args)
    paths = report.write_all(results, args.results_dir)
    print(report.targets_summary(results))
    print("Wrote " + ", ".join(str(path) for path in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
