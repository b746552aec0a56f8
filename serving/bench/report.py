"""Write a benchmark run as `benchmark.json`, `benchmark.md` and `benchmark.png`."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from serving.bench.analysis import LABELS, cpu_per_request, find, profile, served
from serving.bench.plan import CANDIDATE, DRIFT_CHECK, SHIPPED_UNBATCHED

Entry = dict[str, Any]


def machine_info() -> dict[str, Any]:
    """What the figures were measured on, including how busy the machine already was."""
    import torch
    from ts.version import __version__ as torchserve_version

    cpu_model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu_model = names[0] if names else ""
    java = subprocess.run(["java", "-version"], capture_output=True, text=True, check=False)
    return {
        "cpu": cpu_model or platform.processor(),
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchserve": torchserve_version,
        "java": (java.stderr.splitlines() or ["?"])[0],
        "load_average_1m": os.getloadavg()[0],
    }


def one_line(entry: Entry) -> str:
    """A progress line for the terminal."""
    if "median_ms" not in entry:
        return f"   {entry['name']}"
    return (
        f"   {entry['name']:<48} median {entry['median_ms']:7.2f} ms  p99 {entry['p99_ms']:7.2f} "
        f"ms  {entry['requests_per_s']:8.0f} req/s  errors {entry.get('errors', 0)}"
    )


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(cell) for cell in row) + " |" for row in rows]
    return [*lines, ""]


def _side_by_side(entries: list[Entry]) -> list[str]:
    rows = []
    for entry in entries:
        if entry["kind"] == "in-process":
            rows.append(
                [
                    entry["name"],
                    entry["median_ms"],
                    entry["p95_ms"],
                    entry["p99_ms"],
                    entry["images_per_s"],
                    0,
                    "reference",
                    "reference",
                ]
            )
    main = [e for e in entries if e["kind"] == "served" and e["variant"] == "shipped"]
    main.sort(key=lambda e: (e["group"] != "main", e["keep_alive"] is False, e["concurrency"]))
    for entry in main:
        if entry["group"] not in ("main", "keep-alive"):
            continue
        rows.append(
            [
                entry["name"].removeprefix("shipped "),
                entry["median_ms"],
                entry["p95_ms"],
                entry["p99_ms"],
                entry["requests_per_s"],
                entry["errors"],
                f"{entry.get('latency_vs_in_process', 0):.1f}×",
                f"{entry.get('throughput_gap_vs_in_process', 0):.1f}×",
            ]
        )
    header = [
        "configuration",
        "median ms",
        "p95 ms",
        "p99 ms",
        "req/s (images/s)",
        "errors",
        "median ÷ in-process single",
        "in-process batch 32 images/s ÷ req/s",
    ]
    return _table(header, rows)


def _targets(targets: list[Entry]) -> list[str]:
    marks = {True: "**met**", False: "**not met**", None: "not measured"}
    rows = [[t["target"], t["goal"], t["measured"], marks[t["met"]], t["note"]] for t in targets]
    return _table(["target", "goal", "measured", "status", "how far / what bounds it"], rows)


PROFILE_ROWS = [
    ("median latency (ms)", "median_ms"),
    ("load generator CPU (ms/request)", "client_cpu_ms"),
    ("TorchServe frontend, JVM: Netty, batching, worker IPC (CPU ms/request)", "frontend_cpu_ms"),
    ("Python worker, all (CPU ms/request)", "worker_cpu_ms"),
    ("… decode PNG", "worker_decode_ms"),
    ("… MNIST preprocessing", "worker_preprocess_ms"),
    ("… model forward + softmax", "worker_model_ms"),
    ("… JSON answer", "worker_postprocess_ms"),
    ("… handler metrics (log lines the frontend parses)", "worker_metrics_ms"),
    ("… TorchServe's Python service glue", "worker_torchserve_glue_ms"),
    ("… socket I/O, message codec, logging (rest of the worker's CPU)", "worker_io_ms"),
    ("waiting: loopback, wake-ups, queue, batch delay (median − all CPU)", "waiting_ms"),
    ("CPU per request, all processes (ms)", "cpu_per_request_ms"),
    ("what 2 cores allow at that CPU cost (req/s)", "cpu_ceiling_requests_per_s"),
    ("measured (req/s)", "requests_per_s"),
]


def _profile_section(results: dict[str, Any]) -> list[str]:
    entries, worker = results["configurations"], results["worker_profile"]
    columns = [(p, c) for p in ("rest", "grpc") for c in (1, 32) if served(entries, p, c)]
    if not columns:
        return []
    profiles = [profile(served(entries, p, c), worker) for p, c in columns]
    rows = [[label] + [p[key] for p in profiles] for label, key in PROFILE_ROWS]
    header = ["shipped config, per request"] + [f"{LABELS[p]} c={c}" for p, c in columns]
    stage_rows = [
        [name.removesuffix("_us").replace("_", " "), value]
        for name, value in results["stages_us"].items()
    ]
    return [
        "## Where the time goes",
        "",
        "CPU per request is measured from outside over each measured window: the load "
        "generator's own rusage, and /proc for TorchServe's JVM and Python worker(s). The "
        "worker's Python path is split by running TorchServe's own model loader and `Service` "
        "around the archived handler in-process on the same drawings, timed and under "
        "cProfile (batch 1 for c=1, batch 8 for c=32); the worker's CPU beyond that is its "
        "socket and codec work. Waiting is the part of the median spent on no CPU.",
        "",
        *_table(header, rows),
        "Each step alone, in-process, 1 thread (µs per image, median):",
        "",
        *_table(["step", "µs"], stage_rows),
    ]


def _curve(entries: list[Entry], protocol: str, variant: str = "shipped") -> list[Entry]:
    """One configuration's runs over `protocol` (kept-alive connections), by concurrency."""
    points = [
        e
        for e in entries
        if e["kind"] == "served"
        and e["variant"] == variant
        and e["protocol"] == protocol
        and e["keep_alive"]
    ]
    return sorted(points, key=lambda e: e["concurrency"])


