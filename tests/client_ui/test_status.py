"""The status panel's figures from what TorchServe answers, against a fake TorchServe."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from client_ui.status import fetch_status
from serving.client import TorchServeClient

#: TorchServe's answers when the model has no healthy worker: its ping says so with a 500.
UNHEALTHY = {
    "/ping": (500, {"status": "Unhealthy"}),
    "/models/mnist": (200, [{"modelVersion": "1.0", "workers": [{"status": "UNHEALTHY"}]}]),
    "/metrics": (200, "ts_inference_requests_total 0.0\n"),
}


class UnhealthyTorchServe(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status, body = UNHEALTHY.get(self.path, (404, {}))
        payload = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def unhealthy_client(tmp_path: Path) -> Iterator[TorchServeClient]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), UnhealthyTorchServe)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    client = TorchServeClient(
        inference_url=url,
        management_url=url,
        metrics_url=url,
        key_file=tmp_path / "no_keys.json",
        model_name="mnist",
        timeout_s=2.0,
        retries=0,
    )
    yield client
    client.close()
    server.shutdown()
    server.server_close()


def test_a_server_without_a_healthy_worker_is_shown_unhealthy_not_unreachable(
    unhealthy_client: TorchServeClient,
) -> None:
    status = fetch_status(unhealthy_client)
    assert (status.health_text, status.healthy) == ("Unhealthy", False)
    assert status.workers == "0 ready of 1"
    assert status.errors == []
