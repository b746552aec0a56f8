"""What a benchmark run states: ratios to the in-process predictor, the project's performance
targets, and the three files `benchmark.json`, `benchmark.md` and `benchmark.png`."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import psutil

from benchmarks.served import LABELS

Entry = dict[str, Any]

# The serving performance issue's goals (not measurements): the entry a goal reads, its
# figure, and the bound that figure must stay under ("<=") or reach (">=").
TARGETS: list[tuple[str, dict[str, Any], str, str, float, str]] = [
    ("REST c=1 median", {"protocol": "rest", "concurrency": 1}, "median_ms", "<=", 3.0, "ms"),
    (
        "REST c=32 throughput",
        {"protocol": "rest", "concurrency": 32},
        "requests_per_s",
        ">=",
        1e3,
        "req/s",
    ),
    ("REST c=32 p99", {"protocol": "rest", "concurrency": 32}, "p99_ms", "<=", 100.0, "ms"),
    ("cold start", {"kind": "cold-start"}, "cold_start_s", "<=", 10.0, "s"),
]
# gRPC within this share of REST's throughput counts as equal: about the run-to-run noise.
GRPC_TOLERANCE = 0.05


def find(entries: list[Entry], **wanted: Any) -> Entry | None:
    """The first entry whose fields equal every `wanted` value."""
    return next((e for e in entries if all(e.get(k) == v for k, v in wanted.items())), None)


def curve(entries: list[Entry], protocol: str) -> list[Entry]:
    """The served runs over `protocol`, by concurrency."""
    points = [e for e in entries if e["kind"] == "served" and e["protocol"] == protocol]
    return sorted(points, key=lambda e: e["concurrency"])


def add_ratios(entries: list[Entry]) -> None:
    """How many times the in-process latency a served request takes, and how many times the
    server's throughput the in-process batched predictor manages."""
    single = find(entries, kind="in-process", batch_size=1)
    batched = max(
        (e for e in entries if e["kind"] == "in-process"),
        key=lambda e: e["batch_size"],
        default=None,
    )
    for entry in entries:
        if entry["kind"] != "served":
            continue
        if single and single["median_ms"] > 0:
            entry["latency_vs_in_process"] = entry["median_ms"] / single["median_ms"]
        if batched and entry["requests_per_s"] > 0:
            entry["throughput_gap_vs_in_process"] = (
                batched["images_per_s"] / entry["requests_per_s"]
            )


def _target(name: str, goal: str, measured: str | None, met: bool | None) -> Entry:
    return {"target": name, "goal": goal, "measured": measured or "not measured", "met": met}


def evaluate_targets(entries: list[Entry]) -> list[Entry]:
    """Each target with its measured value and whether it is met (None: not measured)."""
    targets = []
    for name, wanted, key, relation, bound, unit in TARGETS:
        entry = find(entries, **({"kind": "served"} | wanted))
        value = entry[key] if entry else None
        met = None if value is None else value <= bound if relation == "<=" else value >= bound
        shown = None if value is None else f"{value:,.2f} {unit}"
        if value is not None and entry and entry.get("errors"):
            # Latencies are of answered requests only: failed ones would hide in the figure.
            met, shown = False, f"{shown}, {entry['errors']:,} failed"
        targets.append(_target(name, f"{relation} {bound:,g} {unit}", shown, met))
    errors = [e["errors"] for e in entries if e["kind"] == "served"]
    if errors:
        targets.append(_target("no errors", "0", str(sum(errors)), not any(errors)))
    else:
        targets.append(_target("no errors", "0", None, None))
    return [*targets, _grpc_target(entries)]


