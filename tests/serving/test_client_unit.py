"""TorchServeClient against a fake TorchServe (http.server in a thread): retries, errors, tokens."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import pytest

from serving.client import (
    MAX_REQUEST_BYTES,
    AuthorizationError,
    InputRejectedError,
    ServerUnavailableError,
    ServerUnhealthyError,
    TorchServeClient,
    WorkerDiedError,
)
from serving.grpc_stubs import inference_pb2, inference_pb2_grpc
from serving.server import free_ports

TOKEN_REFUSAL = {
    "code": 400,
    "type": "InvalidKeyException",
    "message": "Token Authorization failed",
}


@dataclass
class FakeTorchServe:
    """Scripted answers per (method, path) and a log of what arrived."""

    key_file: Path
    answers: dict[tuple[str, str], list[tuple[int, object]]] = field(default_factory=dict)
    seen: list[tuple[str, str, str]] = field(default_factory=list)
    valid_keys: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    #: Requests to cut off without an answer, as a restarting server does.
    drops: int = 0
    url: str = ""

    def write_keys(self, inference: str, management: str = "m1", api: str = "api") -> None:
        document = {
            "management": {"key": management, "expiration time": "later"},
            "inference": {"key": inference, "expiration time": "later"},
            "API": {"key": api},
        }
        self.key_file.write_text(json.dumps(document))

    def answer(self, method: str, path: str, authorization: str) -> tuple[int, object]:
        self.seen.append((method, path, authorization))
        time.sleep(self.delay_s)
        if path.startswith("/token"):
            # Like TorchServe: a new key goes into the key file, the answer body is empty.
            self.valid_keys["inference"] = "fresh"
            self.write_keys(inference="fresh")
            return 200, ""
        wanted = self.valid_keys.get("inference")
        if wanted and path != "/metrics" and authorization != f"Bearer {wanted}":
            return 400, TOKEN_REFUSAL
        queue = self.answers.get((method, path))
        return queue.pop(0) if queue and len(queue) > 1 else (queue[0] if queue else (404, {}))


def _handler_class(fake: FakeTorchServe) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _reply(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            if fake.drops:
                fake.drops -= 1
                fake.seen.append((method, self.path, "dropped"))
                self.close_connection = True
                return
            status, body = fake.answer(method, self.path, self.headers.get("Authorization", ""))
            payload = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self) -> None:
            self._reply("GET")

        def do_POST(self) -> None:
            self._reply("POST")

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeTorchServe]:
    fake = FakeTorchServe(key_file=tmp_path / "key_file.json")
    fake.write_keys(inference="i1")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(fake))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield fake
    server.shutdown()
    server.server_close()


def client_for(fake: FakeTorchServe, **overrides: object) -> TorchServeClient:
    options = {"timeout_s": 2.0, **overrides}
    return TorchServeClient(
        inference_url=fake.url,
        management_url=fake.url,
        metrics_url=fake.url,
        key_file=fake.key_file,
        model_name="mnist",
        **options,  # type: ignore[arg-type]
    )


def test_predict_sends_the_inference_token_and_returns_the_answer(fake: FakeTorchServe) -> None:
    answer = {"digit": 3, "confidence": 0.9, "probabilities": [0.1] * 10, "model_version": "1"}
    fake.answers[("POST", "/predictions/mnist")] = [(200, answer)]
    assert client_for(fake).predict(b"png") == answer
    assert fake.seen == [("POST", "/predictions/mnist", "Bearer i1")]


@pytest.mark.parametrize("use_grpc", [False, True], ids=["rest", "grpc"])
def test_a_body_over_torchserves_limit_is_refused_without_sending_it(
    fake: FakeTorchServe, use_grpc: bool
) -> None:
    with pytest.raises(InputRejectedError) as caught:
        client_for(fake).predict(bytes(MAX_REQUEST_BYTES + 1), use_grpc=use_grpc)
    assert caught.value.status == 413
    assert str(MAX_REQUEST_BYTES) in caught.value.message
    assert fake.seen == []


def test_idempotent_calls_are_retried_on_503(fake: FakeTorchServe) -> None:
    fake.answers[("GET", "/ping")] = [(503, {"message": "busy"}), (200, {"status": "Healthy"})]
    assert client_for(fake).health() == {"status": "Healthy"}
    assert [path for _, path, _ in fake.seen] == ["/ping", "/ping"]


def test_a_ping_answered_unhealthy_is_told_apart_from_no_answer(fake: FakeTorchServe) -> None:
    fake.answers[("GET", "/ping")] = [(500, {"status": "Unhealthy"})]
    with pytest.raises(ServerUnhealthyError, match="Unhealthy"):
        client_for(fake).health()


def test_predict_is_not_retried_after_the_request_was_sent(fake: FakeTorchServe) -> None:
    fake.answers[("POST", "/predictions/mnist")] = [(503, {"message": "queue full"}), (200, {})]
    with pytest.raises(ServerUnavailableError, match="queue full"):
        client_for(fake).predict(b"png")
    assert len(fake.seen) == 1


def test_a_4xx_becomes_input_rejected_with_the_servers_message(fake: FakeTorchServe) -> None:
    refusal = {"code": 400, "type": "InvalidInput", "message": "the drawing is blank"}
    fake.answers[("POST", "/predictions/mnist")] = [(400, refusal)]
    with pytest.raises(InputRejectedError) as caught:
        client_for(fake).predict(b"png")
    assert caught.value.status == 400
    assert caught.value.message == "the drawing is blank"


def test_a_slow_server_becomes_unavailable(fake: FakeTorchServe) -> None:
    fake.delay_s = 1.0
    fake.answers[("POST", "/predictions/mnist")] = [(200, {})]
    with pytest.raises(ServerUnavailableError, match="did not answer"):
        client_for(fake, timeout_s=0.2).predict(b"png")


def test_a_slow_answer_to_a_get_is_a_timeout_after_one_wait(fake: FakeTorchServe) -> None:
    fake.delay_s = 1.0
    fake.answers[("GET", "/ping")] = [(200, {"status": "Healthy"})]
    with pytest.raises(ServerUnavailableError, match=r"did not answer within 0\.3 s"):
        client_for(fake, timeout_s=0.3).health()
    assert [path for _, path, _ in fake.seen] == ["/ping"]


def test_a_get_cut_off_by_a_restart_is_sent_again(fake: FakeTorchServe) -> None:
    fake.drops = 1
    fake.answers[("GET", "/ping")] = [(200, {"status": "Healthy"})]
    assert client_for(fake).health() == {"status": "Healthy"}
    assert [auth for _, _, auth in fake.seen] == ["dropped", "Bearer i1"]


def test_a_closed_port_becomes_unavailable(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    client = TorchServeClient(
        inference_url=f"http://127.0.0.1:{port}",
        management_url=f"http://127.0.0.1:{port}",
        metrics_url=f"http://127.0.0.1:{port}",
        key_file=tmp_path / "key_file.json",
        timeout_s=1.0,
        retries=0,
    )
    with pytest.raises(ServerUnavailableError, match="cannot reach"):
        client.predict(b"png")


def test_a_changed_key_file_is_picked_up_without_asking_for_a_new_key(
    fake: FakeTorchServe,
) -> None:
    fake.answers[("GET", "/ping")] = [(200, {"status": "Healthy"})]
    client = client_for(fake)
    client.tokens.reload()
    fake.write_keys(inference="restarted")  # as after a server restart
    fake.valid_keys["inference"] = "restarted"
    assert client.health() == {"status": "Healthy"}
    assert [auth for _, _, auth in fake.seen] == ["Bearer i1", "Bearer restarted"]


def test_an_expired_key_is_renewed_with_the_api_key(fake: FakeTorchServe) -> None:
    fake.answers[("GET", "/ping")] = [(200, {"status": "Healthy"})]
    fake.valid_keys["inference"] = "not-i1-any-more"  # the key in the file has expired
    assert client_for(fake).health() == {"status": "Healthy"}
    assert fake.seen[-2] == ("POST", "/token?type=inference", "Bearer api")
    assert fake.seen[-1] == ("GET", "/ping", "Bearer fresh")


def test_a_refused_token_without_a_working_api_key_is_an_authorization_error(
    fake: FakeTorchServe,
) -> None:
    fake.valid_keys["inference"] = "unknown"
    fake.write_keys(inference="i1", api="")
    with pytest.raises(AuthorizationError, match="inference token"):
        client_for(fake).health()


def test_metrics_need_no_token(fake: FakeTorchServe) -> None:
    fake.valid_keys["inference"] = "unknown"
    fake.answers[("GET", "/metrics")] = [(200, "Requests2XX 3.0\n")]
    assert "Requests2XX" in client_for(fake).metrics()


def test_a_burst_of_refused_requests_asks_for_one_new_key(fake: FakeTorchServe) -> None:
    fake.answers[("GET", "/ping")] = [(200, {"status": "Healthy"})]
    fake.valid_keys["inference"] = "not-i1-any-more"
    client = client_for(fake)
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda _: client.health(), range(16)))
    assert answers == [{"status": "Healthy"}] * 16
    assert [path for _, path, _ in fake.seen].count("/token?type=inference") == 1


def test_explain_posts_to_the_explanations_api_with_the_inference_token(
    fake: FakeTorchServe,
) -> None:
    answer = {"digit": 3, "attributions": [[0.0] * 28] * 28}
    fake.answers[("POST", "/explanations/mnist")] = [(200, answer)]
    assert client_for(fake).explain(b"png") == answer
    assert fake.seen == [("POST", "/explanations/mnist", "Bearer i1")]


def test_explain_is_not_retried_and_refuses_an_oversized_body(fake: FakeTorchServe) -> None:
    fake.answers[("POST", "/explanations/mnist")] = [(503, {"message": "busy"})]
    with pytest.raises(ServerUnavailableError):
        client_for(fake).explain(b"png")
    assert len(fake.seen) == 1
    with pytest.raises(InputRejectedError) as caught:
        client_for(fake).explain(bytes(MAX_REQUEST_BYTES + 1))
    assert caught.value.status == 413
    assert len(fake.seen) == 1


# --- a prediction that died with its worker --------------------------------------------------

WORKER_DIED = {"code": 507, "type": "InternalServerException", "message": "Worker died."}


@pytest.mark.parametrize("status", [507, 500])
def test_a_prediction_that_died_with_its_worker_is_sent_again(
    fake: FakeTorchServe, status: int
) -> None:
    answer = {"digit": 3, "confidence": 0.9, "probabilities": [0.1] * 10, "model_version": "1"}
    died = (status, {**WORKER_DIED, "code": status})
    fake.answers[("POST", "/predictions/mnist")] = [died, (200, answer)]
    assert client_for(fake).predict(b"png") == answer
    assert len(fake.seen) == 2


def test_an_input_that_kills_two_workers_is_not_sent_a_third_time(fake: FakeTorchServe) -> None:
    fake.answers[("POST", "/predictions/mnist")] = [(507, WORKER_DIED)]
    with pytest.raises(WorkerDiedError):
        client_for(fake).predict(b"png")
    assert len(fake.seen) == 2


def test_a_worker_that_keeps_dying_ends_in_worker_died_after_bounded_retries(
    fake: FakeTorchServe,
) -> None:
    fake.answers[("POST", "/predictions/mnist")] = [(507, WORKER_DIED)]
    with pytest.raises(WorkerDiedError, match="Worker died"):
        client_for(fake, prediction_retries=2).predict(b"png")
    assert len(fake.seen) == 3
    assert issubclass(WorkerDiedError, ServerUnavailableError)


def test_another_500_is_not_retried(fake: FakeTorchServe) -> None:
    fake.answers[("POST", "/predictions/mnist")] = [(500, {"message": "boom"}), (200, {})]
    with pytest.raises(ServerUnavailableError) as caught:
        client_for(fake).predict(b"png")
    assert not isinstance(caught.value, WorkerDiedError)
    assert len(fake.seen) == 1


class DyingWorkerServicer(inference_pb2_grpc.InferenceAPIsServiceServicer):
    """gRPC like TorchServe when the worker dies: the status, then answers again."""

    def __init__(self, failures: list[grpc.StatusCode]) -> None:
        self.failures = failures
        self.calls = 0

    def Predictions(self, request: object, context: grpc.ServicerContext) -> object:
        self.calls += 1
        if self.failures:
            code = self.failures.pop(0)
            context.abort(code, "Worker died.\norg.pytorch.serve.http.InternalServerException")
        return inference_pb2.PredictionResponse(prediction=json.dumps({"digit": 4}).encode())


@pytest.mark.parametrize(
    "failures",
    [
        [grpc.StatusCode.RESOURCE_EXHAUSTED],
        [grpc.StatusCode.INTERNAL],
    ],
    ids=["killed", "died"],
)
def test_a_grpc_prediction_that_died_with_its_worker_is_sent_again(
    fake: FakeTorchServe, failures: list[grpc.StatusCode]
) -> None:
    servicer = DyingWorkerServicer(list(failures))
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    inference_pb2_grpc.add_InferenceAPIsServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        client = client_for(fake, grpc_target=f"127.0.0.1:{port}")
        assert client.predict(b"png", use_grpc=True) == {"digit": 4}
        client.close()
    finally:
        server.stop(grace=None)
    assert servicer.calls == len(failures) + 1
