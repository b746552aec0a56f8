"""`python -m benchmarks --quick` end to end: a real TorchServe, real load, real files.

Speed is never asserted here (that is what the benchmark reports); only that every
configuration was measured, without errors, and that the figures are well-formed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick_run(trained_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Results directory of one quick benchmark run against the session's trained model."""
    results = tmp_path_factory.mktemp("bench-results")
    history = trained_model.parent / "results" / "training_history.json"
    command = [sys.executable, "-m", "benchmarks", "--quick", "--model-path", str(trained_model)]
    command += ["--results-dir", str(results), "--training-history", str(history)]
    completed = subprocess.run(
        command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=400
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return results


@pytest.fixture(scope="module")
def results(quick_run: Path) -> dict[str, Any]:
    return json.loads((quick_run / "benchmark.json").read_text())


def _entries(results: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [entry for entry in results["configurations"] if entry["kind"] == kind]


def test_writes_the_three_outputs(quick_run: Path) -> None:
    png = (quick_run / "benchmark.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000
    lines = (quick_run / "benchmark.md").read_text().splitlines()
    for heading in ("## Side by side", "## Targets", "## Concurrency sweep"):
        assert heading in lines
    for row in ("in-process, 1 image", "in-process, batch 32", "REST c=1", "gRPC c=32"):
        assert any(line.startswith(f"| {row} |") for line in lines), row


def test_records_date_machine_and_plan(results: dict[str, Any]) -> None:
    assert datetime.fromisoformat(results["date"]) <= datetime.fromisoformat(results["finished"])
    assert results["mode"] == "quick"
    assert results["machine"]["cores"] >= 1 and results["machine"]["torchserve"]
    assert results["setup"]["concurrency"] == [1, 8, 32]


def test_every_served_point_is_present_without_errors(results: dict[str, Any]) -> None:
    served = _entries(results, "served")
    assert {(e["protocol"], e["concurrency"]) for e in served} == {
        (protocol, c) for protocol in ("rest", "grpc") for c in (1, 8, 32)
    }
    for entry in served:
        assert entry["errors"] == 0, entry["error_samples"]
        assert 0 < entry["median_ms"] <= entry["p90_ms"] <= entry["p99_ms"] <= entry["max_ms"]
        assert entry["requests_per_s"] > 0
        # Answers belong to their inputs: most canvas drawings are classified as their digit.
        assert entry["accuracy"] > 0.8
        assert entry["latency_vs_in_process"] > 0 and entry["throughput_gap_vs_in_process"] > 0
        assert entry["worker_cpu_ms_per_request"] > 0 and entry["frontend_cpu_ms_per_request"] > 0
        assert entry["client_cpu_ms_per_request"] > 0
    # One caller never has company; 32 callers do, and the handler counts its batch sizes.
    rest = {e["concurrency"]: e for e in served if e["protocol"] == "rest"}
    assert rest[1]["mean_batch_size"] < 1.5
    assert rest[32]["mean_batch_size"] > 1.5


def test_in_process_cold_start_training_and_targets(results: dict[str, Any]) -> None:
    in_process = {entry["batch_size"]: entry for entry in _entries(results, "in-process")}
    assert set(in_process) == {1, 32}
    assert all(e["median_ms"] > 0 and e["images_per_s"] > 0 for e in in_process.values())
    (cold_start,) = _entries(results, "cold-start")
    assert cold_start["cold_start_s"] > 0
    (training,) = _entries(results, "training")
    assert training["images_per_second"] > 0 and training["epochs"] == 1
    assert len(results["targets"]) == 6
    assert all(target["met"] is not None for target in results["targets"])