def _grpc_target(entries: list[Entry]) -> Entry:
    """gRPC must keep up with REST at every concurrency measured with both, not only at the
    ends of the sweep: a protocol that ties at 1 and 32 callers can still lag in between."""
    shares = {}
    for rest in curve(entries, "rest"):
        grpc = find(entries, kind="served", protocol="grpc", concurrency=rest["concurrency"])
        if grpc and rest["requests_per_s"] > 0:
            shares[rest["concurrency"]] = grpc["requests_per_s"] / rest["requests_per_s"]
    goal = f"at least as fast (within {GRPC_TOLERANCE:.0%})"
    if not shares:
        return _target("gRPC vs REST throughput", goal, None, None)
    shown = "gRPC/REST " + ", ".join(f"c={c} {share:.0%}" for c, share in shares.items())
    met = all(share >= 1 - GRPC_TOLERANCE for share in shares.values())
    return _target("gRPC vs REST throughput", goal, shown, met)


def machine_info() -> dict[str, Any]:
    """What the figures were measured on, including how busy the machine already was."""
    import torch
    from ts.version import __version__ as torchserve_version

    cpuinfo = Path("/proc/cpuinfo")
    names = [
        line.split(":", 1)[1].strip()
        for line in (cpuinfo.read_text().splitlines() if cpuinfo.is_file() else [])
        if line.startswith("model name")
    ]
    java = subprocess.run(["java", "-version"], capture_output=True, text=True, check=False)
    return {
        "cpu": names[0] if names else platform.processor(),
        "cores": psutil.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchserve": torchserve_version,
        "java": (java.stderr.splitlines() or ["?"])[0],
        "load_average_1m": os.getloadavg()[0],
    }


