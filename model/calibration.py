"""Temperature scaling carried inside the exported model, so every consumer applies it alike.

The network's logits are divided by a temperature T fitted on held-out data (see
``training.calibration``). Exporting ``CalibratedNet`` instead of the bare net puts T into the
TorchScript file as a buffer: TorchServe's handler and ``MNISTPredictor`` take the softmax of
whatever the file returns, so both show the same calibrated probabilities with no extra file to
pack, find or keep in step with the model.
"""

from __future__ import annotations

import torch
from torch import nn


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


def temperature_of(model: nn.Module | torch.jit.ScriptModule) -> float:
    """The temperature a (scripted) model carries; 1 for a bare net exported before calibration."""
    temperature = getattr(model, "temperature", None)
    return float(temperature) if isinstance(temperature, torch.Tensor) else 1.0
