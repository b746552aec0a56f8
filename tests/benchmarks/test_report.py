"""Ratios, targets and the Markdown/PNG report on hand-made entries (no server needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks import report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _served(protocol: str, concurrency: int, rps: float, **figures: Any) -> dict[str, Any]:
    entry = {
        "name": f"{report.LABELS[protocol]} c={concurrency}",
        "kind": "served",
        "protocol": protocol,
        "concurrency": concurrency,
        "requests": 100,
        "errors": 0,
        "median_ms": 8.0,
        "p90_ms": 9.0,
        "p99_ms": 12.0,
        "requests_per_s": rps,
        "mean_batch_size": 1.0,
        "client_cpu_ms_per_request": 0.5,
        "frontend_cpu_ms_per_request": 1.0,
        "worker_cpu_ms_per_request": 2.0,
        "client_cpu_share": 0.25,
    }
    return entry | figures


def _in_process(batch_size: int, median_ms: float, images_per_s: float) -> dict[str, Any]:
    return {
        "name": f"in-process, batch {batch_size}",
        "kind": "in-process",
        "batch_size": batch_size,
        "median_ms": median_ms,
        "p90_ms": median_ms,
        "p99_ms": median_ms,
        "images_per_s": images_per_s,
    }


def _entries() -> list[dict[str, Any]]:
    return [
        _in_process(1, 2.0, 500.0),
        _in_process(32, 20.0, 1600.0),
        {"name": "cold start", "kind": "cold-start", "cold_start_s": 12.5},
        _served("rest", 1, 100.0, median_ms=2.5),
        _served("grpc", 1, 98.0, median_ms=2.6),
        _served("rest", 32, 800.0, median_ms=40.0, p99_ms=90.0, mean_batch_size=7.5),
        _served("grpc", 32, 840.0, median_ms=38.0, p99_ms=85.0),
    ]


def _targets(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {target["target"]: target for target in report.evaluate_targets(entries)}


def test_ratios_compare_each_served_run_with_the_in_process_predictor() -> None:
    entries = _entries()
    report.add_ratios(entries)
    rest32 = report.find(entries, kind="served", protocol="rest", concurrency=32)
    assert rest32["latency_vs_in_process"] == 20.0  # 40 ms against 2 ms
    assert rest32["throughput_gap_vs_in_process"] == 2.0  # 1,600 images/s batched against 800
    assert "latency_vs_in_process" not in entries[0]


def test_targets_state_the_measured_value_and_whether_it_is_met() -> None:
    targets = _targets(_entries())
    assert {name: target["met"] for name, target in targets.items()} == {
        "REST c=1 median": True,
        "REST c=32 throughput": False,
        "REST c=32 p99": True,
        "cold start": False,
        "no errors": True,
        "gRPC vs REST throughput": True,
    }
    assert targets["REST c=32 throughput"]["measured"] == "800.00 req/s"
    assert targets["REST c=32 throughput"]["goal"] == ">= 1,000 req/s"
    assert targets["cold start"]["measured"] == "12.50 s"
    assert targets["gRPC vs REST throughput"]["measured"] == "gRPC/REST c=1 98%, c=32 105%"


def test_any_error_in_any_served_run_fails_the_error_target() -> None:
    entries = [*_entries(), _served("grpc", 8, 500.0, errors=3)]
    errors = _targets(entries)["no errors"]
    assert (errors["measured"], errors["met"]) == ("3", False)


def test_a_latency_target_with_failed_requests_is_not_met() -> None:
    entries = _entries()
    entries[5] |= {"errors": 7, "p99_ms": 8.0}  # REST c=32: fast, but 7 requests timed out
    p99 = _targets(entries)["REST c=32 p99"]
    assert (p99["measured"], p99["met"]) == ("8.00 ms, 7 failed", False)


def test_nothing_measured_is_not_a_pass() -> None:
    targets = _targets([_in_process(1, 2.0, 500.0)])
    assert all(t["met"] is None and t["measured"] == "not measured" for t in targets.values())


def test_grpc_target_fails_when_grpc_lags_between_the_ends_of_the_sweep() -> None:
    ends = _entries()
    slower_at_8 = [*ends, _served("rest", 8, 500.0), _served("grpc", 8, 400.0)]
    within_noise_at_8 = [*ends, _served("rest", 8, 500.0), _served("grpc", 8, 480.0)]
    failed = _targets(slower_at_8)["gRPC vs REST throughput"]
    assert failed["met"] is False
    assert failed["measured"] == "gRPC/REST c=1 98%, c=8 80%, c=32 105%"
    assert _targets(within_noise_at_8)["gRPC vs REST throughput"]["met"] is True


def _results(entries: list[dict[str, Any]]) -> dict[str, Any]:
    entries = [
        *entries,
        {"name": "training", "kind": "training", "source": "a test", "epochs": 1}
        | {"images_per_second": 3000.0, "seconds_to_99": None, "final_test_accuracy": 0.985}
        | {"device": "cpu", "threads": 2},
    ]
    report.add_ratios(entries)
    machine = {"cpu": "test CPU", "cores": 2, "memory_gib": 8.0, "os": "Linux", "python": "3"}
    machine |= {"torch": "2", "torchserve": "0.12", "java": "java 17", "load_average_1m": 0.5}
    return {
        "date": "2026-01-01T00:00:00+00:00",
        "mode": "quick",
        "machine": machine,
        "setup": {"drawings": 64, "drawing_style": "canvas", "warmup_s": 4.0, "seconds": 2.0},
        "configurations": entries,
        "targets": report.evaluate_targets(entries),
    }


def test_markdown_has_the_side_by_side_sweep_and_target_tables() -> None:
    lines = report.markdown(_results(_entries())).splitlines()
    assert "| in-process, batch 32 | 20.00 | 20.00 | 20.00 | 1,600.00 | 0 | – | – |" in lines
    assert "| REST c=32 | 40.00 | 9.00 | 90.00 | 800.00 | 0 | 20.0× | 2.0× |" in lines
    assert (
        "| REST | 32 | 40.00 | 9.00 | 90.00 | 800.00 | 0 | 7.50 | 0.50 | 1.00 | 2.00 | 25% |"
        in lines
    )
    assert "| REST c=32 throughput | >= 1,000 req/s | 800.00 req/s | **not met** |" in lines
    assert "| 3,000.00 | 1 | – | 98.50% | cpu | 2 |" in lines
    sweep = [line for line in lines if line.startswith(("| REST |", "| gRPC |"))]
    assert [line.split(" | ")[1] for line in sweep] == ["1", "32", "1", "32"]


def test_write_all_writes_json_markdown_and_png(tmp_path: Path) -> None:
    paths = report.write_all(_results(_entries()), tmp_path / "out")
    assert [path.name for path in paths] == ["benchmark.json", "benchmark.md", "benchmark.png"]
    assert paths[2].read_bytes().startswith(PNG_MAGIC)
    assert '"REST c=32"' in paths[0].read_text()