def _sweep(entries: list[Entry]) -> list[str]:
    rows = []
    for protocol in ("rest", "grpc"):
        for entry in _curve(entries, protocol):
            rows.append(
                [
                    LABELS[protocol],
                    entry["concurrency"],
                    entry["median_ms"],
                    entry["p95_ms"],
                    entry["p99_ms"],
                    entry["requests_per_s"],
                    entry["errors"],
                ]
            )
    header = ["protocol", "concurrency", "median ms", "p95 ms", "p99 ms", "req/s", "errors"]
    return ["## Concurrency sweep (shipped config)", "", *_table(header, rows)]


def batching_sweep(entries: list[Entry]) -> list[str]:
    """REST with and without batching at every concurrency both were measured at."""
    unbatched_name = SHIPPED_UNBATCHED.name
    rows = []
    for concurrency in (e["concurrency"] for e in _curve(entries, "rest", unbatched_name)):
        batched = served(entries, "rest", concurrency)
        unbatched = served(entries, "rest", concurrency, variant=unbatched_name)
        if batched and unbatched:
            rows.append(
                [
                    concurrency,
                    batched["median_ms"],
                    batched["requests_per_s"],
                    batched.get("mean_batch_size"),
                    unbatched["median_ms"],
                    unbatched["requests_per_s"],
                ]
            )
    if not rows:
        return []
    header = [
        "concurrency",
        "batched median ms",
        "batched req/s",
        "mean batch",
        "unbatched median ms",
        "unbatched req/s",
    ]
    return [
        "## Batching trade-off (REST)",
        "",
        "The shipped configuration (batch <= 8, waiting <= 1 ms) against the same with "
        f"batchSize 1 (`{unbatched_name}`, its own TorchServe, measured a few minutes later). "
        "Batching pays where its rows have more requests/s; below that, every batch waits out "
        "the delay.",
        "",
        *_table(header, rows),
    ]


def _tuning_row(entries: list[Entry], start: Entry) -> list[Any]:
    name = start["variant"]
    rest1, rest32, grpc32 = (served(entries, p, c, variant=name) for p, c in TUNING_CELLS)
    cells = [cell for cell in (rest1, rest32, grpc32) if cell]
    cpu = rest32 and cpu_per_request(rest32)
    return [
        name,
        start["description"],
        start["cold_start_s"],
        rest1 and rest1["median_ms"],
        rest1 and rest1["p99_ms"],
        rest32 and rest32["requests_per_s"],
        rest32 and rest32["p99_ms"],
        rest32 and rest32.get("mean_batch_size"),
        cpu,
        grpc32 and grpc32["requests_per_s"],
        sum(cell["errors"] for cell in cells),
    ]


TUNING_CELLS = (("rest", 1), ("rest", 32), ("grpc", 32))


