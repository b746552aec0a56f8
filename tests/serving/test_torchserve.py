"""Against the session's real TorchServe: answers, accuracy, batching, bad inputs, tokens,
the closed model API and the handler's metrics."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import struct
import subprocess
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import grpc
import numpy as np
import psutil
import pytest
import requests
import yaml
from PIL import Image, ImageDraw

from config import PROJECT_ROOT
from model.predictor import MNISTPredictor, Prediction
from serving.client import MAX_REQUEST_BYTES, InputRejectedError, TorchServeClient
from serving.grpc_stubs import inference_pb2, inference_pb2_grpc
from tests.conftest import require_or_skip
from tests.fixtures.serving import RunningTorchServe, process_umask
from training.drawings import STYLES, drawings

pytestmark = pytest.mark.slow

PER_STYLE = 100
MIN_ACCURACY = 0.9
METRIC_LINE = re.compile(r"^(?P<name>\w+)\{(?P<labels>[^}]*)\} (?P<value>\S+)$", re.M)


@cache
def predictor(model_path: str) -> MNISTPredictor:
    return MNISTPredictor(model_path, device="cpu")


METRICS_CONFIG = PROJECT_ROOT / "handler" / "metrics.yaml"
# Model metrics that TorchServe's Python worker emits itself under its own names.
TORCHSERVE_MODEL_METRICS = {"PredictionTime"}


def expected(torchserve: RunningTorchServe, images: list[bytes]) -> list[Prediction]:
    return predictor(str(torchserve.model_path)).predict_batch(images)


def assert_same_answer(answer: dict, reference: Prediction) -> None:
    assert answer["digit"] == reference.digit
    assert answer["model_version"] == "test"
    np.testing.assert_allclose(answer["probabilities"], reference.probabilities, atol=1e-4)


def metric_values(text: str, name: str) -> dict[str, float]:
    """Values of one Prometheus metric keyed by its label text."""
    return {
        match["labels"]: float(match["value"])
        for match in METRIC_LINE.finditer(text)
        if match["name"] == name
    }


def wait_for_metrics(client: TorchServeClient, done: Callable[[str], bool]) -> str:
    """Metrics arrive from the workers' logs a moment after the answers; poll a few seconds."""
    deadline = time.monotonic() + 15
    text = client.metrics()
    while not done(text) and time.monotonic() < deadline:
        time.sleep(0.3)
        text = client.metrics()
    return text


def post(torchserve: RunningTorchServe, body: bytes, content_type: str, token: str | None):
    headers = {"Content-Type": content_type}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    url = f"{torchserve.settings.inference_url}/predictions/{torchserve.settings.model_name}"
    return requests.post(url, data=body, headers=headers, timeout=30)


def inference_key(torchserve: RunningTorchServe) -> str | None:
    """The current inference key (the health call re-reads the key file if it changed)."""
    torchserve.client.health()
    return torchserve.client.tokens.key("inference")


# --- answers ---------------------------------------------------------------------------------


def test_rest_answers_match_the_predictor_on_every_style(torchserve: RunningTorchServe) -> None:
    """Also reports accuracy per drawing style, measured through the server."""
    accuracies = {}
    for style in STYLES:
        samples = drawings(style, PER_STYLE)
        images = [image for image, _ in samples]
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(torchserve.client.predict, images))
        for answer, reference in zip(answers, expected(torchserve, images), strict=True):
            assert_same_answer(answer, reference)
        labels = [label for _, label in samples]
        correct = sum(
            answer["digit"] == label for answer, label in zip(answers, labels, strict=True)
        )
        accuracies[style] = correct / len(samples)
    print("accuracy through TorchServe per style:", accuracies)
    assert min(accuracies.values()) >= MIN_ACCURACY, accuracies


def test_grpc_answers_match_the_predictor(torchserve: RunningTorchServe) -> None:
    images = [image for style in STYLES for image, _ in drawings(style, 5, seed=1)]
    answers = [torchserve.client.predict(image, use_grpc=True) for image in images]
    for answer, reference in zip(answers, expected(torchserve, images), strict=True):
        assert_same_answer(answer, reference)


