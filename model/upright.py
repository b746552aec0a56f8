"""Each digit read twice, as given and straightened upright, and the two readings averaged.

People slant their digits further than MNIST's writers did, and slant is one of the ways a
clear drawing gets misread (docs/drawings.md). ``UprightAveraged`` shears a second
copy of every input so that its slant (the ink's second moment mu11 / mu02) becomes MNIST's
median, runs the network on both copies in one batch and averages their log-probabilities. An
upright digit hardly changes; a slanted one is read both ways. It has no parameters: the
network inside is the seed's, unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from handler.preprocessing import MNIST_MEAN, MNIST_STD

# MNIST's median slant (mu11 / mu02 of its training digits), and a bound on the shear just past
# the range of their slants, so a stroke with almost no height is not sheared wildly
# (docs/drawings.md).
MNIST_SLANT = -0.1
MAX_SHEAR = 1.0


def centre_of_mass(ink: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image of (N, H, W) ink: the row and the column of its centre of mass."""
    rows = torch.arange(ink.shape[1], dtype=ink.dtype, device=ink.device)
    cols = torch.arange(ink.shape[2], dtype=ink.dtype, device=ink.device)
    total = ink.sum(dim=(1, 2)).clamp_min(1e-6)
    return (ink.sum(dim=2) * rows).sum(dim=1) / total, (ink.sum(dim=1) * cols).sum(dim=1) / total


def slant(pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image of (N, 1, H, W) ink in [0, 1]: the slant mu11 / mu02 (x moves by this much per
    row downwards; negative leans right) and the row of the centre of mass."""
    ink = pixels[:, 0]
    rows = torch.arange(ink.shape[1], dtype=ink.dtype, device=ink.device)
    cols = torch.arange(ink.shape[2], dtype=ink.dtype, device=ink.device)
    mean_row, mean_col = centre_of_mass(ink)
    dy = rows.view(1, -1, 1) - mean_row.view(-1, 1, 1)
    dx = cols.view(1, 1, -1) - mean_col.view(-1, 1, 1)
    mu11 = (ink * dx * dy).sum(dim=(1, 2))
    mu02 = (ink * dy * dy).sum(dim=(1, 2)).clamp_min(1e-6)
    return mu11 / mu02, mean_row


def straighten(
    pixels: torch.Tensor, target: float = MNIST_SLANT, max_shear: float = MAX_SHEAR
) -> torch.Tensor:
    """(N, 1, H, W) ink in [0, 1], each image sheared about its centre of mass so that its
    slant becomes ``target`` (rows keep their place; the centre of mass does not move)."""
    count, _, height, width = pixels.shape
    current, mean_row = slant(pixels)
    shear = (current - target).clamp(-max_shear, max_shear)
    # In affine_grid's coordinates (-1 to 1 on each axis, pixel centres at (2i + 1) / n - 1) a
    # shear of s pixels per row is s * height / width.
    centre = (2 * mean_row + 1) / height - 1
    theta = torch.zeros(count, 2, 3, dtype=pixels.dtype, device=pixels.device)
    theta[:, 0, 0] = 1
    theta[:, 0, 1] = shear * height / width
    theta[:, 0, 2] = -shear * height / width * centre
    theta[:, 1, 1] = 1
    grid = F.affine_grid(theta, [count, 1, height, width], align_corners=False)
    return F.grid_sample(pixels, grid, padding_mode="zeros", align_corners=False)


class UprightAveraged(nn.Module):
    """The mean of ``log_softmax(net(x))`` over x as given and x straightened: log-probabilities
    (logits up to a constant), for normalised inputs (N, 1, 28, 28) like the network's."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        # Plain attributes, since TorchScript cannot read the module's constants.
        self.mean, self.std = MNIST_MEAN, MNIST_STD
        self.target, self.max_shear = MNIST_SLANT, MAX_SHEAR

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = x * self.std + self.mean
        upright = straighten(pixels, self.target, self.max_shear).sub(self.mean).div(self.std)
        given, straightened = self.net(torch.cat([x, upright])).log_softmax(dim=1).chunk(2)
        return (given + straightened) / 2
