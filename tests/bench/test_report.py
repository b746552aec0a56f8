"""The report's drift sentence, on hand-made entries (no server needed)."""

from __future__ import annotations

from typing import Any

from serving.bench import report
from serving.bench.plan import CANDIDATE, DRIFT_CHECK


def _rest_c32(variant: str, requests_per_s: float) -> dict[str, Any]:
    return {
        "kind": "served",
        "variant": variant,
        "protocol": "rest",
        "concurrency": 32,
        "keep_alive": True,
        "requests_per_s": requests_per_s,
    }


def test_drift_compares_the_first_and_last_candidate() -> None:
    sentence = report.drift_note([_rest_c32(CANDIDATE, 800.0), _rest_c32(DRIFT_CHECK, 600.0)])
    assert "800" in sentence and "600" in sentence and "-25%" in sentence


def test_no_drift_sentence_without_the_last_candidate() -> None:
    assert report.drift_note([_rest_c32(CANDIDATE, 800.0)]) == ""
