"""Turn raw benchmark entries into what the report states: ratios to the in-process
predictor, a profile of where a served request's time goes, and the issue's targets."""

from __future__ import annotations

import os
from typing import Any

from serving.bench.plan import CANDIDATE, DRIFT_CHECK, SHIPPED_UNBATCHED

Entry = dict[str, Any]

REST_C1_MEDIAN_MS = 3.0
REST_C32_RPS = 1000.0
REST_C32_P99_MS = 100.0
BATCH_PENALTY_MS = 1.0
COLD_START_S = 10.0
GRPC_TOLERANCE = 0.05
LABELS = {"rest": "REST", "grpc": "gRPC"}


def find(entries: list[Entry], **wanted: Any) -> Entry | None:
    """The first entry whose fields equal every `wanted` value."""
    for entry in entries:
        if all(entry.get(key) == value for key, value in wanted.items()):
            return entry
    return None


def served(entries: list[Entry], protocol: str, concurrency: int, variant: str = "shipped"):
    return find(
        entries,
        kind="served",
        variant=variant,
        protocol=protocol,
        concurrency=concurrency,
        keep_alive=True,
    )


def add_ratios(entries: list[Entry]) -> None:
    """How many times the in-process latency a served request takes, and how far below the
    in-process batched throughput the server stays."""
    single = find(entries, kind="in-process", batch_size=1, pause_ms=0.0)
    batched = find(entries, kind="in-process", batch_size=32)
    for entry in entries:
        if entry.get("kind") != "served" or not entry.get("requests"):
            continue
        if single:
            entry["latency_vs_in_process"] = entry["median_ms"] / single["median_ms"]
        if batched and entry["requests_per_s"] > 0:
            entry["throughput_gap_vs_in_process"] = (
                batched["images_per_s"] / entry["requests_per_s"]
            )


WORKER_PARTS = ("decode", "preprocess", "model", "postprocess", "metrics", "torchserve_glue")


def profile(entry: Entry, worker_profile: dict[str, dict[str, float]]) -> dict[str, float]:
    """Split one served configuration's cost per request between the processes involved.

    CPU per request comes from the load generator's own rusage and /proc of TorchServe's JVM
    and workers. The worker's Python path (handler steps, metrics, TorchServe's `Service`) is
    timed in-process by `worker_profile` at batch 1 (used for concurrency 1) and batch 8
    (under load); what the worker burns beyond that is its socket I/O, message codec and log
    writing. At concurrency 1, the part of the median spent on no CPU at all is waiting
    (loopback, wake-ups, batching delay); under load, CPU per request bounds throughput.
    """
    path = worker_profile.get("batch_1" if entry["concurrency"] == 1 else "batch_8", {})
    client = entry.get("client_cpu_ms_per_request", 0.0)
    frontend = entry.get("frontend_cpu_ms_per_request", 0.0)
    worker = entry.get("worker_cpu_ms_per_request", 0.0)
    cpu = cpu_per_request(entry)
    cores = os.cpu_count() or 1
    split = {f"worker_{part}_ms": path.get(f"{part}_ms", 0.0) for part in WORKER_PARTS}
    return {
        "median_ms": entry["median_ms"],
        "client_cpu_ms": client,
        "frontend_cpu_ms": frontend,
        "worker_cpu_ms": worker,
        **split,
        "worker_io_ms": worker - path.get("ms_per_request", 0.0),
        "waiting_ms": entry["median_ms"] - cpu,
        "cpu_per_request_ms": cpu,
        "cpu_ceiling_requests_per_s": 1000.0 * cores / cpu if cpu > 0 else 0.0,
        "requests_per_s": entry["requests_per_s"],
    }


def _describe_latency(p: dict[str, float]) -> str:
    handler = p["worker_decode_ms"] + p["worker_preprocess_ms"] + p["worker_model_ms"]
    return (
        f"per request: load generator {p['client_cpu_ms']:.2f} ms CPU, TorchServe frontend "
        f"(JVM: Netty, batching, worker IPC) {p['frontend_cpu_ms']:.2f} ms, worker "
        f"{p['worker_cpu_ms']:.2f} ms (decode {p['worker_decode_ms']:.2f} + preprocessing "
        f"{p['worker_preprocess_ms']:.2f} + model {p['worker_model_ms']:.2f} = {handler:.2f} ms; "
        f"metrics {p['worker_metrics_ms']:.2f}), waiting {max(p['waiting_ms'], 0):.2f} ms"
    )


def _describe_throughput(p: dict[str, float]) -> str:
    return (
        f"{p['cpu_per_request_ms']:.2f} ms of CPU per request (load generator "
        f"{p['client_cpu_ms']:.2f}, frontend {p['frontend_cpu_ms']:.2f}, worker "
        f"{p['worker_cpu_ms']:.2f}, of which decode+preprocessing "
        f"{p['worker_decode_ms'] + p['worker_preprocess_ms']:.2f}) caps {os.cpu_count()} cores "
        f"at about {p['cpu_ceiling_requests_per_s']:.0f} req/s"
    )


