"""Integrated gradients and the handler's explanation path, with TorchServe's real Context."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
import torch
from ts.context import RequestProcessor

from handler.explain import BLACK, black_baseline, integrated_gradients
from handler.mnist_handler import MNISTHandler
from handler.preprocessing import MNIST_MEAN, MNIST_STD, normalise, preprocess
from model.torchscript import load_torchscript
from tests.handler.conftest import WorkerContext, emitted_metrics
from training.drawings import drawings


@pytest.fixture(scope="module")
def inputs(mnist_test) -> torch.Tensor:
    images, _ = mnist_test
    return torch.stack([preprocess(images[i]) for i in range(4)])


@pytest.fixture(scope="module")
def model(scripted_model: Path) -> torch.jit.ScriptModule:
    return load_torchscript(scripted_model)


def test_the_baseline_is_black_in_normalised_space() -> None:
    assert pytest.approx((0 - MNIST_MEAN) / MNIST_STD) == BLACK
    black = normalise(np.zeros((28, 28), dtype=np.uint8))
    assert torch.equal(black_baseline(black), black)


def test_attributions_are_28x28_and_add_up_to_the_logit_difference(
    model: torch.jit.ScriptModule, inputs: torch.Tensor
) -> None:
    with torch.no_grad():
        logits, baseline_logits = model(inputs), model(black_baseline(inputs))
    for row, explained in enumerate(integrated_gradients(model, inputs)):
        assert explained.attributions.shape == (28, 28)
        assert explained.digit == int(logits[row].argmax())
        difference = float(logits[row, explained.digit] - baseline_logits[row, explained.digit])
        assert explained.logit - explained.baseline_logit == pytest.approx(difference, abs=1e-5)
        assert float(explained.attributions.sum()) == pytest.approx(difference, rel=0.02, abs=1e-3)


def test_attributions_of_a_trained_model_add_up_on_every_digit(
    trained_model: Path, mnist_test: tuple[np.ndarray, np.ndarray]
) -> None:
    """The served form (both readings, temperature) of a trained network: its ReLUs switch
    along the path, which is where too few steps fall short."""
    model = load_torchscript(trained_model)
    images, _ = mnist_test
    batch = torch.stack([preprocess(images[i]) for i in range(0, 10_000, 100)])
    gaps = [
        abs(float(e.attributions.sum()) - (e.logit - e.baseline_logit))
        / abs(e.logit - e.baseline_logit)
        for e in integrated_gradients(model, batch)
    ]
    assert max(gaps) < 0.02


def test_a_pixel_without_ink_gets_exactly_nothing(
    model: torch.jit.ScriptModule, inputs: torch.Tensor
) -> None:
    explained = integrated_gradients(model, inputs[:1])[0]
    no_ink = inputs[0, 0] == BLACK
    assert no_ink.any() and (~no_ink).any()
    assert torch.all(explained.attributions[no_ink] == 0)
    assert explained.attributions[~no_ink].abs().sum() > 0


def test_a_linear_model_gets_weight_times_input_with_its_sign() -> None:
    """For logits = W x, integrated gradients is exactly (x - baseline) * W[target]."""
    torch.manual_seed(0)
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10, bias=False))
    image = black_baseline(torch.zeros(1, 1, 28, 28))
    image[0, 0, 10:18, 12:16] = 2.0
    explained = integrated_gradients(linear, image, targets=torch.tensor([4]), steps=3)[0]
    expected = (image - BLACK)[0, 0] * linear[1].weight[4].view(28, 28)
    assert explained.digit == 4
    assert torch.allclose(explained.attributions, expected.detach(), atol=1e-6)
    assert torch.equal(explained.attributions > 0, expected > 0)


def test_too_few_steps_are_refused(model: torch.jit.ScriptModule, inputs: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="at least one step"):
        integrated_gradients(model, inputs, steps=0)


@pytest.fixture
def handler(worker_context: WorkerContext) -> MNISTHandler:
    handler = MNISTHandler()
    handler.initialize(worker_context.for_batch(1))
    return handler


def explain_flags(worker_context: WorkerContext, flags: list[bool]):
    """The context TorchServe builds when requests to /explanations (header ``explain: True``)
    and to /predictions share a batch."""
    context = worker_context.for_batch(len(flags))
    context.request_processor = [
        RequestProcessor({"explain": "True"} if flag else {}) for flag in flags
    ]
    return context


def test_explanations_and_predictions_in_one_batch_each_get_their_answer(
    handler: MNISTHandler,
    worker_context: WorkerContext,
    mnist_dir: Path,
    capture_metrics: pytest.LogCaptureFixture,
) -> None:
    (png, _), (other, _) = drawings("canvas_transparent", 2, data_dir=mnist_dir)
    batch = [{"body": png}, {"body": png}, {"body": b"not an image"}, {"body": other}]
    context = explain_flags(worker_context, [False, True, True, False])
    answers = handler.handle(batch, context)
    statuses = [context.get_response_status(i)[0] for i in range(len(batch))]
    assert statuses == [200, 200, 400, 200]

    prediction, explanation, rejected, second = answers
    assert rejected["reason"] == "not_an_image"
    assert "attributions" not in prediction and "attributions" not in second
    assert explanation["digit"] == prediction["digit"]
    assert explanation["method"] == "integrated_gradients"
    assert explanation["model_version"] == "7.5"
    attributions = torch.tensor(explanation["attributions"])
    assert attributions.shape == (28, 28)
    assert float(attributions.sum()) == pytest.approx(
        explanation["logit"] - explanation["baseline_logit"], rel=0.02, abs=1e-3
    )
    emitted = emitted_metrics(capture_metrics)
    counted = [m for m in emitted if m["name"] == "mnist_predictions_total"]
    assert sum(m["value"] for m in counted) == 2  # explanations are not predictions


def test_an_explanation_alone_needs_no_prediction_pass(
    handler: MNISTHandler, worker_context: WorkerContext, mnist_dir: Path
) -> None:
    (png, _), *_ = drawings("canvas_transparent", 1, data_dir=mnist_dir)
    calls: list[int] = []
    original = handler.inference
    handler.inference = lambda batch, *a, **k: calls.append(len(batch)) or original(batch)
    (answer,) = handler.handle([{"body": png}], explain_flags(worker_context, [True]))
    assert calls == []
    assert len(answer["attributions"]) == 28


def test_answers_list_the_three_likeliest_digits(
    handler: MNISTHandler, worker_context: WorkerContext, mnist_dir: Path
) -> None:
    (png, _), *_ = drawings("canvas_transparent", 1, data_dir=mnist_dir)
    (answer,) = handler.handle([{"body": png}], worker_context.for_batch(1))
    ranked = sorted(range(10), key=lambda d: -answer["probabilities"][d])[:3]
    assert [item["digit"] for item in answer["top"]] == ranked
    assert [item["probability"] for item in answer["top"]] == [
        answer["probabilities"][d] for d in ranked
    ]
    assert answer["top"][0] == {"digit": answer["digit"], "probability": answer["confidence"]}


def test_an_explanation_of_kserve_instances_is_refused(
    handler: MNISTHandler, worker_context: WorkerContext, mnist_dir
) -> None:
    [(png, _)] = drawings("black_on_white", 1, data_dir=mnist_dir)
    body = {"instances": [{"b64": base64.b64encode(png).decode()}]}
    context = explain_flags(worker_context, [True])
    [answer] = handler.handle([{"body": body}], context)
    assert context.get_response_status(0)[0] == 400 and "one image" in answer["message"]
