"""The TorchServe handler in-process, with the worker's real Context and metrics cache."""

from __future__ import annotations

import base64
import io
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from handler.mnist_handler import MNISTHandler, choose_device, torch_threads
from handler.preprocessing import MAX_IMAGE_BYTES, MAX_IMAGE_SIDE
from model.predictor import MNISTPredictor
from tests.fixtures.images import blank_png_base64
from tests.fixtures.models import CountingModel
from tests.handler.conftest import WorkerContext, emitted_metrics
from training.drawings import drawings


@pytest.fixture
def handler(worker_context: WorkerContext) -> MNISTHandler:
    handler = MNISTHandler()
    handler.initialize(worker_context.for_batch(1))
    return handler


@pytest.fixture(scope="module")
def samples(mnist_dir: Path) -> list[tuple[bytes, int]]:
    return drawings("canvas_transparent", 6, data_dir=mnist_dir)


def run_batch(handler: MNISTHandler, worker_context: WorkerContext, batch: list[dict]) -> list:
    context = worker_context.for_batch(len(batch))
    answers = handler.handle(batch, context)
    statuses = [context.get_response_status(i)[0] for i in range(len(batch))]
    return list(zip(statuses, answers, strict=True))


def test_every_request_kind_is_answered_like_the_predictor(
    handler: MNISTHandler,
    worker_context: WorkerContext,
    predictor: MNISTPredictor,
    samples: list[tuple[bytes, int]],
    mnist_test,
) -> None:
    images, _ = mnist_test
    png = [data for data, _ in samples]
    encoded = base64.b64encode(png[2]).decode()
    batch = [
        {"body": png[0]},
        {"data": bytearray(png[1])},
        {"body": {"image": encoded}},
        {"body": {"image": f"data:image/png;base64,{encoded}"}},
        {"body": json.dumps({"image": base64.b64encode(png[3]).decode()}).encode()},
        {"body": {"pixels": images[0].tolist()}},
        {"body": encoded},
    ]
    expected = [predictor.predict(item) for item in (*png[:3], png[2], png[3], images[0], png[2])]
    results = run_batch(handler, worker_context, batch)
    for (status, answer), prediction in zip(results, expected, strict=True):
        assert status == 200
        assert answer["digit"] == prediction.digit
        assert answer["confidence"] == pytest.approx(prediction.confidence, abs=1e-5)
        assert answer["probabilities"] == pytest.approx(prediction.probabilities, abs=1e-5)
        assert answer["model_version"] == "7.5"


def test_a_bad_request_in_the_middle_gets_its_own_400(
    handler: MNISTHandler,
    worker_context: WorkerContext,
    predictor: MNISTPredictor,
    samples: list[tuple[bytes, int]],
) -> None:
    batch = [{"body": samples[0][0]}, {"body": b"not an image"}, {"body": samples[1][0]}]
    (first, good_one), (second, error), (third, good_two) = run_batch(
        handler, worker_context, batch
    )
    assert (first, second, third) == (200, 400, 200)
    assert error == {
        "code": 400,
        "type": "InvalidInput",
        "reason": "not_an_image",
        "message": error["message"],
    }
    assert "supported format" in error["message"]
    assert good_one["digit"] == predictor.predict(samples[0][0]).digit
    assert good_two["digit"] == predictor.predict(samples[1][0]).digit


@pytest.mark.parametrize(
    ("request_data", "status", "reason"),
    [
        ({"body": b""}, 400, "empty"),
        ({}, 400, "empty"),
        ({"body": b"{not json"}, 400, "bad_json"),
        ({"body": "{not json"}, 400, "bad_json"),
        ({"body": [1, 2, 3]}, 400, "bad_json"),
        ({"body": 42}, 400, "bad_json"),
        ({"body": {"picture": "abc"}}, 400, "bad_json"),
        ({"body": {"image": "***not base64***"}}, 400, "bad_base64"),
        ({"body": {"image": "data:image/png,rawtext"}}, 400, "bad_base64"),
        ({"body": {"image": "A" * 3_000_000}}, 413, "too_large"),
        ({"body": b"\x00" * 3_000_000}, 413, "too_large"),
        ({"body": {"pixels": [1] * 783}}, 400, "bad_pixels"),
        ({"body": {"pixels": [0] * 784}}, 400, "blank"),
        ({"body": b"\x89PNG\r\n\x1a\n\x00\x00"}, 400, "truncated"),
    ],
)
def test_bad_inputs_get_a_4xx_with_a_json_reason(
    handler: MNISTHandler,
    worker_context: WorkerContext,
    request_data: dict,
    status: int,
    reason: str,
    capture_metrics: pytest.LogCaptureFixture,
) -> None:
    [(got_status, answer)] = run_batch(handler, worker_context, [request_data])
    assert got_status == status
    assert answer["code"] == status and answer["reason"] == reason and answer["message"]
    emitted = emitted_metrics(capture_metrics)
    rejected = [m for m in emitted if m["name"] == "mnist_rejected_inputs_total"]
    assert [m["dimensions"]["reason"] for m in rejected] == [reason]