def test_json_inputs_are_understood(torchserve: RunningTorchServe) -> None:
    image, _label = drawings("black_on_white", 1, seed=2)[0]
    reference = expected(torchserve, [image])[0]
    as_base64 = json.dumps({"image": base64.b64encode(image).decode()}).encode()
    assert_same_answer(torchserve.client.predict(as_base64), reference)


def test_a_concurrent_burst_is_batched_and_answers_stay_with_their_inputs(
    torchserve: RunningTorchServe,
) -> None:
    client = torchserve.client
    before = metric_values(client.metrics(), "mnist_handler_batches_total")
    images = [image for image, _ in drawings("canvas_transparent", 96, seed=3)]
    with ThreadPoolExecutor(max_workers=24) as pool:
        answers = list(pool.map(client.predict, images))
    for answer, reference in zip(answers, expected(torchserve, images), strict=True):
        assert_same_answer(answer, reference)

    def batched_requests(text: str) -> dict[int, float]:
        after = metric_values(text, "mnist_handler_batches_total")
        grown = {}
        for labels, value in after.items():
            size = int(re.search(r'batch_size="(\d+)"', labels)[1])
            grown[size] = grown.get(size, 0) + value - before.get(labels, 0.0)
        return grown

    def all_counted(text: str) -> bool:
        grown = batched_requests(text)
        return sum(size * count for size, count in grown.items()) >= len(images)

    grown = batched_requests(wait_for_metrics(client, all_counted))
    assert sum(size * count for size, count in grown.items()) >= len(images)
    assert any(size > 1 and count > 0 for size, count in grown.items()), grown


# --- bad inputs ------------------------------------------------------------------------------


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_claiming_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims `width` x `height`: a decompression bomb's calling card."""
    data = bytearray(png(Image.new("L", (1, 1))))
    header = b"IHDR" + struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(header))
    return bytes(data)


def a_drawn_stroke() -> bytes:
    """A valid drawing made without MNIST, so the parameters below exist at collection time."""
    image = Image.new("RGB", (280, 280), "white")
    ImageDraw.Draw(image).line([(140, 40), (140, 240)], fill="black", width=20)
    return png(image)


