"""MNISTPredictor in-process: its plumbing on an untrained model, its accuracy on a trained one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from handler.preprocessing import InvalidInputError, decode_image
from model.predictor import MNISTPredictor
from tests.fixtures.models import CountingModel
from training.drawings import STYLES, drawings

DIGITS_PER_STYLE = 200
# A drawing may cost a little accuracy against the same digits as MNIST images, not more
# (very thick strokes cost the most: about 4 points with the 1-epoch test model).
ALLOWED_DROP = 0.05


@pytest.fixture(scope="module")
def mnist_accuracy(trained_predictor: MNISTPredictor, mnist_test) -> float:
    """The model's accuracy on the very digits the drawings are made from."""
    images, labels = mnist_test
    predictions = trained_predictor.predict_batch(list(images[:DIGITS_PER_STYLE]))
    return float(np.mean([p.digit == label for p, label in zip(predictions, labels, strict=False)]))


@pytest.mark.parametrize("style", sorted(STYLES))
def test_drawings_are_classified_about_as_well_as_mnist(
    style: str, trained_predictor: MNISTPredictor, mnist_accuracy: float, mnist_dir
) -> None:
    samples = drawings(style, DIGITS_PER_STYLE, data_dir=mnist_dir)
    predictions = trained_predictor.predict_batch([data for data, _ in samples])
    accuracy = np.mean(
        [p.digit == label for p, (_, label) in zip(predictions, samples, strict=True)]
    )
    print(f"{style}: {accuracy:.3f} (MNIST images: {mnist_accuracy:.3f})")
    assert mnist_accuracy > 0.9
    assert accuracy >= mnist_accuracy - ALLOWED_DROP


def test_prediction_carries_ten_probabilities(
    trained_predictor: MNISTPredictor, mnist_test
) -> None:
    images, labels = mnist_test
    prediction = trained_predictor.predict(images[0])
    assert len(prediction.probabilities) == 10
    assert sum(prediction.probabilities) == pytest.approx(1.0, abs=1e-5)
    assert prediction.digit == int(np.argmax(prediction.probabilities)) == labels[0]
    assert prediction.confidence == max(prediction.probabilities)


def test_every_input_kind_gives_the_same_answer(predictor: MNISTPredictor, mnist_dir) -> None:
    data, _ = drawings("canvas_transparent", 1, data_dir=mnist_dir)[0]
    image = decode_image(data)
    as_array = np.array(image)
    as_tensor = torch.from_numpy(as_array).permute(2, 0, 1)
    answers = [predictor.predict(item) for item in (data, image, as_array, as_tensor)]
    assert all(answer == answers[0] for answer in answers)


def test_predict_batch_runs_one_forward_pass(predictor: MNISTPredictor, mnist_test) -> None:
    images, _ = mnist_test
    model = predictor.model
    predictor.model = counting = CountingModel(model)
    try:
        batch_answers = predictor.predict_batch(list(images[:16]))
    finally:
        predictor.model = model
    assert counting.calls == [16]
    assert [a.digit for a in batch_answers] == [predictor.predict(i).digit for i in images[:16]]
    assert predictor.predict_batch([]) == []


def test_bad_bytes_raise_the_input_error(predictor: MNISTPredictor) -> None:
    with pytest.raises(InvalidInputError) as refused:
        predictor.predict(b"not an image")
    assert refused.value.reason == "not_an_image"
