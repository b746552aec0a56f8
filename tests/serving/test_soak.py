"""`make soak` in short: a private TorchServe under steady load, and the report's shape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import soak

pytestmark = pytest.mark.slow

SOAK_SECONDS = 20


def test_a_short_soak_reports_everything_and_no_errors(
    scripted_model: Path, mnist_dir: Path, tmp_path: Path
) -> None:
    minutes = str(SOAK_SECONDS / 60)
    status = soak.main(
        ["--minutes", minutes, "--model", str(scripted_model), "--results", str(tmp_path)]
    )
    report = json.loads((tmp_path / "soak.json").read_text())
    print("\n" + (tmp_path / "soak.md").read_text())
    assert report["requests"] > 0 and report["errors"] == 0
    assert set(report["latency_ms"]) == {"p50", "p90", "p99", "p99.9", "max"}
    for moment in ("start", "middle", "end"):
        processes = report["processes"][moment]
        assert processes["jvm"]["rss_mib"] > 0 and len(processes["workers"]) >= 1
        assert {"rss_mib", "open_files", "threads"} <= set(processes["workers"][0])
    assert set(report["log_growth_bytes"]) == set(soak.LOG_FILES)
    assert report["log_growth_bytes"]["access_log.log"] > 0
    assert report["flags"] == [] and status == 0, report["flags"]