def bad_inputs() -> dict[str, tuple[bytes, str]]:
    good = a_drawn_stroke()
    octets, as_json = "application/octet-stream", "application/json"
    return {
        "empty body": (b"", octets),
        "not an image": (b"hello, this is text", octets),
        "truncated image": (good[: len(good) // 2], octets),
        "blank white drawing": (png(Image.new("RGB", (280, 280), "white")), octets),
        "blank transparent canvas": (png(Image.new("RGBA", (280, 280))), octets),
        "too many bytes": (b"\x89PNG\r\n\x1a\n" + bytes(2 * 1024 * 1024), octets),
        "decompression bomb": (png_claiming_size(60000, 60000), octets),
        "malformed JSON": (b'{"image": ', as_json),
        "JSON without image or pixels": (b'{"picture": "x"}', as_json),
        "bad base64": (b'{"image": "@@@not base64@@@"}', as_json),
        "wrong pixel count": (json.dumps({"pixels": [0] * 100}).encode(), as_json),
        "pixels out of range": (json.dumps({"pixels": [[300] * 28] * 28}).encode(), as_json),
    }


@pytest.mark.parametrize("name", list(bad_inputs()))
def test_bad_input_gets_a_4xx_with_a_json_message(torchserve: RunningTorchServe, name: str) -> None:
    body, content_type = bad_inputs()[name]
    response = post(torchserve, body, content_type, inference_key(torchserve))
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    message = response.json()["message"]
    assert isinstance(message, str) and message
    healthy = torchserve.client.predict(drawings("black_on_white", 1)[0][0])
    assert healthy["digit"] in range(10)


def test_client_raises_input_rejected_over_rest_and_grpc(torchserve: RunningTorchServe) -> None:
    for use_grpc in (False, True):
        with pytest.raises(InputRejectedError) as caught:
            torchserve.client.predict(b"not an image", use_grpc=use_grpc)
        assert caught.value.status == 400
        assert "not an image" in caught.value.message


def test_the_clients_body_limit_is_the_frontends(torchserve: RunningTorchServe) -> None:
    """A body of MAX_REQUEST_BYTES reaches the handler (its own 413 names a reason); one byte
    more is cut off by the frontend itself."""
    key = inference_key(torchserve)
    at_limit = post(torchserve, bytes(MAX_REQUEST_BYTES), "application/octet-stream", key)
    assert at_limit.status_code == 413 and at_limit.json()["reason"] == "too_large"
    over = post(torchserve, bytes(MAX_REQUEST_BYTES + 1), "application/octet-stream", key)
    assert over.status_code == 413 and "too_large" not in over.text


def test_every_listener_is_on_loopback(torchserve: RunningTorchServe) -> None:
    processes = [psutil.Process(torchserve.handle.pid)]
    processes += processes[0].children(recursive=True)
    listening = [
        connection.laddr
        for process in processes
        for connection in process.net_connections(kind="inet")
        if connection.status == psutil.CONN_LISTEN
    ]
    assert len(listening) >= 5  # REST inference, management, metrics; gRPC twice
    assert {address.ip for address in listening} <= {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def test_torchserve_writes_its_keys_and_logs_for_its_user_only(
    torchserve: RunningTorchServe,
) -> None:
    """TorchServe writes the key file world-readable before narrowing it: the frontend must run
    under a mask that lets no one else open it meanwhile."""
    assert process_umask(torchserve.handle.pid) == 0o077
    assert torchserve.settings.key_file.stat().st_mode & 0o777 == 0o600


def test_a_body_over_the_frontends_limit_is_refused(torchserve: RunningTorchServe) -> None:
    response = post(torchserve, bytes(4 * 1024 * 1024), "application/octet-stream", "x")
    assert response.status_code == 413
    for use_grpc in (False, True):
        with pytest.raises(InputRejectedError) as caught:
            torchserve.client.predict(bytes(4 * 1024 * 1024), use_grpc=use_grpc)
        assert caught.value.status == 413
    assert torchserve.client.health() == {"status": "Healthy"}


# --- tokens and the closed model API ----------------------------------------------------------


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_rest_without_the_right_token_is_refused(
    torchserve: RunningTorchServe, token: str | None
) -> None:
    image = drawings("black_on_white", 1)[0][0]
    response = post(torchserve, image, "application/octet-stream", token)
    assert response.status_code == 400
    assert response.json()["type"] == "InvalidKeyException"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    settings = torchserve.settings
    for url in (f"{settings.inference_url}/ping", f"{settings.management_url}/models"):
        assert requests.get(url, headers=headers, timeout=10).status_code == 400, url


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_grpc_without_the_right_token_is_refused(
    torchserve: RunningTorchServe, token: str | None
) -> None:
    image = drawings("black_on_white", 1)[0][0]
    metadata = [("authorization", f"Bearer {token}")] if token else []
    request = inference_pb2.PredictionsRequest(model_name="mnist", input={"data": image})
    with grpc.insecure_channel(torchserve.settings.grpc_target) as channel:
        stub = inference_pb2_grpc.InferenceAPIsServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Predictions(request, metadata=metadata, timeout=10)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_grpc_ping_with_the_token(torchserve: RunningTorchServe) -> None:
    from google.protobuf import empty_pb2

    metadata = [("authorization", f"Bearer {inference_key(torchserve)}")]
    with grpc.insecure_channel(torchserve.settings.grpc_target) as channel:
        stub = inference_pb2_grpc.InferenceAPIsServiceStub(channel)
        answer = stub.Ping(empty_pb2.Empty(), metadata=metadata, timeout=10)
    assert json.loads(answer.health)["status"] == "Healthy"


def test_model_registration_and_removal_are_refused(torchserve: RunningTorchServe) -> None:
    settings = torchserve.settings
    torchserve.client.model_info()  # makes sure the held management key is current
    key = torchserve.client.tokens.key("management")
    headers = {"Authorization": f"Bearer {key}"}
    register = requests.post(
        f"{settings.management_url}/models",
        params={"url": "https://example.com/evil.mar"},
        headers=headers,
        timeout=10,
    )
    remove = requests.delete(f"{settings.management_url}/models/mnist", headers=headers, timeout=10)
    assert register.status_code == 405
    assert remove.status_code == 405
    info = torchserve.client.model_info()
    assert info["version"] == "test"
    assert [worker["status"] for worker in info["workers"]] == ["READY"] * len(info["workers"])


def test_an_expired_inference_key_is_renewed_with_the_api_key(
    torchserve: RunningTorchServe,
) -> None:
    """The key file's inference key stops working; a fresh client gets a new one and works."""
    image = drawings("black_on_white", 1)[0][0]
    key_file = torchserve.settings.key_file
    keys = json.loads(key_file.read_text())
    keys["inference"]["key"] = "expired0"  # as if TorchServe no longer accepted it
    key_file.write_text(json.dumps(keys))

    with TorchServeClient(torchserve.settings) as client:
        assert client.predict(image)["digit"] in range(10)
        renewed = client.tokens.key("inference")
    assert renewed not in (None, "expired0")
    assert json.loads(key_file.read_text())["inference"]["key"] == renewed
    # The session's client held the old key: it re-reads the key file and carries on.
    assert torchserve.client.predict(image, use_grpc=True)["digit"] in range(10)
    assert torchserve.client.predict(image)["digit"] in range(10)


# --- metrics ---------------------------------------------------------------------------------


def test_handler_and_frontend_metrics_appear(torchserve: RunningTorchServe) -> None:
    client = torchserve.client
    for image, _ in drawings("white_on_black", 10, seed=4):
        client.predict(image)
    with pytest.raises(InputRejectedError):
        client.predict(png(Image.new("RGB", (64, 64), "white")))

    def complete(text: str) -> bool:
        return bool(
            metric_values(text, "mnist_predictions_total")
            and metric_values(text, "mnist_preprocess_seconds")
            and any(
                'reason="blank"' in labels
                for labels in metric_values(text, "mnist_rejected_inputs_total")
            )
        )

    text = wait_for_metrics(client, complete)
    digits = metric_values(text, "mnist_predictions_total")
    assert sum(digits.values()) >= 10
    assert all(re.search(r'digit="\d"', labels) for labels in digits)
    assert complete(text)
    assert metric_values(text, "ts_inference_requests_total")
    assert metric_values(text, "ts_inference_latency_microseconds")
    assert metric_values(text, "Requests2XX")


def test_only_torchserves_own_metric_names_break_prometheus_conventions(
    torchserve: RunningTorchServe,
) -> None:
    """`promtool check metrics` on the live endpoint: the handler's metrics pass; TorchServe's
    built-in names (camelCase, `_microseconds` counters) cannot change and are the exceptions."""
    promtool = shutil.which("promtool")
    if promtool is None:
        require_or_skip("REQUIRE_PROMETHEUS", "promtool is not installed (Debian's prometheus)")
        return
    client = torchserve.client
    client.predict(drawings("black_on_white", 1)[0][0])
    with pytest.raises(InputRejectedError):
        client.predict(b"not an image")
    text = wait_for_metrics(
        client,
        lambda text: bool(
            metric_values(text, "mnist_rejected_inputs_total")
            and metric_values(text, "mnist_handler_batches_total")
        ),
    )
    lint = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True
    )
    flagged = {line.split()[0] for line in (lint.stdout + lint.stderr).splitlines() if line}
    declared = yaml.safe_load(METRICS_CONFIG.read_text())
    builtin = {m["name"] for kind in declared["ts_metrics"].values() for m in kind}
    builtin |= TORCHSERVE_MODEL_METRICS
    assert flagged, "promtool found nothing: TorchServe's own names should be flagged"
    assert flagged <= builtin, f"project metrics break the conventions: {flagged - builtin}"


def test_each_request_is_logged_once_and_without_debug_lines(
    torchserve: RunningTorchServe,
) -> None:
    """The project's log4j2.xml: one access-log line per request, no per-request DEBUG lines
    in ts_log.log, and nothing per request on the console (logs/torchserve.out)."""
    logs = torchserve.settings.log_dir
    marker = f"/predictions/{torchserve.settings.model_name}"

    def access_lines() -> int:
        return (logs / "access_log.log").read_text().count(marker)

    before, console_before = access_lines(), (logs / "torchserve.out").stat().st_size
    for image, _ in drawings("canvas_transparent", 5, seed=5):
        torchserve.client.predict(image)
    deadline = time.monotonic() + 5
    while access_lines() < before + 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert access_lines() == before + 5
    assert "[DEBUG]" not in (logs / "ts_log.log").read_text()
    assert (logs / "torchserve.out").stat().st_size == console_before
    assert "Model server started" in (logs / "torchserve.out").read_text()
