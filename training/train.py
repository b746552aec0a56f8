"""Training and evaluation of ``MnistNet`` on MNIST held in memory as tensors.

The whole data set lives in two uint8 tensors; each batch is indexed out, augmented the ways
people's drawings differ from MNIST (flagged 1s, crossed 7s and hooked 9s, wider or flatter
digits, thinner and thicker strokes, the blur of a digit drawn or sent small, rotation, scale,
aspect, slant, shift and elastic distortion) and normalised exactly like
``handler.preprocessing.normalise``. Adam with a one-cycle learning-rate schedule reaches 99 %
on the test set in a few epochs of this small net.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from handler.preprocessing import DIGIT_BOX, MNIST_MEAN, MNIST_STD
from model.calibration import served_model
from model.net import MnistNet
from model.torchscript import export_torchscript, load_torchscript, save_checkpoint
from model.upright import centre_of_mass
from training import plots
from training.data import MnistSplit, load_mnist

TARGET_ACCURACY = 0.99
EVAL_BATCH_SIZE = 1000
EXPORT_CHECK_BATCH = 64
# Training runs the convolutions channels-last: oneDNN's backward pass is much faster in that
# layout on the CPU (docs/performance.md, "Training"); the saved model is contiguous again.
CHANNELS_LAST = torch.channels_last

# Augmentation ranges. MNIST digits are centred by mass and size-normalised; people's drawings
# reach the model through the same recipe but keep their slant, proportions, wobble and pen
# width, so each batch gets those varied (docs/drawings.md has the figures per style).
MAX_ROTATION_DEGREES = 10.0
MAX_SCALE_CHANGE = 0.1
MAX_ASPECT_CHANGE = 0.15
MAX_SHEAR = 0.3
MAX_SHIFT_PIXELS = 2.0
# Elastic distortion: a smooth random displacement field (Simard et al. 2003), in pixels.
ELASTIC_ALPHA = 1.5
ELASTIC_SIGMA = 3.0
# Share of each batch drawn wider for its height than MNIST's writers drew it, as people who
# fill a square box do, by up to a factor, then fitted into the box again (docs/drawings.md,
# "Training for how people draw").
PROPORTION_CHANGED_FRACTION = 0.15
MAX_PROPORTION_CHANGE = 1.8
# Share of each batch whose strokes are made thinner or thicker (by up to two pixels a side).
STROKE_CHANGED_FRACTION = 0.5
# Share of each batch seen at low resolution first, like a small digit the preprocessing had
# to enlarge, or a canvas a client shrank to 28x28.
LOW_RESOLUTION_FRACTION = 0.2
LOW_RESOLUTION_SIZES = (10, 20)
# Share of the 1s given a flag, of the 7s a crossbar and of the 9s a hooked tail, as many
# writers outside the US draw them and MNIST's writers rarely did (docs/drawings.md, "Digits
# people drew").
WRITING_VARIANT_FRACTION = 0.3
VARIANT_DIGITS = (1, 7, 9)
# The added stroke's pen, in pixels, measured on the digit and kept within MNIST's pens.
VARIANT_PEN = (1.5, 4.0)

HISTORY_FILE = "training_history.json"
HISTORY_PLOT = "training_history.png"
PREDICTIONS_PLOT = "test_predictions.png"
CONFUSION_PLOT = "confusion_matrix.png"


@dataclass(frozen=True)
class TrainConfig:
    """What a training run does; the defaults are the fast route to 99 % (docs/performance.md)."""

    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 0.005
    # Dropout before the last layer. Augmentation and Dropout2d already regularise enough; at
    # this short schedule 0.5 here costs accuracy (docs/performance.md, "Training").
    dropout: float = 0.0
    # Dropout2d after the second convolution; the augmentation regularises too
    # (docs/drawings.md, "Training").
    conv_dropout: float = 0.25
    seed: int = 1
    augment: bool = True
    train_subset: int | None = None
    show_progress: bool = True


@dataclass(frozen=True)
class Evaluation:
    """Loss, accuracy and per-image probabilities of one pass over a split."""

    loss: float
    accuracy: float
    probabilities: torch.Tensor = field(repr=False)

    @property
    def predictions(self) -> torch.Tensor:
        return self.probabilities.argmax(dim=1)


def choose_device(no_cuda: bool = False) -> torch.device:
    """CUDA when available and not refused, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() and not no_cuda else "cpu")


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch's global RNG (weights, dropout) and return a generator for batch order."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def scale_pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float (N, 1, 28, 28) in [0, 1]."""
    return images.unsqueeze(1).float().div(255)