def best_tuning_note(entries: list[Entry], concurrency: int, key: str, lowest: bool) -> str:
    """'; best tuning row: <variant> <value>' for REST at `concurrency`, or ''."""
    rows = [
        e
        for e in entries
        if e.get("kind") == "served"
        and e.get("group") == "tuning"
        and e["protocol"] == "rest"
        and e["concurrency"] == concurrency
        and e["requests"]
    ]
    if not rows:
        return ""
    best = (min if lowest else max)(rows, key=lambda e: e[key])
    note = f"; best tuning row: {best['variant']} at {best[key]:.2f}"
    repeats = [
        served(entries, "rest", concurrency, variant=name) for name in (CANDIDATE, DRIFT_CHECK)
    ]
    values = [f"{entry[key]:.2f}" for entry in repeats if entry]
    if values:
        note += f" (the shipped configuration's own tuning rows: {' and '.join(values)})"
    return note


def _pause_penalty(entries: list[Entry]) -> str:
    """'; in-process ...' comparing one drawing back to back and after a pause, or ''."""
    back_to_back = find(entries, kind="in-process", batch_size=1, pause_ms=0.0)
    paused = next(
        (e for e in entries if e.get("kind") == "in-process" and e.get("pause_ms", 0) > 0), None
    )
    if not (back_to_back and paused):
        return ""
    slower = paused["median_ms"] / back_to_back["median_ms"] - 1
    return (
        f"; in-process, one drawing takes {paused['median_ms']:.2f} ms after a "
        f"{paused['pause_ms']:g} ms pause against {back_to_back['median_ms']:.2f} ms back to "
        f"back ({slower:+.0%}): every lone request starts after such a pause"
    )


def _target(name: str, goal: str, measured: str, met: bool | None, note: str = "") -> Entry:
    return {"target": name, "goal": goal, "measured": measured, "met": met, "note": note}


def _latency_targets(
    entries: list[Entry], worker_profile: dict[str, dict[str, float]]
) -> list[Entry]:
    rest1 = served(entries, "rest", 1)
    if not rest1:
        return [_target("REST c=1 median", "<= 3 ms", "not measured", None)]
    met = rest1["median_ms"] <= REST_C1_MEDIAN_MS
    gap = "" if met else f"{rest1['median_ms'] - REST_C1_MEDIAN_MS:.2f} ms over; "
    return [
        _target(
            "REST c=1 median",
            "<= 3 ms",
            f"{rest1['median_ms']:.2f} ms",
            met,
            gap
            + _describe_latency(profile(rest1, worker_profile))
            + _pause_penalty(entries)
            + best_tuning_note(entries, 1, "median_ms", lowest=True),
        )
    ]


def _throughput_targets(
    entries: list[Entry], worker_profile: dict[str, dict[str, float]]
) -> list[Entry]:
    rest32 = served(entries, "rest", 32)
    if not rest32:
        return [_target("REST c=32 throughput", ">= 1000 req/s", "not measured", None)]
    rps, p99, errors = rest32["requests_per_s"], rest32["p99_ms"], rest32["errors"]
    bound = _describe_throughput(profile(rest32, worker_profile))
    best_rps = best_tuning_note(entries, 32, "requests_per_s", lowest=False)
    best_p99 = best_tuning_note(entries, 32, "p99_ms", lowest=True)
    return [
        _target(
            "REST c=32 throughput",
            ">= 1000 req/s",
            f"{rps:.0f} req/s",
            rps >= REST_C32_RPS,
            ""
            if rps >= REST_C32_RPS
            else f"{REST_C32_RPS - rps:.0f} req/s short; {bound}{best_rps}",
        ),
        _target(
            "REST c=32 p99",
            "<= 100 ms",
            f"{p99:.1f} ms",
            p99 <= REST_C32_P99_MS,
            ""
            if p99 <= REST_C32_P99_MS
            else f"{p99 - REST_C32_P99_MS:.1f} ms over; {bound}{best_p99}",
        ),
        _target(
            "REST c=32 errors", "0", str(errors), errors == 0, "; ".join(rest32["error_samples"])
        ),
    ]


