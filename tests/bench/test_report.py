"""The report's drift sentence and gRPC comparison, on hand-made entries (no server needed)."""

from __future__ import annotations

from typing import Any

from serving.bench import analysis, report
from serving.bench.plan import CANDIDATE, DRIFT_CHECK, SHIPPED_UNBATCHED


def _served(
    variant: str, requests_per_s: float, protocol: str = "rest", concurrency: int = 32
) -> dict[str, Any]:
    return {
        "kind": "served",
        "variant": variant,
        "protocol": protocol,
        "concurrency": concurrency,
        "keep_alive": True,
        "requests_per_s": requests_per_s,
    }


def test_drift_compares_the_first_and_last_candidate() -> None:
    sentence = report.drift_note([_served(CANDIDATE, 800.0), _served(DRIFT_CHECK, 600.0)])
    assert "800" in sentence and "600" in sentence and "-25%" in sentence


def test_no_drift_sentence_without_the_last_candidate() -> None:
    assert report.drift_note([_served(CANDIDATE, 800.0)]) == ""


def test_grpc_share_of_rest_covers_every_concurrency_measured_with_both() -> None:
    entries = [
        _served("shipped", 100.0, "rest", 1),
        _served("shipped", 96.0, "grpc", 1),
        _served("shipped", 400.0, "rest", 4),
        _served("shipped", 324.0, "grpc", 4),
        _served("shipped", 800.0, "rest", 8),
        _served("shipped", 999.0, "grpc", 16),
        _served(CANDIDATE, 10.0, "grpc", 32),
        _served(CANDIDATE, 1000.0, "rest", 32),
    ]
    assert analysis.grpc_share_of_rest(analysis.protocol_pairs(entries)) == "c=1 96%, c=4 81%"


def _grpc_and_rest(concurrency: int, grpc_rps: float, rest_rps: float) -> list[dict[str, Any]]:
    """A back-to-back pair of the shipped configuration, with what the gRPC target reads."""
    shared = {
        "median_ms": 5.0,
        "frontend_cpu_ms_per_request": 0.5,
        "client_cpu_ms_per_request": 0.3,
        "worker_cpu_ms_per_request": 2.0,
    }
    return [
        {**_served("shipped", grpc_rps, "grpc", concurrency), **shared},
        {**_served("shipped", rest_rps, "rest", concurrency), **shared},
    ]


def test_grpc_target_fails_when_grpc_is_slower_between_the_ends_of_the_sweep() -> None:
    tie_at_the_ends = _grpc_and_rest(1, 200.0, 200.0) + _grpc_and_rest(32, 1000.0, 990.0)
    slower_at_4 = tie_at_the_ends + _grpc_and_rest(4, 400.0, 500.0)
    within_noise_at_4 = tie_at_the_ends + _grpc_and_rest(4, 480.0, 500.0)

    failed = analysis._grpc_target(slower_at_4)
    assert failed["met"] is False
    assert "slower beyond the noise at c=4" in failed["note"]
    assert "c=4 80%" in failed["note"]
    assert analysis._grpc_target(within_noise_at_4)["met"] is True


def test_batching_table_pairs_each_concurrency_measured_with_and_without_batching() -> None:
    unbatched = SHIPPED_UNBATCHED.name
    entries = [
        {"kind": "cold-start", "variant": unbatched, "cold_start_s": 3.0},
        {**_served("shipped", 400.0, "rest", 4), "median_ms": 9.0, "mean_batch_size": 2.5},
        {**_served(unbatched, 650.0, "rest", 4), "median_ms": 6.0, "mean_batch_size": 1.0},
        {**_served("shipped", 1100.0, "rest", 32), "median_ms": 28.0, "mean_batch_size": 7.9},
        {**_served(unbatched, 600.0, "rest", 32), "median_ms": 52.0, "mean_batch_size": 1.0},
        {**_served(unbatched, 630.0, "grpc", 8), "median_ms": 12.0, "mean_batch_size": 1.0},
    ]
    table = [line for line in report.batching_sweep(entries) if line.startswith("| ")]
    assert table[1:] == [
        "| 4 | 9.00 | 400.00 | 2.50 | 6.00 | 650.00 |",
        "| 32 | 28.00 | 1,100.00 | 7.90 | 52.00 | 600.00 |",
    ]


def test_no_batching_table_without_the_unbatched_variant() -> None:
    assert report.batching_sweep([_served("shipped", 400.0, "rest", 4)]) == []


def test_best_tuning_row_is_shown_beside_the_shipped_configuration_measured_again() -> None:
    entries = [
        {
            **_served("1-worker", 250.0, "rest", 1),
            "group": "tuning",
            "requests": 9,
            "median_ms": 3.8,
        },
        {
            **_served(CANDIDATE, 170.0, "rest", 1),
            "group": "tuning",
            "requests": 9,
            "median_ms": 5.8,
        },
        {
            **_served(DRIFT_CHECK, 200.0, "rest", 1),
            "group": "tuning",
            "requests": 9,
            "median_ms": 4.4,
        },
    ]
    note = analysis.best_tuning_note(entries, 1, "median_ms", lowest=True)
    assert note == (
        "; best tuning row: 1-worker at 3.80 (the shipped configuration's own tuning rows: "
        "5.80 and 4.40)"
    )