def standardise(pixels01: torch.Tensor) -> torch.Tensor:
    """The same operations, in the same order, as ``handler.preprocessing.normalise``."""
    return pixels01.sub(MNIST_MEAN).div(MNIST_STD)


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) -> the normalised float (N, 1, 28, 28) the model takes."""
    return standardise(scale_pixels(images))


def random_warp(pixels01: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Rotate, scale, stretch, shear, shift and elastically distort every image of the batch
    by its own random amount, in one resampling; the result has full contrast."""
    count, _, height, width = pixels01.shape

    def uniform(limit: float) -> torch.Tensor:
        return (torch.rand(count, generator=generator) * 2 - 1) * limit

    angle = uniform(math.radians(MAX_ROTATION_DEGREES))
    scale = 1 + uniform(MAX_SCALE_CHANGE)
    aspect = 1 + uniform(MAX_ASPECT_CHANGE)
    shear = uniform(MAX_SHEAR)
    pixel = 2 / width  # one pixel in affine_grid's [-1, 1] coordinates
    shift_x, shift_y = uniform(MAX_SHIFT_PIXELS * pixel), uniform(MAX_SHIFT_PIXELS * pixel)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # rotation @ shear @ diag(scale * aspect, scale / aspect), applied to output coordinates
    sx, sy = scale * aspect, scale / aspect
    theta = torch.stack(
        [
            torch.stack([cos * sx, (cos * shear - sin) * sy, shift_x], 1),
            torch.stack([sin * sx, (sin * shear + cos) * sy, shift_y], 1),
        ],
        1,
    ).to(pixels01.device)
    grid = F.affine_grid(theta, list(pixels01.shape), align_corners=False)
    grid = grid + elastic_field(count, height, width, generator).to(pixels01.device) * pixel
    warped = F.grid_sample(pixels01, grid, padding_mode="zeros", align_corners=False)
    # Full contrast again, as the preprocessing stretches the ink of every drawing.
    return warped / warped.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)


def elastic_field(count: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """(count, height, width, 2) smooth random displacements, ELASTIC_ALPHA pixels at most
    in size on average; Gaussian-blurred white noise, as in Simard et al."""
    noise = torch.rand(count * 2, 1, height, width, generator=generator) * 2 - 1
    radius = int(2 * ELASTIC_SIGMA)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(offsets**2) / (2 * ELASTIC_SIGMA**2))
    kernel = kernel / kernel.sum()
    smooth = F.conv2d(noise, kernel.view(1, 1, 1, -1), padding=(0, radius))
    smooth = F.conv2d(smooth, kernel.view(1, 1, -1, 1), padding=(radius, 0))
    smooth = smooth / smooth.abs().amax(dim=(2, 3), keepdim=True).clamp_min(1e-6)
    return (smooth * ELASTIC_ALPHA).view(count, 2, height, width).permute(0, 2, 3, 1)