def _grpc_target(entries: list[Entry]) -> Entry:
    """gRPC must match REST at every concurrency of the sweep, not only at 1 and 32 callers:
    a protocol that ties at both ends can still be slower in between."""
    pairs = protocol_pairs(entries)
    if 1 not in pairs or 32 not in pairs:
        return _target("gRPC vs REST", "at least as fast", "not measured", None)
    (grpc1, rest1), (grpc32, rest32) = pairs[1], pairs[32]
    latency_ok = grpc1["median_ms"] <= rest1["median_ms"] * (1 + GRPC_TOLERANCE)
    slower_at = [
        concurrency
        for concurrency, (grpc, rest) in pairs.items()
        if _grpc_share(grpc, rest) < 1 - GRPC_TOLERANCE
    ]
    measured = (
        f"c=1 median {grpc1['median_ms']:.2f} vs {rest1['median_ms']:.2f} ms; "
        f"c=32 {grpc32['requests_per_s']:.0f} vs {rest32['requests_per_s']:.0f} req/s"
    )
    note = (
        f"within {GRPC_TOLERANCE:.0%} counts as equal (run-to-run noise); gRPC req/s as a share "
        f"of REST's, each pair measured back to back: {grpc_share_of_rest(pairs)}"
    )
    if slower_at or not latency_ok:
        where = ", ".join(f"c={concurrency}" for concurrency in slower_at) or "none"
        worst = min(pairs, key=lambda concurrency: _grpc_share(*pairs[concurrency]))
        grpc, rest = pairs[worst]
        note += (
            f"; slower beyond the noise at {where}; CPU per request at c={worst}: frontend "
            f"gRPC {grpc['frontend_cpu_ms_per_request']:.2f} vs REST "
            f"{rest['frontend_cpu_ms_per_request']:.2f} ms, load generator gRPC "
            f"{grpc['client_cpu_ms_per_request']:.2f} vs REST "
            f"{rest['client_cpu_ms_per_request']:.2f} ms, worker gRPC "
            f"{grpc['worker_cpu_ms_per_request']:.2f} vs REST "
            f"{rest['worker_cpu_ms_per_request']:.2f} ms"
        )
    return _target("gRPC vs REST", "at least as fast", measured, latency_ok and not slower_at, note)


def protocol_pairs(entries: list[Entry]) -> dict[int, tuple[Entry, Entry]]:
    """(gRPC, REST) entries of the shipped configuration for each concurrency measured with both."""
    pairs = {}
    for concurrency in sorted(
        {entry["concurrency"] for entry in entries if "concurrency" in entry}
    ):
        grpc, rest = served(entries, "grpc", concurrency), served(entries, "rest", concurrency)
        if grpc and rest and rest["requests_per_s"] > 0:
            pairs[concurrency] = (grpc, rest)
    return pairs


def grpc_share_of_rest(pairs: dict[int, tuple[Entry, Entry]]) -> str:
    """'c=1 96%, c=4 81%, ...': gRPC's throughput over REST's for each of `protocol_pairs`,
    so the verdict can be read against the whole sweep."""
    return ", ".join(
        f"c={concurrency} {_grpc_share(grpc, rest):.0%}"
        for concurrency, (grpc, rest) in pairs.items()
    )


def _grpc_share(grpc: Entry, rest: Entry) -> float:
    return grpc["requests_per_s"] / rest["requests_per_s"]


def _batching_target(entries: list[Entry]) -> Entry:
    batched = served(entries, "rest", 1)
    unbatched = served(entries, "rest", 1, variant=SHIPPED_UNBATCHED.name)
    if not (batched and unbatched):
        return _target(
            "batching cost, lone request", "<= 1 ms", "not measured (full run only)", None
        )
    penalty = batched["median_ms"] - unbatched["median_ms"]
    return _target(
        "batching cost, lone request",
        "<= 1 ms",
        f"{penalty:+.2f} ms",
        penalty <= BATCH_PENALTY_MS,
        f"REST c=1 median {batched['median_ms']:.2f} ms as shipped vs "
        f"{unbatched['median_ms']:.2f} ms with batchSize 1. TorchServe 0.12 holds a lone "
        "request for maxBatchDelay (whole milliseconds, at least 1; 0 means its default of "
        "100), and the work after that idle millisecond starts cold: CPU per lone request "
        f"over all processes {cpu_per_request(batched):.2f} ms batched vs "
        f"{cpu_per_request(unbatched):.2f} ms unbatched",
    )


def cpu_per_request(entry: Entry) -> float:
    """CPU milliseconds per request over the load generator, the frontend and the workers."""
    return sum(
        entry.get(f"{part}_cpu_ms_per_request", 0.0) for part in ("client", "frontend", "worker")
    )


def _cold_start_target(entries: list[Entry]) -> Entry:
    start = find(entries, kind="cold-start", variant="shipped")
    if not start:
        return _target("cold start", "<= 10 s", "not measured", None)
    seconds = start["cold_start_s"]
    note = "" if seconds <= COLD_START_S else "JVM start + worker spawn + torch import + model load"
    return _target("cold start", "<= 10 s", f"{seconds:.1f} s", seconds <= COLD_START_S, note)


def evaluate_targets(
    entries: list[Entry], worker_profile: dict[str, dict[str, float]]
) -> list[Entry]:
    """Every target of the performance issue with its measured value, met or not, and why."""
    return [
        *_latency_targets(entries, worker_profile),
        *_throughput_targets(entries, worker_profile),
        _grpc_target(entries),
        _batching_target(entries),
        _cold_start_target(entries),
    ]
