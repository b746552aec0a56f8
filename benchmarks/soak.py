"""Soak test: steady load on a private TorchServe for a set time, watching for slow leaks.

``python -m benchmarks.soak [--minutes M] [--threads N]`` (``make soak``, with
``SOAK_MINUTES=M`` for ``--minutes``). Reports requests, errors and latency percentiles, the
RSS, open files and threads of the JVM and of each worker at the start and the end, and the
growth of each log file; flags growth beyond the bounds below. Writes ``results/soak.json``
and ``results/soak.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from benchmarks.loadgen import load_payloads
from benchmarks.served import Instance, running
from config import PROJECT_ROOT, get_settings
from serving.client import TorchServeClient, TorchServeError

DEFAULT_MINUTES = 10.0
DEFAULT_THREADS = 4
# Requests are counted only after this warm-up, so the JIT and first allocations are not growth.
WARMUP_S = 5.0
# What counts as a leak: memory, files or threads that keep growing. They are compared between
# the middle and the end of the run, so a JVM heap that grows to its working size early on is
# not taken for a leak; the bounds catch steady growth, not noise.
MAX_RSS_GROWTH = 0.1
MAX_FILES_GROWTH = 10
MAX_THREADS_GROWTH = 10
# Per-request log lines belong in access_log.log only; any other log may grow this much.
MAX_OTHER_LOG_BYTES_PER_REQUEST = 1.0
LOG_FILES = ("access_log.log", "ts_log.log", "model_log.log", "torchserve.out")
FIGURES = ("rss_mib", "open_files", "threads")


@dataclass
class Tally:
    """What the load threads saw; one lock for all of it."""

    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def process_snapshot(instance: Instance) -> dict[str, Any]:
    """RSS, open files and threads of the JVM and of each worker."""

    def one(process: psutil.Process) -> dict[str, Any]:
        with process.oneshot():
            return {
                "pid": process.pid,
                "rss_mib": round(process.memory_info().rss / 2**20, 1),
                "open_files": process.num_fds(),
                "threads": process.num_threads(),
            }

    workers = []
    for child in instance.frontend.children(recursive=True):
        with suppress(psutil.NoSuchProcess):
            workers.append(one(child))
    return {"jvm": one(instance.frontend), "workers": workers}


def log_sizes(log_dir: Path) -> dict[str, int]:
    return {
        name: (log_dir / name).stat().st_size for name in LOG_FILES if (log_dir / name).exists()
    }


def _load(
    instance: Instance,
    bodies: Sequence[bytes],
    thread: int,
    until: float,
    tally: Tally,
    stop: threading.Event,
) -> None:
    """One caller: REST on even threads, gRPC on odd ones, through the project's client."""
    with TorchServeClient(instance.settings) as client:
        index = thread
        while time.monotonic() < until and not stop.is_set():
            started = time.perf_counter()
            try:
                client.predict(bodies[index % len(bodies)], use_grpc=thread % 2 == 1)
            except TorchServeError as error:
                with tally.lock:
                    tally.errors.append(f"{type(error).__name__}: {error}")
            else:
                with tally.lock:
                    tally.latencies_ms.append((time.perf_counter() - started) * 1000)
            index += 1


def soak(
    instance: Instance, bodies: Sequence[bytes], seconds: float, threads: int
) -> dict[str, Any]:
    """Warm up, snapshot, load for `seconds`, snapshot again; the report with its flags."""
    warm = Tally()
    _run_threads(instance, bodies, WARMUP_S, threads, warm)
    log_dir = instance.settings.log_dir
    start, logs_start = process_snapshot(instance), log_sizes(log_dir)
    tally = Tally()
    began = time.monotonic()
    _run_threads(instance, bodies, seconds / 2, threads, tally)
    middle = process_snapshot(instance)
    _run_threads(instance, bodies, seconds / 2, threads, tally)
    elapsed = time.monotonic() - began
    time.sleep(1.0)  # the last lines reach the logs
    end, logs_end = process_snapshot(instance), log_sizes(log_dir)
    requests = len(tally.latencies_ms) + len(tally.errors)
    latencies = np.asarray(tally.latencies_ms or [0.0])
    growth = {name: logs_end[name] - logs_start.get(name, 0) for name in logs_end}
    report = {
        "seconds": round(elapsed, 1),
        "threads": threads,
        "requests": requests,
        "errors": len(tally.errors),
        "error_samples": tally.errors[:5],
        "requests_per_s": round(requests / elapsed, 1),
        "latency_ms": {
            f"p{q}": round(float(np.percentile(latencies, q)), 2) for q in (50, 90, 99, 99.9)
        }
        | {"max": round(float(latencies.max()), 2)},
        "processes": {"start": start, "middle": middle, "end": end},
        "log_growth_bytes": growth,
        "log_bytes_per_request": {
            name: round(grown / max(requests, 1), 2) for name, grown in growth.items()
        },
    }
    report["flags"] = flags(report)
    return report