def _tuning(entries: list[Entry]) -> list[str]:
    starts = [e for e in entries if e["kind"] == "cold-start" and e["group"] == "tuning"]
    failures = [e for e in entries if e["kind"] == "failure"]
    if not starts and not failures:
        return []
    rows = [_tuning_row(entries, start) for start in starts]
    rows += [[f["variant"], f"failed to start: {f['error']}"] + ["–"] * 9 for f in failures]
    header = [
        "variant",
        "what changes",
        "cold start s",
        "REST c=1 median ms",
        "REST c=1 p99 ms",
        "REST c=32 req/s",
        "REST c=32 p99 ms",
        "REST c=32 mean batch",
        "REST c=32 CPU ms/request",
        "gRPC c=32 req/s",
        "errors",
    ]
    return [
        "## Tuning: one private TorchServe per row",
        "",
        "Each row starts its own TorchServe from the repository's config with the stated "
        "change (model-config.yaml keys, config.properties keys, JVM options or log4j2 "
        "configuration) and measures it the same way, briefly. `candidate` is the "
        "configuration the measurements point to; the other rows change one thing from it."
        + drift_note(entries),
        "",
        *_table(header, rows),
    ]


def drift_note(entries: list[Entry]) -> str:
    """' The candidate measured ... first and ... last ...', or '' without both rows."""
    first = served(entries, "rest", 32, CANDIDATE)
    last = served(entries, "rest", 32, DRIFT_CHECK)
    if not (first and last):
        return ""
    change = last["requests_per_s"] / first["requests_per_s"] - 1
    return (
        f" The candidate did {first['requests_per_s']:,.0f} REST req/s at 32 callers first and "
        f"{last['requests_per_s']:,.0f} last ({change:+.0%}, `{DRIFT_CHECK}`): that much the "
        "machine itself drifted, so a row closer to the candidate than that shows no effect."
    )


def _loadgen(entries: list[Entry]) -> list[str]:
    rows = []
    for entry in (e for e in entries if e["kind"] == "loadgen"):
        under_load = served(entries, entry["protocol"], entry["concurrency"])
        rows.append(
            [
                LABELS[entry["protocol"]],
                entry["concurrency"],
                entry["requests_per_s"],
                entry["client_cpu_ms_per_request"],
                under_load and under_load["requests_per_s"],
                under_load and f"{100 * under_load['client_cpu_utilisation']:.0f} %",
            ]
        )
    header = [
        "protocol",
        "concurrency",
        "req/s against an instant server",
        "generator CPU ms/request",
        "req/s against TorchServe",
        "generator CPU use during that run (of 1 core)",
    ]
    return [
        "## Is the load generator the bottleneck?",
        "",
        "The same generator against a local server that answers instantly (own process): if it "
        "does many times TorchServe's rate, and uses well under one core while driving "
        "TorchServe, the figures above are TorchServe's, not the client's. Its CPU still comes "
        "out of the same 2 cores, and is shown in the profile.",
        "",
        *_table(header, rows),
    ]


def _training(entries: list[Entry]) -> list[str]:
    entry = find(entries, kind="training")
    if not entry or not entry.get("available"):
        note = entry["note"] if entry else "not measured"
        return ["## Training speed", "", note, ""]
    rows = [
        [
            entry["images_per_second"],
            entry["seconds_to_99"],
            entry["epoch_reaching_99"],
            entry["final_test_accuracy"],
            entry["epochs"],
            entry["total_seconds"],
            entry["device"],
            entry["threads"],
        ]
    ]
    header = [
        "training images/s",
        "seconds to 99 % test accuracy",
        "epoch reaching 99 %",
        "final test accuracy",
        "epochs",
        "total seconds",
        "device",
        "threads",
    ]
    return ["## Training speed", "", f"Source: {entry['source']}.", "", *_table(header, rows)]