@pytest.mark.parametrize(
    ("request_data", "message"),
    [
        ({"file": b"\x89PNG"}, 'the multipart field "data" (got: file)'),
        ({"body": {"pixels": [[9]] * 784}}, "784 numbers or 28 rows of 28"),
        ({"body": b"[" * 100_000}, "nested too deeply"),
    ],
    ids=["another field name", "pixels one per row", "deeply nested JSON"],
)
def test_a_refusal_says_what_to_change(
    handler: MNISTHandler,
    worker_context: WorkerContext,
    request_data: dict,
    message: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    [(status, answer)] = run_batch(handler, worker_context, [request_data])
    assert status == 400 and message in answer["message"]
    assert not [record for record in caplog.records if record.exc_info]  # no traceback logged


def test_an_unexpected_failure_is_one_requests_400_not_a_dead_batch(
    handler: MNISTHandler,
    worker_context: WorkerContext,
    samples: list[tuple[bytes, int]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import handler.mnist_handler as module

    real_decode = module.decode_image

    def fragile_decode(data: bytes):
        if data == b"boom":
            raise RuntimeError("a bug in a decoder")
        return real_decode(data)

    monkeypatch.setattr(module, "decode_image", fragile_decode)
    results = run_batch(handler, worker_context, [{"body": b"boom"}, {"body": samples[0][0]}])
    assert [status for status, _ in results] == [400, 200]
    assert results[0][1]["reason"] == "unreadable"


def test_one_forward_pass_per_batch(
    handler: MNISTHandler,
    worker_context: WorkerContext,
    predictor: MNISTPredictor,
    samples: list[tuple[bytes, int]],
) -> None:
    handler.model = counting = CountingModel(handler.model)
    batch = [{"body": data} for data, _ in samples] + [{"body": b""}]
    results = run_batch(handler, worker_context, batch)
    assert counting.calls == [len(samples)]
    expected = [prediction.digit for prediction in predictor.predict_batch([d for d, _ in samples])]
    assert [answer.get("digit") for _, answer in results[:-1]] == expected


def test_an_all_bad_batch_needs_no_forward_pass(
    handler: MNISTHandler, worker_context: WorkerContext
) -> None:
    handler.model = None  # any forward pass would fail
    results = run_batch(handler, worker_context, [{"body": b""}, {"body": b"x"}])
    assert [status for status, _ in results] == [400, 400]


def test_declared_metrics_are_emitted_with_their_dimensions(
    handler: MNISTHandler,
    worker_context: WorkerContext,
    predictor: MNISTPredictor,
    samples: list[tuple[bytes, int]],
    capture_metrics: pytest.LogCaptureFixture,
) -> None:
    batch = [{"body": samples[0][0]}, {"body": samples[0][0]}, {"body": b"junk"}]
    run_batch(handler, worker_context, batch)
    emitted = {m["name"]: m for m in emitted_metrics(capture_metrics)}
    assert "Failed to update metric" not in capture_metrics.text
    digit = emitted["mnist_predictions_total"]
    assert digit["type"] == "COUNTER" and digit["value"] == 2
    assert digit["dimensions"] == {
        "digit": str(predictor.predict(samples[0][0]).digit),
        "model_name": "mnist",
    }
    rejected = emitted["mnist_rejected_inputs_total"]["dimensions"]
    assert rejected == {"reason": "not_an_image", "model_name": "mnist"}
    assert emitted["mnist_handler_batches_total"]["dimensions"]["batch_size"] == "3"
    preprocess = emitted["mnist_preprocess_seconds"]
    assert preprocess["type"] == "GAUGE" and preprocess["unit"] == "Seconds"
    assert 0 < preprocess["value"] < 1
    assert "HandlerTime" not in emitted  # TorchServe's PredictionTime measures the same span


def test_device_is_the_assigned_gpu_when_cuda_works(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert choose_device({"gpu_id": 1}) == torch.device("cuda:1")
    assert choose_device({"gpu_id": None}) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_device({"gpu_id": 0}) == torch.device("cpu")


def test_torch_threads_come_from_the_model_config() -> None:
    assert torch_threads({"handler": {"torch_threads": 2}}) == 2
    assert torch_threads({"batchSize": 8}) == 1
    assert torch_threads(None) == 1


def test_the_handler_module_has_one_class_for_torchserve() -> None:
    """TorchServe refuses a handler module that defines more than one class."""
    from ts.utils.util import list_classes_from_module

    import handler.mnist_handler as module

    assert list_classes_from_module(module) == [MNISTHandler]


def test_kserve_v1_instances_get_one_prediction_each_beside_plain_requests(
    handler: MNISTHandler,
    worker_context: WorkerContext,
    predictor: MNISTPredictor,
    samples: list[tuple[bytes, int]],
    mnist_test,
) -> None:
    images, _ = mnist_test
    png = [data for data, _ in samples]
    instances = {
        "instances": [
            {"image": base64.b64encode(png[0]).decode()},
            {"b64": base64.b64encode(png[1]).decode()},
            {"pixels": images[0].tolist()},
        ]
    }
    batch = [{"body": png[2]}, {"body": json.dumps(instances).encode()}, {"body": png[3]}]
    [(first, plain), (status, answer), (last, other)] = run_batch(handler, worker_context, batch)
    assert (first, status, last) == (200, 200, 200)
    expected = [predictor.predict(item).digit for item in (png[0], png[1], images[0])]
    assert [p["digit"] for p in answer["predictions"]] == expected
    assert plain["digit"] == predictor.predict(png[2]).digit
    assert other["digit"] == predictor.predict(png[3]).digit


#: One image of the largest size allowed; two of them in one request are too much work.
LARGEST_PNG = blank_png_base64(MAX_IMAGE_SIDE)


@pytest.mark.parametrize(
    ("instances", "status", "message"),
    [
        ([], 400, "non-empty list"),
        ([{"image": "bm90IGFuIGltYWdl"}, {"pixels": [1] * 783}], 400, "instance 0"),
        ([{"pixels": [9] * 784}] * 65, 413, "at most 64"),
        (["just text"], 400, "instance 0 is not a JSON object"),
        ([{"b64": LARGEST_PNG}, {"b64": LARGEST_PNG}], 413, "pixels in all"),
        ([{"b64": LARGEST_PNG, "pixels": [9] * 784}], 400, 'instance 0 has "b64" and another'),
    ],
)
def test_bad_kserve_instances_get_a_4xx_naming_the_instance(
    handler: MNISTHandler, worker_context: WorkerContext, instances: list, status: int, message: str
) -> None:
    [(got, answer)] = run_batch(handler, worker_context, [{"body": {"instances": instances}}])
    assert got == status and message in answer["message"]


def test_an_image_near_the_limit_is_taken_as_base64_wrapped_in_utf_16_json(
    handler: MNISTHandler, worker_context: WorkerContext
) -> None:
    """What `base64 digit.png` prints (76 characters a line) in a UTF-16 JSON body: the limits
    count the image, not the line breaks or the encoding's bytes."""
    noise = np.random.default_rng(0).integers(0, 256, (1440, 1440), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")
    png = buffer.getvalue()
    assert MAX_IMAGE_BYTES - 100_000 < len(png) <= MAX_IMAGE_BYTES
    wrapped = "\n".join(textwrap.wrap(base64.b64encode(png).decode(), 76))
    body = json.dumps({"image": wrapped}).encode("utf-16")
    [(status, answer)] = run_batch(handler, worker_context, [{"body": body}])
    assert status == 200, answer
