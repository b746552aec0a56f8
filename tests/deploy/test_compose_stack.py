"""`make compose-smoke`: the compose stack (deploy/compose/compose.yaml) started with podman, used
through its one published port, and removed.

Too heavy for CI (the images carry PyTorch), so it runs only with COMPOSE_SMOKE=1, which
`make compose-smoke` sets after `make images`. A real browser draws on the app's page; the row
is read from the stack's own PostgreSQL; Prometheus inside the stack is asked what it scrapes.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from config import PROJECT_ROOT, get_settings
from model import versions
from serving.server import free_ports
from tests.client_ui.test_browser_e2e import (  # noqa: F401  (browser is a fixture)
    STROKES,
    browser,
    by_testid,
    draw,
    wait_for_text,
)
from tests.deploy.test_k8s_manifests import the

# Building nothing, but starting four services and restarting one takes minutes.
pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.timeout(1500)]

COMPOSE_FILE = PROJECT_ROOT / "deploy" / "compose" / "compose.yaml"
PROJECT = "mnist-smoke"
SERVICES = ("postgres", "torchserve", "app", "prometheus")
START_TIMEOUT_S = 420.0


@dataclass(frozen=True)
class Stack:
    port: int
    password: str
    database_password: str
    compose: list[str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def run(self, *args: str, check: bool = True) -> str:
        done = subprocess.run(
            [*self.compose, *args], capture_output=True, text=True, check=False, timeout=300
        )
        if check and done.returncode != 0:
            pytest.fail(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        return done.stdout

    def exec(self, service: str, *command: str) -> str:
        return self.run("exec", "-T", service, *command)

    def sql(self, query: str) -> str:
        login = f"PGPASSWORD={self.database_password}"
        psql = ["psql", "-h", "127.0.0.1", "-U", "mnist", "-d", "mnist", "-tAc", query]
        return self.run("exec", "-T", "-e", login, "postgres", *psql).strip()

    def container(self, service: str) -> str:
        return f"{PROJECT}_{service}_1"

    def wait_healthy(self, service: str, timeout_s: float = START_TIMEOUT_S) -> None:
        """Run the container's own health check until it passes (podman runs health checks
        on a timer only under systemd, so the test runs them itself)."""
        deadline = time.monotonic() + timeout_s
        answer = ""
        while time.monotonic() < deadline:
            done = subprocess.run(
                ["podman", "healthcheck", "run", self.container(service)],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            if done.returncode == 0:
                return
            answer = done.stdout + done.stderr
            time.sleep(2)
        logs = podman("logs", "--tail", "40", self.container(service))
        pytest.fail(f"{service} not healthy after {timeout_s:.0f} s ({answer.strip()}):\n{logs}")


def podman(*args: str) -> str:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=120)
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if os.environ.get("COMPOSE_SMOKE") != "1":
        pytest.skip("the compose stack's images carry PyTorch: `make compose-smoke` runs this")
    [port] = free_ports(1)
    password, database_password = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    env_file = tmp_path_factory.mktemp("compose") / ".env"
    env_file.write_text(
        f"POSTGRES_PASSWORD={database_password}\nUI_PASSWORD={password}\nAPP_PORT={port}\n"
        f"METRICS_TOKEN={secrets.token_urlsafe(16)}\n"
    )
    compose = [
        str(Path(sys.executable).with_name("podman-compose")),
        "--project-name", PROJECT, "--env-file", str(env_file), "-f", str(COMPOSE_FILE),
    ]  # fmt: skip
    stack = Stack(port, password, database_password, compose)
    stack.run("down", "--volumes", check=False)  # what an interrupted run left
    started = time.monotonic()
    stack.run("up", "-d")
    try:
        for service in SERVICES:  # each has a health check
            stack.wait_healthy(service)
        print(f"\ncompose stack healthy {time.monotonic() - started:.0f} s after `up`")
        yield stack
    finally:
        stack.run("down", "--volumes", check=False)
        leftovers = podman("ps", "-a", "--filter", f"name={PROJECT}", "--format", "{{.Names}}")
        volumes = podman("volume", "ls", "--filter", f"name={PROJECT}", "--format", "{{.Name}}")
        print(f"after `down --volumes`: containers {leftovers.split()}, volumes {volumes.split()}")


def test_only_the_app_is_published_and_only_on_loopback(stack: Stack) -> None:
    published = {service: podman("port", stack.container(service)).split() for service in SERVICES}
    assert published["app"] == ["8000/tcp", "->", f"127.0.0.1:{stack.port}"]
    assert all(not published[service] for service in SERVICES if service != "app"), published


def test_every_service_runs_as_a_user_and_holds_no_baked_secret(stack: Stack) -> None:
    for service in ("torchserve", "app", "postgres", "prometheus"):
        assert stack.exec(service, "id", "-u").strip() != "0", service
    read_only = stack.run("exec", "-T", "app", "touch", "/app/written", check=False)
    assert stack.exec("app", "sh", "-c", "test -e /app/written || echo absent").strip() == "absent"
    assert read_only == ""
    image_env = podman("image", "inspect", "--format", "{{.Config.Env}}", "localhost/mnist:latest")
    for baked in (
        "PASSWORD",
        "PIP_CERT",
        "PIP_EXTRA_INDEX_URL",
        "PIP_FIND_LINKS",
        "PIP_CONSTRAINT",
    ):
        assert baked not in image_env


def test_the_page_answers_behind_the_login(stack: Stack) -> None:
    assert requests.get(stack.url, timeout=10).status_code == 401
    assert requests.get(stack.url, auth=("smoke", stack.password), timeout=10).status_code == 200
    foreign = requests.get(
        stack.url, auth=("smoke", stack.password), headers={"Host": "evil.example"}, timeout=10
    )
    assert foreign.status_code == 400


def draw_and_label(driver: WebDriver, digit: int) -> tuple[str, int]:
    """Draw `digit` on the Draw page, label it; returns the shown digit and the row id."""
    canvas = WebDriverWait(driver, 30).until(lambda d: by_testid(d, "canvas"))
    by_testid(driver, "clear-button").click()
    wait_for_text(driver, "predicted-digit", lambda text: text == "–")
    draw(driver, canvas, STROKES[digit])
    shown = wait_for_text(driver, "predicted-digit", lambda text: text.isdigit(), timeout=60)
    by_testid(driver, f"label-{digit}").click()
    status = wait_for_text(driver, "save-status", lambda text: f"true label {digit}." in text)
    return shown, int(status.split("#")[1].split(",")[0])


def test_a_drawing_goes_through_torchserve_into_postgres(
    stack: Stack,
    browser: WebDriver,  # noqa: F811
) -> None:
    browser.get(f"http://smoke:{stack.password}@127.0.0.1:{stack.port}/")
    shown, row_id = draw_and_label(browser, 7)
    row = stack.sql(
        f"SELECT predicted_digit, true_label, model_version FROM predictions WHERE id = {row_id}"
    )
    predicted, label, version = row.split("|")
    print(f"\ndrawn 7, shown {shown}; PostgreSQL row {row_id}: {row}")
    assert (predicted, label) == (shown, "7")
    settings = get_settings()  # the image serves the store's default version (make kserve-store)
    assert version == versions.default_version(settings.model_store, settings.model_name)


def test_the_app_keeps_working_when_torchserve_renews_its_keys(
    stack: Stack,
    browser: WebDriver,  # noqa: F811
) -> None:
    before = stack.exec("app", "cat", "/keys/key_file.json")
    stack.run("restart", "torchserve")
    stack.wait_healthy("torchserve")
    assert stack.exec("app", "cat", "/keys/key_file.json") != before  # new tokens
    browser.get(f"http://smoke:{stack.password}@127.0.0.1:{stack.port}/")
    shown, row_id = draw_and_label(browser, 1)
    assert stack.sql(f"SELECT predicted_digit FROM predictions WHERE id = {row_id}") == shown


def test_prometheus_scrapes_torchserve_and_the_app(stack: Stack) -> None:
    query = ["promtool", "query", "instant", "http://127.0.0.1:9090"]
    expressions = {
        "up": "up == 1",
        "drawings saved": "sum(mnist_app_predictions_saved_total) > 0",
        "TorchServe requests": "sum(ts_inference_requests_total) > 0",
    }

    def scraped(answers: dict[str, str]) -> bool:
        up = answers["up"]
        counted = "=>" in answers["drawings saved"] and "=>" in answers["TorchServe requests"]
        return 'job="torchserve"' in up and 'job="mnist-app"' in up and counted

    answers: dict[str, str] = {}
    # TorchServe was just restarted: its counters start again from 0, and the drawing made
    # since shows only once Prometheus has scraped it again (every 15 s).
    for _ in range(30):
        answers = {
            name: stack.exec("prometheus", *query, expression).strip()
            for name, expression in expressions.items()
        }
        if scraped(answers):
            break
        time.sleep(5)
    print(f"\nPrometheus in the stack: {answers}")
    assert scraped(answers)


def resident_mib(stack: Stack, service: str) -> dict[str, float]:
    """Resident memory of every process in the service's container, MiB by process name."""
    script = 'for s in /proc/[0-9]*/status; do grep -hE "^(Name|VmRSS):" "$s"; done'
    fields = stack.exec(service, "sh", "-c", script).split()
    sizes: dict[str, float] = {}
    for index, word in enumerate(fields):
        if word == "VmRSS:":
            name = fields[index - 1]
            sizes[name] = sizes.get(name, 0.0) + int(fields[index + 1]) / 1024
    return sizes