def _run_threads(
    instance: Instance, bodies: Sequence[bytes], seconds: float, threads: int, tally: Tally
) -> None:
    """Load from `threads` callers for `seconds`; on an interrupt (Ctrl-C, SIGTERM) the callers
    stop after their current request, before the server is stopped under them."""
    until, stop = time.monotonic() + seconds, threading.Event()
    callers = [
        threading.Thread(target=_load, args=(instance, bodies, thread, until, tally, stop))
        for thread in range(threads)
    ]
    try:
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join()
    finally:
        stop.set()
        for caller in callers:
            if caller.is_alive():
                caller.join()


def flags(report: dict[str, Any]) -> list[str]:
    """Each growth beyond its bound in the second half of the run, in words; empty when the
    soak looks clean."""
    found = []
    if report["errors"]:
        found.append(f"{report['errors']} requests failed")
    start, end = report["processes"]["middle"], report["processes"]["end"]
    pairs = [("JVM", start["jvm"], end["jvm"])]
    first = report["processes"]["start"]
    if [w["pid"] for w in first["workers"]] != [w["pid"] for w in end["workers"]]:
        found.append("a worker was restarted during the soak")
    else:
        pairs += [
            (f"worker {a['pid']}", a, b)
            for a, b in zip(start["workers"], end["workers"], strict=True)
        ]
    for name, before, after in pairs:
        if after["rss_mib"] > before["rss_mib"] * (1 + MAX_RSS_GROWTH):
            found.append(f"{name} RSS grew from {before['rss_mib']} to {after['rss_mib']} MiB")
        if after["open_files"] - before["open_files"] > MAX_FILES_GROWTH:
            found.append(
                f"{name} open files grew from {before['open_files']} to {after['open_files']}"
            )
        if after["threads"] - before["threads"] > MAX_THREADS_GROWTH:
            found.append(f"{name} threads grew from {before['threads']} to {after['threads']}")
    for name, per_request in report["log_bytes_per_request"].items():
        if name != "access_log.log" and per_request > MAX_OTHER_LOG_BYTES_PER_REQUEST:
            found.append(f"{name} grows {per_request} bytes per request")
    return found


def markdown(report: dict[str, Any]) -> str:
    """The report for people."""
    latency = report["latency_ms"]
    lines = [
        "# Soak run",
        "",
        f"{report['seconds']} s, {report['threads']} callers (REST and gRPC), "
        f"{report['requests']} requests ({report['requests_per_s']}/s), "
        f"{report['errors']} errors.",
        "",
        "Latency (ms): " + ", ".join(f"{name} {value}" for name, value in latency.items()),
        "",
        "| Process | RSS MiB start -> middle -> end | open files | threads |",
        "|---|---|---|---|",
    ]
    moments = [report["processes"][moment] for moment in ("start", "middle", "end")]
    rows = [("JVM", [moment["jvm"] for moment in moments])]
    rows += [
        (f"worker {states[0]['pid']}", list(states))
        for states in zip(*(moment["workers"] for moment in moments), strict=False)
    ]
    for name, states in rows:
        cells = [" -> ".join(str(state[key]) for state in states) for key in FIGURES]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "| Log file | growth (bytes) | bytes per request |", "|---|---|---|"]
    for name, grown in report["log_growth_bytes"].items():
        lines.append(f"| {name} | {grown} | {report['log_bytes_per_request'][name]} |")
    lines += ["", "Flags: " + ("; ".join(report["flags"]) if report["flags"] else "none"), ""]
    return "\n".join(lines)


def archive(model: Path, export_path: Path) -> Path:
    """The .mar of `model`, through the project's own archive command."""
    command = [sys.executable, "-m", "serving.archive", "--model-file", str(model)]
    command += ["--export-path", str(export_path)]
    subprocess.run(command, check=True, cwd=PROJECT_ROOT)
    return export_path / f"{get_settings().model_name}.mar"


def main(argv: list[str] | None = None) -> int:
    settings = get_settings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=DEFAULT_MINUTES)
    parser.add_argument(
        "--threads", type=int, default=DEFAULT_THREADS, help="callers, half REST and half gRPC"
    )
    parser.add_argument("--model", type=Path, default=settings.torchscript_path)
    parser.add_argument("--results", type=Path, default=settings.results_dir)
    args = parser.parse_args(argv)
    if not (args.minutes > 0 and math.isfinite(args.minutes)):
        parser.error("--minutes must be a positive number")
    if args.threads < 2 or args.threads % 2:
        parser.error("--threads must be even and at least 2: half the callers use gRPC")
    if not args.model.is_file():
        print(f"error: no model at {args.model}: run `make train` first")
        return 1
    bodies = [payload.body for payload in load_payloads(64, settings.data_dir)]
    with tempfile.TemporaryDirectory(prefix="soak-") as workdir:
        mar = archive(args.model, Path(workdir) / "archive")
        with running(mar, Path(workdir) / "server") as instance:
            report = soak(instance, bodies, args.minutes * 60, args.threads)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "soak.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.results / "soak.md").write_text(markdown(report))
    print(markdown(report))
    return 1 if report["flags"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