def markdown(results: dict[str, Any]) -> str:
    entries, machine, setup = results["configurations"], results["machine"], results["setup"]
    lines = [
        f"# Benchmark ({results['mode']} run)",
        "",
        f"{results['date']} on {machine['cpu']}, {machine['cores']} cores, "
        f"{machine['memory_gib']} GiB; {machine['os']}; Python {machine['python']}, torch "
        f"{machine['torch']}, TorchServe {machine['torchserve']}, {machine['java']}. "
        f"Load average (1 min) just before the run: {machine['load_average_1m']:.2f} (well "
        "above 0 means other work shared the 2 cores and the figures are pessimistic).",
        "",
        f"Inputs: {setup['drawings']} MNIST test digits drawn like a browser canvas "
        f"({setup['drawing_style']}, mean {setup['mean_drawing_bytes']:.0f} bytes of PNG), "
        f"the same bytes for every configuration. Load generator: {setup['load_generator']}.",
        "",
        "## Side by side",
        "",
        *_side_by_side(entries),
        "## Targets",
        "",
        *_targets(results["targets"]),
        *_profile_section(results),
        *_sweep(entries),
        *batching_sweep(entries),
        *_tuning(entries),
        *_loadgen(entries),
        *_training(entries),
        "Re-run: `make bench` (full, about 10 minutes) or `make bench QUICK=1` (under a minute). "
        "Raw figures: `results/benchmark.json`; plot: `results/benchmark.png`.",
        "",
    ]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    """Throughput and latency against concurrency, and where a request's time goes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = results["configurations"]
    figure, (throughput, latency, split) = plt.subplots(1, 3, figsize=(17, 5))
    for protocol, colour in (("rest", "tab:blue"), ("grpc", "tab:orange")):
        points = _curve(entries, protocol)
        if not points:
            continue
        levels = [e["concurrency"] for e in points]
        throughput.plot(
            levels,
            [e["requests_per_s"] for e in points],
            "o-",
            color=colour,
            label=LABELS[protocol],
        )
        latency.plot(
            levels,
            [e["median_ms"] for e in points],
            "o-",
            color=colour,
            label=f"{LABELS[protocol]} median",
        )
        latency.plot(
            levels,
            [e["p99_ms"] for e in points],
            "x--",
            color=colour,
            label=f"{LABELS[protocol]} p99",
        )
    unbatched = _curve(entries, "rest", SHIPPED_UNBATCHED.name)
    if len(unbatched) > 1:
        throughput.plot(
            [e["concurrency"] for e in unbatched],
            [e["requests_per_s"] for e in unbatched],
            "s--",
            color="tab:green",
            label="REST, batchSize 1",
        )
    throughput.axhline(1000, color="grey", linestyle=":", label="target 1,000 req/s")
    throughput.set(
        xscale="log",
        xlabel="concurrent callers",
        ylabel="requests/s",
        title="Throughput (shipped config; green: batchSize 1)",
    )
    latency.axhline(3, color="grey", linestyle=":", label="3 ms / 100 ms targets")
    latency.axhline(100, color="grey", linestyle=":")
    latency.set(
        xscale="log",
        yscale="log",
        xlabel="concurrent callers",
        ylabel="ms",
        title="Latency (shipped config)",
    )
    _plot_split(split, entries, results["worker_profile"])
    for axis in (throughput, latency):
        axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    figure.suptitle(f"MNIST serving benchmark, {results['date']} ({results['mode']})")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


SPLIT_PARTS = [
    ("load generator", "client_cpu_ms"),
    ("frontend (JVM)", "frontend_cpu_ms"),
    ("worker: decode", "worker_decode_ms"),
    ("worker: preprocessing", "worker_preprocess_ms"),
    ("worker: model", "worker_model_ms"),
    ("worker: metrics + glue + I/O", None),
    ("waiting", "waiting_ms"),
]


def _plot_split(axis: Any, entries: list[Entry], worker: dict[str, Any]) -> None:
    columns = [(p, c) for p in ("rest", "grpc") for c in (1, 32) if served(entries, p, c)]
    profiles = [profile(served(entries, p, c), worker) for p, c in columns]
    labels = [f"{LABELS[p]} c={c}" + (" (CPU only)" if c > 1 else "") for p, c in columns]
    for cost, (_, concurrency) in zip(profiles, columns, strict=True):
        if concurrency > 1:
            cost["waiting_ms"] = 0.0
    lefts = [0.0] * len(labels)
    for name, key in SPLIT_PARTS:
        if key is None:
            widths = [
                p["worker_cpu_ms"]
                - p["worker_decode_ms"]
                - p["worker_preprocess_ms"]
                - p["worker_model_ms"]
                for p in profiles
            ]
        else:
            widths = [p[key] for p in profiles]
        widths = [max(width, 0.0) for width in widths]
        axis.barh(labels, widths, left=lefts, label=name)
        lefts = [left + width for left, width in zip(lefts, widths, strict=True)]
    axis.axvline(3, color="grey", linestyle=":")
    axis.set(xlabel="ms per request (CPU by process, then waiting)", title="Where the time goes")
    axis.legend(fontsize=7)


def targets_summary(results: dict[str, Any]) -> str:
    marks = {True: "met", False: "NOT met", None: "not measured"}
    return "\n".join(
        f"{t['target']:<30} goal {t['goal']:<18} measured {t['measured']:<40} {marks[t['met']]}"
        for t in results["targets"]
    )


def write_all(results: dict[str, Any], results_dir: Path) -> list[Path]:
    """benchmark.json, benchmark.md and benchmark.png in `results_dir`."""
    results_dir.mkdir(parents=True, exist_ok=True)
    json_path = results_dir / "benchmark.json"
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    markdown_path = results_dir / "benchmark.md"
    markdown_path.write_text(markdown(results))
    plot_path = results_dir / "benchmark.png"
    plot(results, plot_path)
    return [json_path, markdown_path, plot_path]