def one_line(entry: Entry) -> str:
    """A progress line for the terminal."""
    return (
        f"   {entry['name']:<24} median {entry['median_ms']:7.2f} ms  p99 {entry['p99_ms']:7.2f} "
        f"ms  {entry['requests_per_s']:8.0f}/s  errors {entry['errors']}"
    )


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:,.2f}" if isinstance(value, float) else str(value)


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """A Markdown table, floats with two decimals, None as a dash."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return [*lines, *("| " + " | ".join(_fmt(cell) for cell in row) + " |" for row in rows), ""]


def _side_by_side(entries: list[Entry]) -> list[str]:
    rows = [
        [e["name"], e["median_ms"], e["p90_ms"], e["p99_ms"], e["images_per_s"], 0, None, None]
        for e in entries
        if e["kind"] == "in-process"
    ]
    ends = [e for e in entries if e["kind"] == "served" and e["concurrency"] in (1, 32)]
    for e in sorted(ends, key=lambda e: e["concurrency"]):
        ratios = [e.get("latency_vs_in_process"), e.get("throughput_gap_vs_in_process")]
        row = [e["name"], e["median_ms"], e["p90_ms"], e["p99_ms"], e["requests_per_s"]]
        rows.append([*row, e["errors"], *(f"{r:.1f}×" if r else None for r in ratios)])
    header = ["configuration", "median ms", "p90 ms", "p99 ms", "req/s (images/s)", "errors"]
    return table([*header, "median ÷ in-process", "in-process batch images/s ÷ this"], rows)


def _sweep(entries: list[Entry]) -> list[str]:
    rows = [
        [
            LABELS[e["protocol"]],
            e["concurrency"],
            e["median_ms"],
            e["p90_ms"],
            e["p99_ms"],
            e["requests_per_s"],
            e["errors"],
            e["mean_batch_size"],
            e["client_cpu_ms_per_request"],
            e["frontend_cpu_ms_per_request"],
            e["worker_cpu_ms_per_request"],
            f"{e['client_cpu_share']:.0%}",
        ]
        for protocol in LABELS
        for e in curve(entries, protocol)
    ]
    header = ["protocol", "callers", "median ms", "p90 ms", "p99 ms", "req/s", "errors"]
    header += ["mean batch", "CPU ms/req: generator", "frontend (JVM)", "workers"]
    return table([*header, "generator's share of a core"], rows)


def _start_and_training(entries: list[Entry]) -> list[str]:
    start, training = find(entries, kind="cold-start"), find(entries, kind="training")
    seconds = f"{start['cold_start_s']:.1f} s" if start else "not measured"
    lines = [f"Cold start (launch until every worker is READY): {seconds}", ""]
    if not training or not training.get("images_per_second"):
        return [*lines, "Training speed: not measured.", ""]
    accuracy = training.get("final_test_accuracy")
    row = [training["images_per_second"], training["epochs"], training["seconds_to_99"]]
    row += [accuracy and f"{accuracy:.2%}", training["device"], training["threads"]]
    header = ["training images/s", "epochs", "seconds to 99 %", "final test accuracy"]
    return [
        *lines,
        f"Training speed ({training['source']}):",
        "",
        *table([*header, "device", "threads"], [row]),
    ]


def markdown(results: dict[str, Any]) -> str:
    entries, machine, setup = results["configurations"], results["machine"], results["setup"]
    marks = {True: "met", False: "**not met**", None: "not measured"}
    targets = [[t["target"], t["goal"], t["measured"], marks[t["met"]]] for t in results["targets"]]
    return "\n".join(
        [
            f"# Benchmark ({results['mode']} run)",
            "",
            f"{results['date']}; {machine['cpu']}, {machine['cores']} cores, "
            f"{machine['memory_gib']} GiB; {machine['os']}; Python {machine['python']}, torch "
            f"{machine['torch']}, TorchServe {machine['torchserve']}, {machine['java']}. "
            f"Load average (1 min) before the run: {machine['load_average_1m']:.2f}.",
            "",
            f"Inputs: {setup['drawings']} MNIST test digits drawn like the browser canvas "
            f"({setup['drawing_style']}), the same bytes for every row. TorchServe as configured "
            f"by the repository, on private ports, warmed up for {setup['warmup_s']:g} s; each "
            f"served row is a closed loop of that many callers for {setup['seconds']:g} s, its "
            "CPU per request measured per process.",
            "",
            "## Side by side",
            "",
            *_side_by_side(entries),
            "## Targets",
            "",
            *table(["target", "goal", "measured", "status"], targets),
            "## Concurrency sweep",
            "",
            *_sweep(entries),
            "## Cold start and training",
            "",
            *_start_and_training(entries),
            "Re-run: `make bench` or `make bench QUICK=1`. Raw figures: `benchmark.json`; "
            "plot: `benchmark.png`.",
            "",
        ]
    )


def plot(results: dict[str, Any], path: Path) -> None:
    """Throughput and latency against concurrency, REST and gRPC, with the targets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter

    entries = results["configurations"]
    figure, (throughput, latency) = plt.subplots(1, 2, figsize=(12, 4.5))
    for protocol, colour in (("rest", "tab:blue"), ("grpc", "tab:orange")):
        points, label = curve(entries, protocol), LABELS[protocol]
        callers = [e["concurrency"] for e in points]
        throughput.plot(callers, [e["requests_per_s"] for e in points], "o-", c=colour, label=label)
        for key, style in (("median_ms", "o-"), ("p99_ms", "x--")):
            values = [e[key] for e in points]
            latency.plot(callers, values, style, c=colour, label=f"{label} {key[:-3]}")
    for name, _, _, _, bound, unit in TARGETS:
        axis = {"ms": latency, "req/s": throughput}.get(unit)
        if axis:
            axis.axhline(bound, color="grey", linestyle=":", label=f"target: {name}")
    throughput.set(title="Throughput", ylabel="requests/s", ylim=(0, None))
    latency.set(title="Latency", ylabel="ms", yscale="log")
    for axis in (throughput, latency):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrent callers")
        axis.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    figure.suptitle(f"MNIST on TorchServe, {results['date']} ({results['mode']} run)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_all(results: dict[str, Any], results_dir: Path) -> list[Path]:
    """benchmark.json, benchmark.md and benchmark.png in `results_dir`."""
    results_dir.mkdir(parents=True, exist_ok=True)
    paths = [results_dir / f"benchmark.{suffix}" for suffix in ("json", "md", "png")]
    paths[0].write_text(json.dumps(results, indent=2) + "\n")
    paths[1].write_text(markdown(results))
    plot(results, paths[2])
    return paths
