"""`python -m benchmarks.accuracy --images` through the session's real TorchServe: it lists
exactly the drawings the server reads as another digit than their label."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import accuracy
from model.predictor import MNISTPredictor
from tests.fixtures.serving import RunningTorchServe
from training.drawings import drawings

pytestmark = pytest.mark.slow


def test_the_misread_drawings_are_those_labelled_otherwise_than_served(
    torchserve: RunningTorchServe, tmp_path: Path
) -> None:
    bodies = [body for body, _ in drawings("canvas_transparent", 12, seed=4)]
    served = MNISTPredictor(torchserve.model_path, device="cpu").predict_batch(bodies)
    mislabelled = {2, 7}
    images = []
    for index, (body, answer) in enumerate(zip(bodies, served, strict=True)):
        label = (answer.digit + 1) % 10 if index in mislabelled else answer.digit
        path = tmp_path / str(label) / f"{index}.png"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(body)
        images.append((path, label))
    assert sorted(accuracy.labelled_images(tmp_path)) == sorted(images)

    wrong = accuracy.misread(torchserve.client, images)

    assert {Path(row["image"]).name for row in wrong} == {"2.png", "7.png"}
    for row in wrong:
        assert row["digit"] == (row["label"] - 1) % 10