def random_proportions(pixels01: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Make a random share of the batch wider for its height, each by a random factor up to
    MAX_PROPORTION_CHANGE, and fit it back as the preprocessing fits a drawing: the longer side
    of the ink to DIGIT_BOX pixels, the centre of mass where it was. (Wider and flatter are the
    same once fitted into the box.)"""
    count, _, height, width = pixels01.shape
    chosen = torch.rand(count, generator=generator) < PROPORTION_CHANGED_FRACTION
    factor = MAX_PROPORTION_CHANGE ** torch.rand(count, generator=generator)
    if not chosen.any():
        return pixels01
    chosen = chosen.to(pixels01.device)
    factor = factor.to(pixels01.device)[chosen]
    digits = pixels01[chosen]
    ink = digits[:, 0]
    rows = torch.arange(height, dtype=ink.dtype, device=ink.device)
    cols = torch.arange(width, dtype=ink.dtype, device=ink.device)
    ink_width = _extent(ink.amax(dim=1) > 0, cols)
    ink_height = _extent(ink.amax(dim=2) > 0, rows)
    scale_y = DIGIT_BOX / torch.maximum(ink_width * factor, ink_height)
    scale_x = factor * scale_y
    # The centre of mass in affine_grid's coordinates (pixel i at (2i + 1) / n - 1) stays put.
    mean_row, mean_col = centre_of_mass(ink)
    centre_x = (2 * mean_col + 1) / width - 1
    centre_y = (2 * mean_row + 1) / height - 1
    theta = torch.zeros(len(digits), 2, 3, dtype=ink.dtype, device=ink.device)
    theta[:, 0, 0], theta[:, 0, 2] = 1 / scale_x, centre_x * (1 - 1 / scale_x)
    theta[:, 1, 1], theta[:, 1, 2] = 1 / scale_y, centre_y * (1 - 1 / scale_y)
    grid = F.affine_grid(theta, list(digits.shape), align_corners=False)
    fitted = F.grid_sample(digits, grid, padding_mode="zeros", align_corners=False)
    changed = pixels01.clone()
    changed[chosen] = fitted / fitted.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
    return changed


def _extent(inked: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Per row of `inked` (N, L booleans): the distance from the first True to the last, plus
    one (at least one)."""
    first = torch.where(inked, index, index.new_tensor(float("inf"))).amin(dim=1)
    last = torch.where(inked, index, index.new_tensor(float("-inf"))).amax(dim=1)
    return (last - first + 1).clamp_min(1)


def random_stroke_width(pixels01: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Make the strokes of a random share of the batch thinner or thicker, each by its own
    random amount: the image moves part of the way towards its 3x3 minimum (thinner), or its
    3x3 or 5x5 maximum (thicker)."""
    count = pixels01.shape[0]
    chosen = torch.rand(count, generator=generator) < STROKE_CHANGED_FRACTION
    amount = (torch.rand(count, generator=generator) * 3 - 1)[chosen].view(-1, 1, 1, 1)
    chosen = chosen.to(pixels01.device)
    amount = amount.to(pixels01.device)
    original = pixels01[chosen]
    thinnest = -F.max_pool2d(-original, kernel_size=3, stride=1, padding=1)
    wider = F.max_pool2d(original, kernel_size=3, stride=1, padding=1)
    widest = F.max_pool2d(original, kernel_size=5, stride=1, padding=2)
    thinner = original + (-amount).clamp(0, 1) * (thinnest - original)
    thicker = torch.where(
        amount <= 1,
        original + amount.clamp(0, 1) * (wider - original),
        wider + (amount - 1) * (widest - wider),
    )
    changed = pixels01.clone()
    changed[chosen] = torch.where(amount < 0, thinner, thicker)
    return changed


def random_low_resolution(pixels01: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Shrink a random share of the batch to a random size from LOW_RESOLUTION_SIZES (area
    average) and enlarge it back (bilinear): the blur of a digit drawn or sent too small."""
    count = pixels01.shape[0]
    chosen = torch.rand(count, generator=generator) < LOW_RESOLUTION_FRACTION
    low, high = LOW_RESOLUTION_SIZES
    size = int(torch.randint(low, high + 1, (1,), generator=generator))
    if not chosen.any():
        return pixels01
    chosen = chosen.to(pixels01.device)
    small = F.interpolate(pixels01[chosen], size=(size, size), mode="area")
    changed = pixels01.clone()
    changed[chosen] = F.interpolate(
        small, size=pixels01.shape[-2:], mode="bilinear", align_corners=False
    )
    return changed


def random_writing_variants(
    pixels01: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Give a random share of the 1s a flag (down to the left from the top), of the 7s a
    crossbar through the middle of the stem, and of the 9s a tail hooked to the left: one
    straight stroke of random size and angle at the digit's own pen width."""
    count = pixels01.shape[0]
    chosen = torch.rand(count, generator=generator) < WRITING_VARIANT_FRACTION
    size, angle = torch.rand(count, 2, generator=generator).unbind(dim=1)
    chosen &= torch.isin(labels.cpu(), torch.tensor(VARIANT_DIGITS))
    if not chosen.any():
        return pixels01
    device = pixels01.device
    on_device = chosen.to(device)
    ink = pixels01[on_device, 0]
    digit = labels[chosen.to(labels.device)].to(device)
    stroke = _variant_strokes(ink, digit, size[chosen].to(device), angle[chosen].to(device))
    changed = pixels01.clone()
    changed[on_device, 0] = torch.maximum(ink, stroke)
    return changed


def _variant_strokes(
    ink: torch.Tensor, digit: torch.Tensor, size: torch.Tensor, angle: torch.Tensor
) -> torch.Tensor:
    """The stroke `random_writing_variants` adds to each (side, side) digit of `ink`, placed on
    the digit and drawn with its own pen (none on an image with too little ink to place it);
    `size` and `angle` are uniform in [0, 1)."""
    count, side, _ = ink.shape
    rows = torch.arange(side, dtype=ink.dtype, device=ink.device)
    inked = ink.amax(dim=2) > 0.5
    top = torch.where(inked, rows, rows.new_tensor(side)).amin(dim=1)
    bottom = torch.where(inked, rows, rows.new_tensor(-1)).amax(dim=1)
    tall = bottom - top + 1

    def row_ink(row: torch.Tensor) -> torch.Tensor:
        return ink[torch.arange(count, device=ink.device), row.long().clamp(0, side - 1)]

    def column(row: torch.Tensor) -> torch.Tensor:
        """The ink-weighted mean column of each digit's `row` (the middle when it is empty)."""
        weights = row_ink(row)
        total = weights.sum(dim=1)
        mean = weights @ rows / total.clamp_min(1e-6)
        return torch.where(total > 0, mean, torch.full_like(mean, (side - 1) / 2))

    def towards(radians: torch.Tensor, row_sign: int, length: torch.Tensor) -> torch.Tensor:
        """A step to the left of `length`, `radians` below (+1) or above (-1) the horizontal."""
        return length[:, None] * torch.stack(
            [row_sign * torch.sin(radians), -torch.cos(radians)], 1
        )

    # 1: a flag from the top, to the left and 20-60 degrees down, a quarter to half as long.
    flag_start = torch.stack([top + 0.5, column(top)], dim=1)
    flag_end = flag_start + towards(torch.deg2rad(20 + 40 * angle), 1, tall * (0.25 + 0.25 * size))
    flag_pen = ink.sum(dim=(1, 2)) / tall
    # 7: a crossbar through the stem at 45-60 % of the height, tilted by up to 10 degrees.
    bar_row = torch.round(top + tall * (0.45 + 0.15 * angle))
    tilt = torch.deg2rad(20 * angle - 10)
    half = (tall * (0.15 + 0.1 * size))[:, None] * torch.stack(
        [-torch.sin(tilt), torch.cos(tilt)], dim=1
    )
    middle = torch.stack([bar_row, column(bar_row)], dim=1)
    bar_pen = row_ink(bar_row).sum(dim=1)
    # 9: a tail from the bottom, to the left and up to 45 degrees up.
    hook_start = torch.stack([bottom - 0.5, column(bottom)], dim=1)
    hook_end = hook_start + towards(torch.deg2rad(45 * angle), -1, tall * (0.2 + 0.25 * size))
    hook_pen = (row_ink(bottom - 1).sum(dim=1) + row_ink(bottom).sum(dim=1)) / 2

    one, seven = (digit == 1)[:, None], (digit == 7)[:, None]
    start = torch.where(one, flag_start, torch.where(seven, middle - half, hook_start))
    end = torch.where(one, flag_end, torch.where(seven, middle + half, hook_end))
    pen = torch.where(one[:, 0], flag_pen, torch.where(seven[:, 0], bar_pen, hook_pen))
    stroke = _segment_ink(rows, start, end, pen.clamp(*VARIANT_PEN))
    return stroke * (inked.sum(dim=1) >= 2)[:, None, None]


def _segment_ink(
    rows: torch.Tensor, start: torch.Tensor, end: torch.Tensor, pen: torch.Tensor
) -> torch.Tensor:
    """(N, side, side) straight strokes from `start` to `end` ((N, 2) rows and columns) drawn
    with round pens `pen` pixels wide, anti-aliased over one pixel."""
    row, col = rows.view(1, -1, 1), rows.view(1, 1, -1)
    start_row, start_col = start[:, 0, None, None], start[:, 1, None, None]
    step_row, step_col = (end - start)[:, 0, None, None], (end - start)[:, 1, None, None]
    along = (row - start_row) * step_row + (col - start_col) * step_col
    along = (along / (step_row**2 + step_col**2).clamp_min(1e-6)).clamp(0, 1)
    distance = torch.hypot(row - start_row - along * step_row, col - start_col - along * step_col)
    return (pen[:, None, None] / 2 + 0.5 - distance).clamp(0, 1)


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    data: MnistSplit,
    config: TrainConfig,
    generator: torch.Generator,
    description: str,
) -> tuple[float, float]:
    """One pass over the training tensors; returns (mean loss, accuracy)."""
    model.train()
    device = data.images.device
    order = torch.randperm(len(data.labels), generator=generator).to(device)
    total_loss, correct, seen = 0.0, 0, 0
    batches = range(0, len(order), config.batch_size)
    # disable=None: a bar on a terminal only, so CI logs do not fill with redraws.
    show = None if config.show_progress else True
    progress = tqdm(batches, desc=description, unit="batch", disable=show)
    for step, start in enumerate(progress):
        index = order[start : start + config.batch_size]
        pixels = scale_pixels(data.images[index])
        labels = data.labels[index]
        if config.augment:
            pixels = random_writing_variants(pixels, labels, generator)
            pixels = random_low_resolution(random_proportions(pixels, generator), generator)
            pixels = random_warp(random_stroke_width(pixels, generator), generator)
        logits = model(standardise(pixels).contiguous(memory_format=CHANNELS_LAST))
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total_loss += loss.item() * len(labels)
        correct += (logits.argmax(1) == labels).sum().item()
        seen += len(labels)
        if step % 20 == 0:
            progress.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.4f}")
    progress.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.4f}")
    progress.close()
    return total_loss / seen, correct / seen


