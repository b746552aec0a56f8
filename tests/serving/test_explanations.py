"""Against the session's real TorchServe: calibrated answers with their candidates, and
``POST /explanations/mnist`` reaching the handler's integrated gradients."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from handler.explain import BLACK
from handler.preprocessing import decode_image, preprocess
from model.calibration import temperature_of
from model.torchscript import load_torchscript
from serving.client import InputRejectedError
from tests.fixtures.serving import RunningTorchServe
from training.drawings import drawings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def samples() -> list[bytes]:
    return [image for image, _ in drawings("canvas_transparent", 8, seed=3)]


def test_served_probabilities_are_the_calibrated_ones(
    torchserve: RunningTorchServe, samples: list[bytes]
) -> None:
    model = load_torchscript(torchserve.model_path)
    temperature = temperature_of(model)
    assert temperature != 1.0  # `python -m training` fitted one and put it in the model file
    inputs = torch.stack([preprocess(decode_image(image)) for image in samples])
    with torch.no_grad():
        raw_logits = model.net(inputs)
    calibrated = (raw_logits / temperature).softmax(dim=1)
    uncalibrated = raw_logits.softmax(dim=1)
    gaps = []
    for image, expected, bare in zip(samples, calibrated, uncalibrated, strict=True):
        answer = torchserve.client.predict(image)
        np.testing.assert_allclose(answer["probabilities"], expected.tolist(), atol=1e-5)
        gaps.append(float((bare - expected).abs().max()))
        assert answer["top"][0] == {"digit": answer["digit"], "probability": answer["confidence"]}
        assert len(answer["top"]) == 3
    assert max(gaps) > 1e-4  # the check above could tell calibrated from raw probabilities


def test_explanations_reach_integrated_gradients(
    torchserve: RunningTorchServe, samples: list[bytes]
) -> None:
    for image in samples[:3]:
        answer = torchserve.client.explain(image)
        assert answer["digit"] == torchserve.client.predict(image)["digit"]
        assert answer["method"] == "integrated_gradients"
        assert answer["model_version"] == "test"
        attributions = np.asarray(answer["attributions"])
        assert attributions.shape == (28, 28)
        assert attributions.sum() == pytest.approx(
            answer["logit"] - answer["baseline_logit"], rel=0.02, abs=1e-3
        )
        no_ink = preprocess(decode_image(image))[0].numpy() == np.float32(BLACK)
        assert no_ink.any() and np.all(attributions[no_ink] == 0)
        assert attributions[~no_ink].max() > 0


def test_explanations_and_predictions_sent_together_each_get_their_answer(
    torchserve: RunningTorchServe, samples: list[bytes]
) -> None:
    calls = [(torchserve.client.explain, image) for image in samples] + [
        (torchserve.client.predict, image) for image in samples
    ]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda call: call[0](call[1]), calls))
    explained, predicted = answers[: len(samples)], answers[len(samples) :]
    assert all(len(answer["attributions"]) == 28 for answer in explained)
    assert all("attributions" not in answer and "top" in answer for answer in predicted)
    assert [a["digit"] for a in explained] == [a["digit"] for a in predicted]


def test_a_bad_input_to_explanations_gets_the_same_4xx(torchserve: RunningTorchServe) -> None:
    with pytest.raises(InputRejectedError) as caught:
        torchserve.client.explain(b"not an image")
    assert caught.value.status == 400
