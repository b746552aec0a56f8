"""A real Prometheus scraping a real TorchServe and the real app while a person (headless
Chromium) draws and labels digits: every alert expression and every dashboard query is asked
of Prometheus's HTTP API and gives the series it should."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlparse

import pytest
import requests
import yaml
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from serving.server import free_ports
from tests.client_ui.test_browser_e2e import (  # noqa: F401  (fixtures)
    STROKES,
    app_url,
    browser,
    by_testid,
    draw,
    wait_for_text,
)
from tests.conftest import require_or_skip
from tests.deploy.test_prometheus_rules import PROMETHEUS_DIR, alert_rules, dashboard_queries
from tests.fixtures.waiting import wait_until_ok

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.postgres]

SCRAPE_INTERVAL = "1s"
READY_TIMEOUT_S = 60.0
# What the screenshot for docs/observability.md shows: each of the project's counters and gauges.
PICTURED_QUERY = (
    'sum by (__name__) ({__name__=~"mnist_.+_total|mnist_app_.+_(up|pending|ready|min)"})'
)
# The metric names the project's queries read: its own, and TorchServe's it relies on.
METRIC_NAME = re.compile(r"\b(mnist_\w+|ts_\w+|Requests\dXX|up)\b")


@pytest.fixture
def prometheus(torchserve: Any, app_url: str, tmp_path: Path) -> Iterator[str]:  # noqa: F811
    """Debian's prometheus on a free port, scraping both every second, with the alert rules."""
    binary = shutil.which("prometheus")
    if binary is None:
        require_or_skip("REQUIRE_PROMETHEUS", "prometheus is not installed (Debian's prometheus)")
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": "1s"}
    config["rule_files"] = [str(PROMETHEUS_DIR / "alerts.yml")]
    targets = {
        "torchserve": urlparse(torchserve.settings.metrics_url).netloc,
        "mnist-app": urlparse(app_url).netloc,
    }
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    (port,) = free_ports(1)
    log = (tmp_path / "prometheus.log").open("w")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ok(f"{url}/-/ready", READY_TIMEOUT_S, tmp_path / "prometheus.log")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def query(prometheus: str, expression: str) -> list[dict]:
    answer = requests.get(f"{prometheus}/api/v1/query", params={"query": expression}, timeout=10)
    body = answer.json()
    assert body["status"] == "success", (expression, body)
    return body["data"]["result"]


def eventually(check, seconds: float = 60.0) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(1)


def test_prometheus_gets_every_series_the_alerts_and_the_dashboard_read(
    prometheus: str,
    browser: WebDriver,  # noqa: F811
    app_url: str,  # noqa: F811
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    browser.get(app_url)
    canvas = WebDriverWait(browser, 20).until(lambda d: by_testid(d, "canvas"))
    for true_digit, strokes in STROKES.items():
        by_testid(browser, "clear-button").click()
        wait_for_text(browser, "predicted-digit", lambda text: text == "–")
        draw(browser, canvas, strokes)
        wait_for_text(browser, "predicted-digit", lambda text: text.isdigit())
        by_testid(browser, f"label-{true_digit}").click()
        wait_for_text(browser, "save-status", lambda text, d=true_digit: f"true label {d}." in text)

    up = eventually(lambda: len(query(prometheus, "up == 1")) == 2)
    assert up, query(prometheus, "up")
    drawn = len(STROKES)
    assert eventually(
        lambda: (
            sum(float(s["value"][1]) for s in query(prometheus, "mnist_app_predictions_total"))
            >= drawn
        )
    )
    assert eventually(lambda: query(prometheus, f"sum(mnist_app_labels_total) == {drawn}"))
    assert eventually(lambda: query(prometheus, "sum(mnist_predictions_total) >= 3"))

    report = {}
    for expression in dashboard_queries():
        series = eventually(lambda e=expression: query(prometheus, e), seconds=30)
        report[expression] = len(series)
        assert series, f"no series for the dashboard query {expression}"
    for rule in alert_rules():
        names = set(METRIC_NAME.findall(rule["expr"]))
        for name in names:
            assert query(prometheus, f'count({{__name__=~"{name}(_bucket)?"}})'), name
        firing = query(prometheus, rule["expr"])
        report[rule["alert"]] = f"reads {sorted(names)}, {len(firing)} firing"
        assert firing == [], f"{rule['alert']} fires on a healthy stack: {firing}"
    alerts = requests.get(f"{prometheus}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
    assert [a for a in alerts if a["state"] == "firing"] == []
    print("\nPrometheus, per query:", *(f"  {k}: {v}" for k, v in report.items()), sep="\n")

    screenshots = request.config.getoption("--screenshots") or tmp_path
    screenshots.mkdir(parents=True, exist_ok=True)
    graphs = {"g0.expr": PICTURED_QUERY, "g0.tab": "1"}
    browser.set_window_size(1280, 900)
    browser.get(f"{prometheus}/graph?{urlencode(graphs)}")
    time.sleep(3)  # the table is filled after its query returns
    assert browser.save_screenshot(str(screenshots / "screenshot_prometheus.png"))
    browser.set_window_size(1280, 820)