@torch.inference_mode()
def evaluate(model: Callable[[torch.Tensor], torch.Tensor], data: MnistSplit) -> Evaluation:
    """Loss, accuracy and probabilities over a whole split, in large batches."""
    if isinstance(model, nn.Module):
        model.eval()
    device = data.images.device
    total_loss, probabilities = 0.0, []
    for start in range(0, len(data.labels), EVAL_BATCH_SIZE):
        images = data.images[start : start + EVAL_BATCH_SIZE]
        labels = data.labels[start : start + EVAL_BATCH_SIZE]
        logits = model(to_model_input(images).to(device))
        total_loss += F.cross_entropy(logits, labels, reduction="sum").item()
        probabilities.append(logits.softmax(dim=1).cpu())
    probabilities = torch.cat(probabilities)
    accuracy = (probabilities.argmax(1) == data.labels.cpu()).sum().item() / len(data.labels)
    return Evaluation(total_loss / len(data.labels), accuracy, probabilities)


def confusion_matrix(labels: torch.Tensor, predictions: torch.Tensor) -> np.ndarray:
    """10x10 counts, rows = true digit, columns = predicted digit."""
    flat = labels.cpu().long() * 10 + predictions.cpu().long()
    return torch.bincount(flat, minlength=100).reshape(10, 10).numpy()


