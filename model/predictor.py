"""In-process prediction with the exported TorchScript model, using the serving preprocessing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from handler.explain import Attribution, integrated_gradients
from handler.preprocessing import ImageInput, decode_image, preprocess
from model.calibration import temperature_of
from model.torchscript import load_torchscript


@dataclass(frozen=True)
class Prediction:
    """The most likely digit, its probability, and all 10 probabilities (index = digit)."""

    digit: int
    confidence: float
    probabilities: list[float]


def predictions_from_logits(logits: torch.Tensor) -> list[Prediction]:
    """Softmax over a Nx10 batch of logits (the model returns logits; softmax is ours)."""
    probabilities = torch.softmax(logits.float(), dim=1).cpu()
    confidences, digits = probabilities.max(dim=1)
    return [
        Prediction(digit=int(digit), confidence=float(confidence), probabilities=row.tolist())
        for digit, confidence, row in zip(digits, confidences, probabilities, strict=True)
    ]


class MNISTPredictor:
    """Loads a TorchScript MNIST model once; predicts images, arrays, tensors or encoded bytes.

    The probabilities are the handler's: the model file reads each digit as given and upright
    and applies its temperature itself (``model.calibration.served_model``); ``temperature``
    says which one it carries.
    """

    def __init__(self, model_path: str | Path, device: str | torch.device | None = None) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = load_torchscript(Path(model_path), self.device)
        self.temperature = temperature_of(self.model)

    def predict(self, image: ImageInput | bytes) -> Prediction:
        """Classify one digit."""
        return self.predict_batch([image])[0]

    def predict_batch(self, images: Sequence[ImageInput | bytes]) -> list[Prediction]:
        """Classify many digits in one forward pass."""
        if not images:
            return []
        batch = torch.stack([self._prepare(image) for image in images]).to(self.device)
        with torch.inference_mode():
            return predictions_from_logits(self.model(batch))

    def explain(self, image: ImageInput | bytes) -> Attribution:
        """The handler's explanation: integrated gradients for the predicted digit."""
        return integrated_gradients(self.model, self._prepare(image)[None].to(self.device))[0]

    @staticmethod
    def _prepare(image: ImageInput | bytes) -> torch.Tensor:
        if isinstance(image, bytes | bytearray | memoryview):
            image = decode_image(image)
        return preprocess(image)
