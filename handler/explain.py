"""Why the model chose a digit: integrated gradients against a black image.

Integrated gradients (Sundararajan et al., 2017) averages the gradient of the chosen digit's
logit along the straight path from a baseline to the input and multiplies it by the input's
difference from the baseline. The baseline is a black image (no ink) in the model's normalised
space, so a pixel without ink gets exactly zero, and the attributions add up to
``logit(input) - logit(black)`` up to the error of the step rule (completeness). Written here
because Captum is not a dependency, and TorchServe's own image handlers import it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from handler.preprocessing import normalise

# Midpoint steps for the attributions to add up to the logit difference within 2 % on the
# served model, in one batched pass (fewer miss it; figures in docs/confidence.md).
DEFAULT_STEPS = 256
# Exactly the value preprocessing gives a pixel without ink, so such pixels get exactly zero.
BLACK = float(normalise(np.zeros((1, 1), dtype=np.uint8)).item())


@dataclass(frozen=True)
class Attribution:
    """One input's 28x28 attribution map for ``digit``, and the two logits it explains."""

    digit: int
    attributions: torch.Tensor
    logit: float
    baseline_logit: float


def black_baseline(inputs: torch.Tensor) -> torch.Tensor:
    """An all-black image, normalised like the model's inputs."""
    return torch.full_like(inputs, BLACK)


def integrated_gradients(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor | None = None,
    steps: int = DEFAULT_STEPS,
) -> list[Attribution]:
    """Attributions of each input (N, 1, 28, 28) for its target digit (default: the predicted
    one), with the midpoint rule over ``steps`` points, all in one batch."""
    if steps < 1:
        raise ValueError("integrated gradients needs at least one step")
    inputs = inputs.detach()
    baseline = black_baseline(inputs)
    alphas = (torch.arange(steps, dtype=inputs.dtype, device=inputs.device) + 0.5) / steps
    with torch.enable_grad():
        ends = model(torch.cat([inputs, baseline])).detach()
        if targets is None:
            targets = ends[: len(inputs)].argmax(dim=1)
        targets = targets.to(inputs.device)
        # (N, steps, 1, 28, 28): every point on every input's path, flattened into one batch.
        path = baseline[:, None] + alphas.view(1, -1, 1, 1, 1) * (inputs - baseline)[:, None]
        path = path.reshape(-1, *inputs.shape[1:]).requires_grad_(True)
        logits = model(path)
        chosen = logits.gather(1, targets.repeat_interleave(steps)[:, None]).sum()
        (gradients,) = torch.autograd.grad(chosen, path)
    mean_gradients = gradients.view(len(inputs), steps, *inputs.shape[1:]).mean(dim=1)
    attributions = ((inputs - baseline) * mean_gradients).squeeze(1).cpu()
    rows = torch.arange(len(inputs), device=inputs.device)
    logit = ends[rows, targets].cpu()
    baseline_logit = ends[rows + len(inputs), targets].cpu()
    return [
        Attribution(int(digit), attribution, float(at_input), float(at_baseline))
        for digit, attribution, at_input, at_baseline in zip(
            targets.cpu(), attributions, logit, baseline_logit, strict=True
        )
    ]