def mebibytes(quantity: str) -> float:
    units = {"Mi": 1.0, "Gi": 1024.0}
    return float(quantity[:-2]) * units[quantity[-2:]]


def test_the_measured_memory_fits_the_kubernetes_limits(stack: Stack) -> None:
    torchserve, app = resident_mib(stack, "torchserve"), resident_mib(stack, "app")
    print(f"\nresident MiB, torchserve: {torchserve}; app: {app}")
    predictor = the("InferenceService", "mnist")["spec"]["predictor"]["model"]["resources"]
    [app_container] = the("StatefulSet", "mnist-app")["spec"]["template"]["spec"]["containers"]
    assert sum(torchserve.values()) < mebibytes(predictor["requests"]["memory"])
    assert sum(app.values()) < mebibytes(app_container["resources"]["requests"]["memory"])


def test_the_app_and_torchserve_stop_when_asked(stack: Stack) -> None:
    """Stopped last: each ends on SIGTERM within podman's grace period, not by SIGKILL (137)."""
    exits = {}
    for service in ("app", "torchserve"):
        podman("stop", "--time", "30", stack.container(service))
        state = podman("inspect", "--format", "{{.State.ExitCode}}", stack.container(service))
        exits[service] = int(state.split()[0])
    print(f"\nexit status after `podman stop`: {exits}")
    assert exits == {"app": 0, "torchserve": 0}