def _to_device(split: MnistSplit, device: torch.device, limit: int | None = None) -> MnistSplit:
    images, labels = split.images[:limit], split.labels[:limit]
    return MnistSplit(images=images.to(device), labels=labels.to(device))


def fit(
    model: nn.Module,
    train: MnistSplit,
    test: MnistSplit,
    config: TrainConfig,
    generator: torch.Generator,
) -> tuple[list[dict], Evaluation]:
    """Train for ``config.epochs``, evaluating on ``test`` after each; returns the history.
    The model trains channels-last and comes back in the usual contiguous layout."""
    model.to(memory_format=CHANNELS_LAST)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    steps_per_epoch = math.ceil(len(train.labels) / config.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.learning_rate, total_steps=config.epochs * steps_per_epoch
    )
    epochs: list[dict] = []
    evaluation = None
    for epoch in range(1, config.epochs + 1):
        started = time.perf_counter()
        description = f"epoch {epoch}/{config.epochs}"
        train_loss, train_accuracy = train_epoch(
            model, optimizer, scheduler, train, config, generator, description
        )
        train_seconds = time.perf_counter() - started
        evaluation = evaluate(model, test)
        record = {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_accuracy": train_accuracy,
            "test_loss": evaluation.loss,
            "test_accuracy": evaluation.accuracy,
            "seconds": time.perf_counter() - started,
            "train_seconds": train_seconds,
        }
        epochs.append(record)
        print(
            f"epoch {epoch}: train loss {train_loss:.4f} acc {100 * train_accuracy:.2f} % | "
            f"test loss {evaluation.loss:.4f} acc {100 * evaluation.accuracy:.2f} % | "
            f"{record['seconds']:.1f} s",
            flush=True,
        )
    model.to(memory_format=torch.contiguous_format)
    return epochs, evaluation


