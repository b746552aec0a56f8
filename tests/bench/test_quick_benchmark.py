"""`python -m serving.benchmark --quick` end to end: a real TorchServe, real load, real files.

Speed is never asserted here (that is what the benchmark reports); only that every
configuration was measured, without errors, and that the figures and ratios are well-formed.
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
EXPECTED_SERVED = {(protocol, c) for protocol in ("rest", "grpc") for c in (1, 32)}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick_run(trained_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Results directory of one quick benchmark run against the session's trained model."""
    results = tmp_path_factory.mktemp("bench-results")
    history = trained_model.parent / "results" / "training_history.json"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "serving.benchmark",
            "--quick",
            "--model-path",
            str(trained_model),
            "--results-dir",
            str(results),
            "--training-history",
            str(history),
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return results


@pytest.fixture(scope="module")
def results(quick_run: Path) -> dict[str, Any]:
    return json.loads((quick_run / "benchmark.json").read_text())


def _entries(results: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [entry for entry in results["configurations"] if entry["kind"] == kind]


def test_writes_the_three_outputs(quick_run: Path) -> None:
    assert (quick_run / "benchmark.png").read_bytes().startswith(PNG_MAGIC)
    markdown = (quick_run / "benchmark.md").read_text()
    for heading in ("## Side by side", "## Targets", "## Where the time goes"):
        assert heading in markdown
    assert "REST c=32" in markdown and "gRPC" in markdown


def test_records_date_and_machine(results: dict[str, Any]) -> None:
    assert datetime.fromisoformat(results["date"]) <= datetime.fromisoformat(results["finished"])
    assert results["mode"] == "quick"
    assert results["machine"]["cores"] >= 1
    assert results["machine"]["torchserve"]


def test_every_served_configuration_is_present_without_errors(results: dict[str, Any]) -> None:
    served = _entries(results, "served")
    assert {(entry["protocol"], entry["concurrency"]) for entry in served} == EXPECTED_SERVED
    for entry in served:
        assert entry["errors"] == 0, entry["error_samples"]
        assert entry["requests"] > 0
        assert 0 < entry["median_ms"] <= entry["p95_ms"] <= entry["p99_ms"] <= entry["max_ms"]
        assert entry["requests_per_s"] > 0
        # Answers belong to their inputs: most canvas drawings are classified as their digit.
        assert entry["accuracy"] > 0.8
        assert entry["latency_vs_in_process"] > 0
        assert entry["throughput_gap_vs_in_process"] > 0
        assert entry["worker_cpu_ms_per_request"] > 0
        assert entry["frontend_cpu_ms_per_request"] > 0


def test_in_process_reference_and_load_generator_check(results: dict[str, Any]) -> None:
    in_process = {
        (entry["batch_size"], entry["pause_ms"]): entry for entry in _entries(results, "in-process")
    }
    assert set(in_process) == {(1, 0.0), (32, 0.0), (1, 1.0)}
    for entry in in_process.values():
        assert entry["median_ms"] > 0 and entry["images_per_s"] > 0
    loadgen = _entries(results, "loadgen")
    assert {(entry["protocol"], entry["concurrency"]) for entry in loadgen} == EXPECTED_SERVED
    assert all(entry["errors"] == 0 and entry["requests_per_s"] > 0 for entry in loadgen)
    assert all(value > 0 for value in results["stages_us"].values())


def test_cold_start_training_and_targets(results: dict[str, Any]) -> None:
    (cold_start,) = _entries(results, "cold-start")
    assert cold_start["cold_start_s"] > 0
    (training,) = _entries(results, "training")
    assert training["available"] and training["images_per_second"] > 0
    targets = {target["target"]: target for target in results["targets"]}
    assert len(targets) == 7
    measured = [t for t in targets.values() if t["met"] is not None]
    # Everything but the batching comparison (full runs only) is measured in a quick run.
    assert len(measured) == 6
