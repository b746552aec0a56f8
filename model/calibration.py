"""What the exported model file holds, so every consumer reads digits and confidence alike.

``served_model`` wraps the network in ``UprightAveraged`` (each digit read as given and
straightened) and ``CalibratedNet``, whose temperature T is fitted on held-out data (see
``training.calibration``). T travels in the TorchScript file as a buffer: TorchServe's handler
and ``MNISTPredictor`` take the softmax of whatever the file returns, so both show the same
calibrated probabilities with no extra file to pack, find or keep in step with the model.
"""

from __future__ import annotations

import torch
from torch import nn

from model.upright import UprightAveraged


class CalibratedNet(nn.Module):
    """``net(x) / temperature``: calibrated logits; the argmax (the digit) never changes."""

    def __init__(self, net: nn.Module, temperature: float = 1.0) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"the temperature must be positive, got {temperature}")
        self.net = net
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) / self.temperature


def served_model(net: nn.Module, temperature: float = 1.0) -> CalibratedNet:
    """The form every exported model file takes: ``net`` reading each digit as given and
    upright, the averaged log-probabilities divided by ``temperature``."""
    return CalibratedNet(UprightAveraged(net), temperature)


def temperature_of(model: nn.Module | torch.jit.ScriptModule) -> float:
    """The temperature a (scripted) model carries; 1 for a bare net exported before calibration."""
    temperature = getattr(model, "temperature", None)
    return float(temperature) if isinstance(temperature, torch.Tensor) else 1.0