def summarise(epochs: list[dict], train_images: int) -> dict:
    """Figures a benchmark reads: throughput and time until the test set first hit 99 %."""
    elapsed, seconds_to_target, epoch_to_target = 0.0, None, None
    for record in epochs:
        elapsed += record["seconds"]
        if epoch_to_target is None and record["test_accuracy"] >= TARGET_ACCURACY:
            seconds_to_target, epoch_to_target = elapsed, record["epoch"]
    train_seconds = sum(record["train_seconds"] for record in epochs)
    return {
        "final_test_accuracy": epochs[-1]["test_accuracy"] if epochs else None,
        "total_seconds": elapsed,
        "seconds_per_epoch": elapsed / len(epochs) if epochs else None,
        "images_per_second": train_images * len(epochs) / train_seconds if train_seconds else None,
        "seconds_to_99": seconds_to_target,
        "epoch_reaching_99": epoch_to_target,
    }


def sample_indices(labels: torch.Tensor, predictions: torch.Tensor, count: int) -> torch.Tensor:
    """The first ``count`` test images, with up to a quarter swapped for the first mistakes so
    that the picture shows what the model gets wrong, not only what it gets right."""
    wrong = (predictions != labels.cpu()).nonzero().flatten()[: count // 4]
    right = (predictions == labels.cpu()).nonzero().flatten()[: count - len(wrong)]
    return torch.cat([right, wrong]).sort().values


def write_evaluation_plots(
    test: MnistSplit, evaluation: Evaluation, results_dir: Path, samples: int
) -> None:
    """The sample-prediction grid and the confusion matrix."""
    index = sample_indices(test.labels, evaluation.predictions, samples)
    plots.plot_predictions(
        test.images.cpu()[index].numpy(),
        test.labels.cpu()[index].numpy(),
        evaluation.probabilities[index].numpy(),
        results_dir / PREDICTIONS_PLOT,
    )
    matrix = confusion_matrix(test.labels, evaluation.predictions)
    plots.plot_confusion_matrix(matrix, results_dir / CONFUSION_PLOT)


def run_training(
    config: TrainConfig,
    data_dir: Path,
    model_path: Path,
    results_dir: Path,
    device: torch.device,
    test_samples: int = 20,
    plot_evaluation: bool = True,
    export: bool = True,
) -> dict:
    """Train, save the checkpoint and the checked TorchScript file, write history and plots.

    With ``export=False`` only the checkpoint is saved, for calibration to export the model."""
    generator = seed_everything(config.seed)
    train, test = load_mnist(data_dir)
    train = _to_device(train, device, config.train_subset)
    test = _to_device(test, device)
    print(
        f"Training on {len(train.labels):,} images ({device}, {torch.get_num_threads()} threads), "
        f"testing on {len(test.labels):,}: {config.epochs} epochs, batch {config.batch_size}, "
        f"peak learning rate {config.learning_rate}",
        flush=True,
    )
    model = MnistNet(dropout=config.dropout, conv_dropout=config.conv_dropout).to(device)
    epochs, evaluation = fit(model, train, test, config, generator)

    model = model.cpu().eval()
    # `make train-and-archive` takes an existing TorchScript file as done: none may outlive the
    # weights it was made from, or stand before calibration has been put into it.
    model_path.unlink(missing_ok=True)
    checkpoint = save_checkpoint(model, model_path)
    if export:
        sample = to_model_input(test.images[:EXPORT_CHECK_BATCH].cpu())
        export_torchscript(served_model(model), model_path, sample)
        print(f"Saved {checkpoint} and TorchScript {model_path} (checked against the eager model)")
    else:
        print(f"Saved {checkpoint}")

    history = {
        "epochs": epochs,
        **summarise(epochs, len(train.labels)),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "config": asdict(config),
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / HISTORY_FILE).write_text(json.dumps(history, indent=2) + "\n")
    plots.plot_history(epochs, results_dir / HISTORY_PLOT)
    if plot_evaluation:
        write_evaluation_plots(test, evaluation, results_dir, test_samples)
    _print_summary(history, results_dir)
    return history


def _print_summary(history: dict, results_dir: Path) -> None:
    reached = (
        f"99 % reached at epoch {history['epoch_reaching_99']} "
        f"after {history['seconds_to_99']:.1f} s"
        if history["epoch_reaching_99"]
        else "99 % not reached"
    )
    print(
        f"Final test accuracy of the network {100 * history['final_test_accuracy']:.2f} % in "
        f"{history['total_seconds']:.1f} s ({history['seconds_per_epoch']:.1f} s/epoch, "
        f"{history['images_per_second']:.0f} training images/s); {reached}. "
        f"History and plots in {results_dir}"
    )


def run_test(
    model_path: Path,
    data_dir: Path,
    results_dir: Path,
    device: torch.device,
    test_samples: int = 20,
) -> Evaluation:
    """Evaluate the saved TorchScript model on the test set and draw its plots."""
    if not model_path.is_file():
        raise FileNotFoundError(f"no model at {model_path}; train one with --mode train")
    model = load_torchscript(model_path, device)
    _, test = load_mnist(data_dir)
    test = _to_device(test, device)
    evaluation = evaluate(model, test)
    write_evaluation_plots(test, evaluation, results_dir, test_samples)
    print(
        f"{model_path}: test accuracy {100 * evaluation.accuracy:.2f} % "
        f"(loss {evaluation.loss:.4f}) on {len(test.labels):,} images; "
        f"plots in {results_dir}"
    )
    return evaluation
