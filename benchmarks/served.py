"""A private TorchServe for the benchmark, and one measured load against it.

Every instance listens on free ports of 127.0.0.1 and keeps its model store, logs, TMPDIR and
key file under its own folder, so it never meets the developer's `make serve` instance, and it
is always stopped again, even on failure.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import requests
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.loadgen import LoadSpec, Payload, run_grpc, run_rest
from config import Settings, load_settings
from serving import server
from serving.client import TokenStore

LABELS = {"rest": "REST", "grpc": "gRPC"}


@dataclass
class Instance:
    """A running TorchServe: how to reach it, how long it took to start, its processes."""

    settings: Settings
    frontend: psutil.Process
    cold_start_s: float
    tokens: TokenStore

    def headers(self) -> dict[str, str]:
        key = self.tokens.key("inference")
        return {"Authorization": f"Bearer {key}"} if key else {}

    def grpc_metadata(self) -> list[tuple[str, str]]:
        key = self.tokens.key("inference")
        return [("authorization", f"Bearer {key}")] if key else []

    def cpu_seconds(self) -> dict[str, float]:
        """CPU used so far by the Java frontend and by all its Python workers together."""
        workers = 0.0
        for child in self.frontend.children(recursive=True):
            with suppress(psutil.NoSuchProcess):  # a worker restarted meanwhile
                workers += _cpu_seconds(child)
        return {"frontend": _cpu_seconds(self.frontend), "worker": workers}

    def batch_counts(self) -> dict[int, float] | None:
        """Batches the handler has run so far, per batch size (mnist_handler_batches_total);
        None, said on the console, when the metrics API does not answer."""
        try:
            response = requests.get(f"{self.settings.metrics_url}/metrics", timeout=5)
            response.raise_for_status()
        except requests.RequestException as error:
            print(f"   batch sizes unknown: {error}", flush=True)
            return None
        return batch_counts(response.text)

    def load(
        self,
        protocol: str,
        spec: LoadSpec,
        payloads: Sequence[Payload],
        on_start: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """One closed-loop load over `protocol`; the generator's summary of it."""
        if protocol == "rest":
            url = f"{self.settings.inference_url}/predictions/{self.settings.model_name}"
            run = run_rest(url, self.headers(), payloads, spec, on_start)
        else:
            name, metadata = self.settings.model_name, self.grpc_metadata()
            run = run_grpc(self.settings.grpc_target, name, metadata, payloads, spec, on_start)
        return asyncio.run(run).summary()


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def batch_counts(prometheus_text: str) -> dict[int, float]:
    """mnist_handler_batches_total per batch_size label, summed over workers, from Prometheus
    text (prometheus_client names a counter's family without its _total)."""
    counts: dict[int, float] = {}
    for family in text_string_to_metric_families(prometheus_text):
        if family.name != "mnist_handler_batches":
            continue
        for sample in family.samples:
            if "batch_size" in sample.labels and sample.name.endswith("_total"):
                size = int(sample.labels["batch_size"])
                counts[size] = counts.get(size, 0.0) + sample.value
    return counts


def mean_batch_size(before: Mapping[int, float], after: Mapping[int, float]) -> float | None:
    """Requests per forward pass between two `batch_counts` readings; None without batches."""
    batches = {size: count - before.get(size, 0.0) for size, count in after.items()}
    total = sum(batches.values())
    return sum(size * count for size, count in batches.items()) / total if total else None


def measure(
    instance: Instance, protocol: str, spec: LoadSpec, payloads: Sequence[Payload]
) -> dict[str, Any]:
    """One measured load with its CPU cost per request split by process and its batch size."""
    cpu_before: dict[str, float] = {}
    batches: dict[str, dict[int, float] | None] = {}

    def on_start() -> None:
        cpu_before.update(instance.cpu_seconds())
        batches["before"] = instance.batch_counts()

    summary = instance.load(protocol, spec, payloads, on_start)
    cpu_after = instance.cpu_seconds()
    before, after = batches.get("before"), instance.batch_counts()
    ms_per_request = 1000.0 / max(summary["requests"], 1)
    return {
        "name": f"{LABELS[protocol]} c={spec.concurrency}",
        "kind": "served",
        "protocol": protocol,
        "concurrency": spec.concurrency,
        **summary,
        "mean_batch_size": mean_batch_size(before, after) if before and after else None,
        **{
            f"{part}_cpu_ms_per_request": (seconds - cpu_before[part]) * ms_per_request
            for part, seconds in cpu_after.items()
        },
    }


def warm_up(instance: Instance, seconds: float, payloads: Sequence[Payload]) -> None:
    """Load REST, then gRPC, with 32 callers, so the JVM's JIT has compiled both hot paths.

    A server runs far longer than a benchmark; without this the first rows would measure the
    JVM interpreting (see docs/performance.md).
    """
    for protocol in LABELS:
        instance.load(protocol, LoadSpec(32, seconds / 2), payloads)


@contextmanager
def running(
    mar: Path, workdir: Path, overrides: Mapping[str, str] | None = None
) -> Iterator[Instance]:
    """Start TorchServe with the repository's config.properties (and `overrides`) serving `mar`
    and wait until every worker is READY; always stop it, on Ctrl-C and SIGTERM too. The cold
    start is measured to about half a second, the interval at which `serving.server` polls for
    READY."""
    store = workdir / "model_store"
    store.mkdir(parents=True, exist_ok=True)
    settings = load_settings(server.private_instance_env(workdir, store, mar.stem), env_file=None)
    shutil.copy(mar, settings.mar_path)
    started = time.perf_counter()
    with _sigterm_as_exit():
        try:
            handle = server.start_torchserve(settings, overrides=overrides)
            cold_start = time.perf_counter() - started
            tokens = TokenStore(settings.key_file, settings.management_url, timeout_s=2.0)
            yield Instance(settings, psutil.Process(handle.pid), cold_start, tokens)
        finally:
            server.stop(settings)


@contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """SIGTERM raises SystemExit meanwhile, so that `finally` blocks run: TorchServe starts in
    a session of its own and would outlive a benchmark killed by Python's default handler.
    Signal handlers belong to the main thread; elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)
