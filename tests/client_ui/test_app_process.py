"""The real app process (`python -m client_ui`): who may talk to it, and pages under faults.

Requests go over real HTTP and raw websocket handshakes, the way a browser on another site (DNS
rebinding) or another local process would send them.
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from sqlalchemy.engine import make_url

from config import PROJECT_ROOT
from serving.server import free_ports
from tests.fixtures.database import PostgresServer, PrivatePostgres

pytestmark = pytest.mark.slow  # each test starts the app as its own process

SOCKET_IO = "/_nicegui_ws/socket.io/?EIO=4&transport=polling"
WEBSOCKET = "/_nicegui_ws/socket.io/?EIO=4&transport=websocket"
#: NiceGUI's own limit for building a page.
PAGE_LIMIT_S = 3.0
PASSWORD = "correct horse battery staple"


class App:
    """`python -m client_ui` with the given settings; stopped with SIGINT."""

    def __init__(self, tmp_path: Path, **settings: str) -> None:
        (self.port,) = free_ports(1)
        inherited = {
            name: value
            for name, value in os.environ.items()
            if name != "PYTEST_CURRENT_TEST" and not name.startswith(("NICEGUI_", "UI_"))
        }
        closed = f"http://127.0.0.1:{free_ports(1)[0]}"
        self.env = {
            **inherited,
            "UI_HOST": "127.0.0.1",
            "UI_PORT": str(self.port),
            "MNIST_DATA_DIR": str(tmp_path / "data"),
            "DATABASE_URL": f"sqlite:///{tmp_path / 'app.db'}",
            "TS_INFERENCE_URL": closed,
            "TS_MANAGEMENT_URL": closed,
            "TS_METRICS_URL": closed,
            **settings,
        }
        self.log_path = tmp_path / f"app-{self.port}.log"
        listening = self.env["UI_HOST"]
        self.url = f"http://{'127.0.0.1' if listening == '0.0.0.0' else listening}:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> App:
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "client_ui"],
                cwd=PROJECT_ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return self
            try:
                requests.get(self.url, timeout=2)
                return self
            except requests.ConnectionError:
                time.sleep(0.3)
        pytest.fail(f"the app did not answer within 60 s:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def get(self, path: str, **headers: str) -> requests.Response:
        return requests.get(self.url + path, headers=headers, timeout=10)

    def websocket_status(self, **headers: str) -> int:
        """The status of a websocket handshake to NiceGUI's socket.io (101: accepted)."""
        return self.raw_status(
            f"GET {WEBSOCKET} HTTP/1.1",
            f"Host: 127.0.0.1:{self.port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version: 13",
            *(f"{name.replace('_', '-')}: {value}" for name, value in headers.items()),
        )

    def raw_status(self, *lines: str) -> int:
        """The status of a request written line by line (headers a client library would merge)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as connection:
            connection.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            status_line = connection.recv(4096).split(b"\r\n", 1)[0]
        return int(status_line.split()[1])


@pytest.fixture
def start_app(tmp_path: Path) -> Iterator:
    apps: list[App] = []

    def start(**settings: str) -> App:
        app = App(tmp_path, **settings).start()
        apps.append(app)
        return app

    yield start
    for app in apps:
        app.stop()


def basic(password: str) -> str:
    return "Basic " + base64.b64encode(f"me:{password}".encode()).decode()


def test_host_and_origin_are_checked_on_pages_and_socket_io(start_app) -> None:
    app = start_app()
    own = f"http://127.0.0.1:{app.port}"
    assert app.get("/").status_code == 200
    assert app.get("/", Host=f"localhost:{app.port}").status_code == 200
    assert app.get(SOCKET_IO, Origin=own).status_code == 200
    assert app.websocket_status(Origin=own) == 101

    rebound = f"attacker.example:{app.port}"
    refused = {
        "page, foreign Host": app.get("/history", Host=rebound).status_code,
        "socket.io, foreign Host": app.get(SOCKET_IO, Host=rebound).status_code,
        "socket.io, foreign Origin": app.get(
            SOCKET_IO, Origin="http://attacker.example"
        ).status_code,
        "socket.io, other local port": app.get(SOCKET_IO, Origin="http://127.0.0.1:1").status_code,
        "websocket, foreign Origin": app.websocket_status(Origin="http://attacker.example"),
        "websocket, null Origin": app.websocket_status(Origin="null"),
    }
    print(f"\nrefused requests and their status: {refused}")
    assert all(status in (400, 403) for status in refused.values()), refused


def test_a_repeated_host_or_origin_is_refused_and_a_refusal_logs_one_line(start_app) -> None:
    app = start_app()
    own = f"127.0.0.1:{app.port}"
    assert app.raw_status("GET / HTTP/1.1", f"Host: {own}") == 200
    assert app.raw_status("GET / HTTP/1.1", "Host: attacker.example", f"Host: {own}") == 400
    origins = ("Origin: http://attacker.example", f"Origin: http://{own}")
    assert app.raw_status("GET / HTTP/1.1", f"Host: {own}", *origins) == 400
    forged = "2026-12-07 14:00:00,000 INFO client_ui.main: login ok"
    assert app.get("/x%0a" + forged.replace(" ", "%20"), Host="attacker.example").status_code == 400
    assert not any(line.startswith(forged) for line in app.log_path.read_text().splitlines())


def test_the_app_keeps_its_files_from_other_users(start_app) -> None:
    app = start_app()
    database = Path(app.env["DATABASE_URL"].removeprefix("sqlite:///"))
    assert database.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    "settings",
    [{"UI_HOST": "0.0.0.0"}, {"UI_ALLOWED_HOSTS": "mnist.example.org"}],
    ids=["listening beyond loopback", "behind a proxy for a public name"],
)
def test_the_app_refuses_to_be_reached_from_elsewhere_without_a_password(
    start_app, settings: dict[str, str]
) -> None:
    app = start_app(**settings)
    assert app.process is not None
    assert app.process.wait(timeout=30) != 0
    assert "UI_PASSWORD" in app.log_path.read_text()


def test_the_login_protects_pages_and_their_websocket(start_app) -> None:
    app = start_app(UI_HOST="0.0.0.0", UI_PASSWORD=PASSWORD)
    assert app.process is not None and app.process.poll() is None, app.log_path.read_text()
    own = f"http://127.0.0.1:{app.port}"
    answers = {
        "page, no login": app.get("/").status_code,
        "page, wrong password": app.get("/", Authorization=basic("guess")).status_code,
        "socket.io, no login": app.get(SOCKET_IO, Origin=own).status_code,
        "websocket, no login": app.websocket_status(Origin=own),
    }
    print(f"\nwithout the password: {answers}")
    assert answers == {
        "page, no login": 401,
        "page, wrong password": 401,
        "socket.io, no login": 401,
        "websocket, no login": 403,
    }
    assert "Basic" in app.get("/").headers["WWW-Authenticate"]
    login = basic(PASSWORD)
    assert app.get("/", Authorization=login).status_code == 200
    assert app.get(SOCKET_IO, Origin=own, Authorization=login).status_code == 200
    assert app.websocket_status(Origin=own, Authorization=login) == 101


def test_the_metrics_token_reads_metrics_and_nothing_else(start_app) -> None:
    app = start_app(UI_HOST="0.0.0.0", UI_PASSWORD=PASSWORD, METRICS_TOKEN="scrape-only")
    token = "Bearer scrape-only"
    answers = {
        "metrics, token": app.get("/metrics", Authorization=token).status_code,
        "metrics, wrong token": app.get("/metrics", Authorization="Bearer guess").status_code,
        "metrics, password": app.get("/metrics", Authorization=basic(PASSWORD)).status_code,
        "page, token": app.get("/", Authorization=token).status_code,
        "history, token": app.get("/history", Authorization=token).status_code,
        "socket.io, token": app.get(SOCKET_IO, Authorization=token).status_code,
    }
    assert answers == {
        "metrics, token": 200,
        "metrics, wrong token": 401,
        "metrics, password": 200,
        "page, token": 401,
        "history, token": 401,
        "socket.io, token": 401,
    }
    assert "mnist_app" in app.get("/metrics", Authorization=token).text


def health_check(app: App, **settings: str) -> subprocess.CompletedProcess:
    """`python -m client_ui.health` (the containers' health check) with the app's settings."""
    env = {**app.env, **settings}
    command = [sys.executable, "-m", "client_ui.health"]
    return subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True)


def test_the_health_check_logs_in_and_fails_when_the_app_does_not_answer(start_app) -> None:
    app = start_app(UI_HOST="0.0.0.0", UI_PASSWORD=PASSWORD)
    assert health_check(app).returncode == 0
    assert "HTTP 401" in health_check(app, UI_PASSWORD="guess").stderr
    app.stop()
    assert health_check(app).returncode == 1


def test_the_health_check_names_an_allowed_host_at_the_address_the_app_listens_on(
    start_app,
) -> None:
    public_name = start_app(
        UI_HOST="0.0.0.0", UI_PASSWORD=PASSWORD, UI_ALLOWED_HOSTS="mnist.example.org"
    )
    check = health_check(public_name)
    assert check.returncode == 0, check.stderr
    public_name.stop()
    one_address = start_app(UI_HOST="127.0.0.2", UI_PASSWORD=PASSWORD)
    check = health_check(one_address)
    assert check.returncode == 0, check.stderr


@pytest.mark.slow
@pytest.mark.postgres
def test_every_page_renders_in_time_while_torchserve_and_postgres_hang(
    start_app, black_hole: str, private_postgres: PrivatePostgres
) -> None:
    server = PostgresServer(make_url(private_postgres.url))
    name = server.new_name()
    hung = {"TS_INFERENCE_URL": black_hole, "TS_MANAGEMENT_URL": black_hole}
    app = start_app(DATABASE_URL=server.create(name), TS_METRICS_URL=black_hole, **hung)
    try:
        private_postgres.hang()
        timings = {}
        for path in ("/", "/history", "/statistics"):
            started = time.monotonic()
            response = app.get(path)
            timings[path] = (response.status_code, round(time.monotonic() - started, 2))
            assert "response_timeout" not in response.text
        print(f"\nTorchServe and PostgreSQL hung: (status, seconds) per page {timings}")
        assert all(status == 200 and seconds < PAGE_LIMIT_S for status, seconds in timings.values())
    finally:
        private_postgres.resume()
        app.stop()
        server.drop(name)
