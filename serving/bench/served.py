"""Measure one TorchServe configuration: start it, warm it up, drive it with the load
generator at the requested protocols and concurrencies, and record per-process CPU costs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from serving import server
from serving.bench import report
from serving.bench.analysis import LABELS
from serving.bench.instance import Instance, Variant, running
from serving.bench.loadgen import LoadSpec, Payload, run_grpc, run_rest
from serving.bench.plan import Plan

Entry = dict[str, Any]


class Run(NamedTuple):
    """One measured load: protocol, concurrent callers, seconds, report group, keep-alive."""

    protocol: str
    concurrency: int
    seconds: float
    group: str
    keep_alive: bool = True


def _served_entry(instance: Instance, run: Run, plan: Plan, payloads: Sequence[Payload]) -> Entry:
    """One closed-loop load against `instance`, with its CPU cost split by process."""
    warmup = max(20, run.concurrency)
    spec = LoadSpec(run.concurrency, plan.max_requests, run.seconds, warmup_requests=warmup)
    cpu_at_start: dict[str, float] = {}
    batches_at_start: dict[int, float] = {}

    def on_start() -> None:
        cpu_at_start.update(instance.cpu_seconds())
        batches_at_start.update(instance.handler_batches())

    if run.protocol == "rest":
        load = run_rest(
            instance.predict_url,
            instance.headers(),
            payloads,
            spec,
            keep_alive=run.keep_alive,
            on_start=on_start,
        )
    else:
        load = run_grpc(
            instance.grpc_target,
            instance.model_name,
            instance.grpc_metadata(),
            payloads,
            spec,
            on_start=on_start,
        )
    summary = asyncio.run(load).summary()
    cpu_at_end = instance.cpu_seconds()
    batches = _mean_batch_size(batches_at_start, instance.handler_batches())
    requests = max(int(summary["requests"]), 1)
    variant = instance.variant.name
    suffix = "" if run.keep_alive else ", new connection per request"
    return {
        "name": f"{variant} {LABELS[run.protocol]} c={run.concurrency}{suffix}",
        "kind": "served",
        "group": run.group,
        "variant": variant,
        "protocol": run.protocol,
        "concurrency": run.concurrency,
        "keep_alive": run.keep_alive,
        **summary,
        "mean_batch_size": batches,
        **{
            f"{part}_cpu_ms_per_request": 1000.0
            * (cpu_at_end[part] - cpu_at_start.get(part, 0.0))
            / requests
            for part in cpu_at_end
        },
    }


def _warm_up(instance: Instance, seconds: float, plan: Plan, payloads: Sequence[Payload]) -> None:
    """Load REST and gRPC with 32 callers so the JIT compiles the hot paths before anything
    is recorded."""
    spec = LoadSpec(32, plan.max_requests, seconds / 2)
    asyncio.run(run_rest(instance.predict_url, instance.headers(), payloads, spec))
    metadata = instance.grpc_metadata()
    asyncio.run(run_grpc(instance.grpc_target, instance.model_name, metadata, payloads, spec))


def _idle_cpu_percent(instance: Instance, seconds: float = 1.0) -> dict[str, float]:
    """CPU TorchServe burns with no request in flight (% of one core), per process kind."""
    before = instance.cpu_seconds()
    time.sleep(seconds)
    after = instance.cpu_seconds()
    return {part: 100.0 * (after[part] - before[part]) / seconds for part in after}


def _mean_batch_size(before: dict[int, float], after: dict[int, float]) -> float | None:
    """Requests per forward pass during the run, from the handler's HandlerBatches counter."""
    batches = {size: count - before.get(size, 0.0) for size, count in after.items()}
    total = sum(batches.values())
    return sum(size * count for size, count in batches.items()) / total if total else None


def _cold_start_entry(instance: Instance, group: str) -> Entry:
    variant = instance.variant
    return {
        "name": f"{variant.name} cold start",
        "kind": "cold-start",
        "group": group,
        "variant": variant.name,
        "description": variant.description,
        "cold_start_s": instance.cold_start_s,
        "overrides": {
            "properties": variant.properties,
            "model_config": variant.model_config,
            "log_config": str(variant.log_config) if variant.log_config else "built-in",
        },
        "model_config": instance.model_config,
    }


def measure_variant(
    variant: Variant,
    mar: Path,
    workdir: Path,
    plan: Plan,
    payloads: Sequence[Payload],
    runs: list[Run],
    group: str,
    warmup_seconds: float,
) -> list[Entry]:
    """Start one TorchServe for `variant`, do `runs` against it, stop it. A variant that
    fails to start is recorded as a failure, not fatal to the whole benchmark."""
    print(f"== {variant.name}: {variant.description}", flush=True)
    try:
        with running(variant, mar, server.CONFIG_PATH, workdir / variant.name) as ts:
            entries = [_cold_start_entry(ts, group)]
            _warm_up(ts, warmup_seconds, plan, payloads)
            entries[0]["idle_cpu_percent"] = _idle_cpu_percent(ts)
            for run in runs:
                entry = _served_entry(ts, run, plan, payloads)
                print(report.one_line(entry), flush=True)
                entries.append(entry)
            return entries
    except (server.ServerError, OSError) as error:
        print(f"   {variant.name} failed: {error}", flush=True)
        return [
            {
                "name": f"{variant.name} failed",
                "kind": "failure",
                "variant": variant.name,
                "error": str(error),
            }
        ]


def shipped_runs(plan: Plan) -> list[Run]:
    """REST and gRPC at the main concurrencies, the sweep, and REST without keep-alive.

    REST and gRPC alternate at each concurrency, so the pair the report compares is measured
    seconds apart, not minutes: load from other tenants of a shared machine comes and goes on
    that scale.
    """
    sweep = [c for c in plan.sweep if c not in plan.main_concurrency]
    runs = [
        Run(protocol, c, plan.main_seconds, "main")
        for c in plan.main_concurrency
        for protocol in ("rest", "grpc")
    ]
    runs += [
        Run(protocol, c, plan.sweep_seconds, "sweep")
        for c in sweep
        for protocol in ("rest", "grpc")
    ]
    if plan.measure_keep_alive_off:
        runs += [Run("rest", c, plan.sweep_seconds, "keep-alive", False) for c in (1, 32)]
    return runs


def tuning_runs(plan: Plan) -> list[Run]:
    """A lone caller and 32 over REST, and 32 over gRPC: enough to rank configurations."""
    return [
        Run("rest", 1, plan.tuning_seconds, "tuning"),
        Run("rest", 32, plan.tuning_seconds, "tuning"),
        Run("grpc", 32, plan.tuning_seconds, "tuning"),
    ]


def unbatched_runs(plan: Plan) -> list[Run]:
    """The tuning runs plus REST at the rest of the sweep: where batching starts to pay off."""
    runs = tuning_runs(plan)
    measured = {run.concurrency for run in runs if run.protocol == "rest"}
    sweep = [c for c in plan.sweep if c not in measured]
    return runs + [Run("rest", c, plan.sweep_seconds, "batching") for c in sweep]
