"""deploy/prometheus and deploy/grafana checked by Prometheus's own tool: the configuration and
rules are valid, every alert fires and stays silent when it should (alerts_test.yml), and every
dashboard query is valid PromQL."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from config import PROJECT_ROOT
from tests.conftest import require_or_skip

PROMETHEUS_DIR = PROJECT_ROOT / "deploy" / "prometheus"
DASHBOARD = PROJECT_ROOT / "deploy" / "grafana" / "mnist.json"


def alert_rules() -> list[dict]:
    groups = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard_queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        require_or_skip("REQUIRE_PROMETHEUS", "promtool is not installed (Debian's prometheus)")
    return str(path)


def run(promtool: str, *args: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess:
    return subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_the_configuration_and_the_rules_are_valid(promtool: str) -> None:
    for args in (("check", "config", "prometheus.yml"), ("check", "rules", "alerts.yml")):
        checked = run(promtool, *args)
        assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_compose_stacks_configuration_is_valid_and_scrapes_the_same_jobs(
    promtool: str, tmp_path: Path
) -> None:
    """deploy/compose/prometheus.yml, as the stack's image lays it out: beside alerts.yml."""
    config = yaml.safe_load((PROJECT_ROOT / "deploy" / "compose" / "prometheus.yml").read_text())
    (tmp_path / "app-metrics-token").write_text("secret")
    [app_job] = [job for job in config["scrape_configs"] if job["job_name"] == "mnist-app"]
    app_job["authorization"]["credentials_file"] = str(tmp_path / "app-metrics-token")
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    shutil.copy(PROMETHEUS_DIR / "alerts.yml", tmp_path / "alerts.yml")
    checked = run(promtool, "check", "config", "prometheus.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    local = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert jobs == {job["job_name"] for job in local["scrape_configs"]}


def test_every_alert_fires_and_stays_silent_as_its_unit_tests_say(promtool: str) -> None:
    tested = run(promtool, "test", "rules", "alerts_test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    cases = yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml").read_text())["tests"]
    names = {case["alertname"] for test in cases for case in test["alert_rule_test"]}
    assert names == {rule["alert"] for rule in alert_rules()}


@pytest.mark.parametrize("alert", [rule["alert"] for rule in alert_rules()])
def test_an_alert_that_never_fires_fails_its_unit_test(
    promtool: str, alert: str, tmp_path: Path
) -> None:
    """The unit tests can fail: with one alert's expression replaced by one that is never
    true, `promtool test rules` reports it."""
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule["alert"] == alert:
                rule["expr"] = "vector(1) > 2"
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules))
    shutil.copy(PROMETHEUS_DIR / "alerts_test.yml", tmp_path)
    tested = run(promtool, "test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert tested.returncode != 0
    assert alert in tested.stdout + tested.stderr


def test_every_dashboard_query_is_valid_promql(promtool: str, tmp_path: Path) -> None:
    """promtool parses them as recording rules."""
    queries = dashboard_queries()
    assert len(queries) >= 9
    rules = [{"record": f"dashboard:query_{n}", "expr": q} for n, q in enumerate(queries)]
    (tmp_path / "dashboard_rules.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]})
    )
    checked = run(promtool, "check", "rules", "dashboard_rules.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
