"""Temperature scaling fitted on held-out digits, and the reliability figures behind it.

``python -m training`` trains on all but the last ``holdout`` MNIST training images and then
calls ``calibrate``: it fits one temperature T on those held-out digits, both as MNIST has them
and redrawn like canvas drawings (``training.drawings``), re-exports the model in its served
form (``model.calibration.served_model``) so the TorchScript file carries T, and writes
``results/calibration.json`` and ``results/reliability.png``. The MNIST test set is only ever
used to evaluate, never to fit.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from handler.preprocessing import decode_image, normalise, preprocess, to_mnist_pixels
from model.calibration import served_model
from model.net import MnistNet
from model.torchscript import export_torchscript, state_dict_path
from training.data import MnistSplit, load_mnist
from training.drawings import STYLES, render_drawing

CALIBRATION_FILE = "calibration.json"
RELIABILITY_PLOT = "reliability.png"
DEFAULT_HOLDOUT = 5000
DEFAULT_DRAWINGS = 5000
EVAL_BATCH = 1000
# Drawing and preprocessing a canvas takes milliseconds, most of calibration's time: the digits
# are drawn in shares of about this many, shared out over the cores (docs/performance.md).
DRAWINGS_PER_SHARE = 1000
# Confidence bands of the reliability table and of the ECE: finer near the top, where most
# answers are, and wide enough below that a band holds more than a handful of answers.
BAND_EDGES = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
# The "unsure" rules the app can use, each judged on the test drawings in calibration.json.
UNSURE_CONFIDENCES = (0.5, 0.6, 0.7, 0.8, 0.9)
UNSURE_MARGINS = (0.2, 0.3, 0.4, 0.5, 0.6)
# A temperature is set by the answers the model gets wrong: with none, fitting makes it certain
# of everything; with fewer than this it follows a handful of drawings.
MIN_REFIT_MISTAKES = 10


@dataclass(frozen=True)
class Band:
    """Answers whose confidence lies in [low, high): how many, how often right, how sure."""

    low: float
    high: float
    count: int
    accuracy: float | None
    mean_confidence: float | None


@dataclass(frozen=True)
class Reliability:
    """How well the confidence of one set of answers matches how often they are right."""

    count: int
    accuracy: float
    mean_confidence: float
    nll: float
    ece: float
    bands: list[Band]


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 100) -> float:
    """The T that minimises the cross-entropy of ``softmax(logits / T)`` on these labels.

    Optimised over log T, so T stays positive without constraints; one scalar cannot overfit
    a few thousand held-out answers.
    """
    # A copy: the logits may come from inference mode, which autograd cannot use.
    logits, labels = logits.detach().to(torch.float64, copy=True), labels.detach()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp())


def reliability(
    probabilities: torch.Tensor, labels: torch.Tensor, edges: Sequence[float] = BAND_EDGES
) -> Reliability:
    """Per-band accuracy against mean confidence, and the ECE over the same bands: the
    count-weighted mean gap between a band's accuracy and its mean confidence."""
    confidence, predicted = probabilities.max(dim=1)
    correct = (predicted == labels).double()
    confidence = confidence.double()
    band_index = torch.bucketize(
        confidence, torch.tensor(edges[1:-1], dtype=torch.float64), right=True
    )
    bands, ece = [], 0.0
    for index, (low, high) in enumerate(itertools.pairwise(edges)):
        inside = band_index == index
        count = int(inside.sum())
        if count:
            accuracy, mean_confidence = (
                float(correct[inside].mean()),
                float(confidence[inside].mean()),
            )
            ece += count / len(labels) * abs(accuracy - mean_confidence)
            bands.append(Band(low, high, count, accuracy, mean_confidence))
        else:
            bands.append(Band(low, high, 0, None, None))
    nll = float(F.nll_loss(probabilities.double().clamp_min(1e-12).log(), labels))
    return Reliability(
        count=len(labels),
        accuracy=float(correct.mean()),
        mean_confidence=float(confidence.mean()),
        nll=nll,
        ece=ece,
        bands=bands,
    )


@dataclass(frozen=True)
class TemperatureChoice:
    """The temperature a retrained model serves with, and the evidence for it."""

    temperature: float
    refitted: bool
    reason: str
    drawings: int
    ece_kept: float | None = None
    ece_refitted: float | None = None


def choose_temperature(
    model: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    labels: torch.Tensor,
    kept: float,
    minimum: int,
) -> TemperatureChoice:
    """Refit T on people's own labelled drawings (`model` at T = 1) once there are `minimum`
    of them with MIN_REFIT_MISTAKES misread, and take it only if it also calibrates better on
    answers it was not fitted on: each half of them judged with the T fitted on the other half.
    Otherwise keep `kept`. T never changes the digit read, only the confidence shown."""
    count = len(labels)
    needs = f"refitting needs {max(minimum, 1)} drawings and {MIN_REFIT_MISTAKES} misread"
    if count < max(minimum, 1):
        return TemperatureChoice(kept, False, f"{count} holdout drawings; {needs}", count)
    logits = logits_of(model, inputs).double()
    mistakes = int((logits.argmax(dim=1) != labels).sum())
    if mistakes < MIN_REFIT_MISTAKES:
        reason = f"{count} holdout drawings, {mistakes} of them misread; {needs}"
        return TemperatureChoice(kept, False, reason, count)
    ece_kept = reliability((logits / kept).softmax(dim=1), labels).ece
    first = torch.arange(count) % 2 == 0
    crossed = torch.empty_like(logits)
    for half, other in ((first, ~first), (~first, first)):
        crossed[half] = (logits[half] / fit_temperature(logits[other], labels[other])).softmax(1)
    ece_refitted = reliability(crossed, labels).ece
    judged = (
        f"{count} holdout drawings, ECE {100 * ece_refitted:.2f} % refitted (each half with the "
        f"other half's temperature) against {100 * ece_kept:.2f} % kept"
    )
    if ece_refitted >= ece_kept:
        return TemperatureChoice(kept, False, judged, count, ece_kept, ece_refitted)
    refitted = fit_temperature(logits, labels)
    return TemperatureChoice(refitted, True, judged, count, ece_kept, ece_refitted)


def unsure_rules(probabilities: torch.Tensor, labels: torch.Tensor) -> list[dict[str, float]]:
    """For each (confidence, margin) rule: the share of answers it calls unsure, how often
    those are right, how often the true digit is among their top three, and how often the
    answers it lets through are right."""
    top = probabilities.topk(3, dim=1)
    first, second = top.values[:, 0], top.values[:, 1]
    right = top.indices[:, 0] == labels
    in_top3 = (top.indices == labels[:, None]).any(dim=1)
    rows = []
    for threshold in UNSURE_CONFIDENCES:
        for margin in UNSURE_MARGINS:
            unsure = (first < threshold) | (first - second < margin)
            sure = ~unsure
            rows.append({
                "confidence_below": threshold,
                "margin_below": margin,
                "unsure_share": float(unsure.double().mean()),
                "unsure_accuracy": _share(right, unsure),
                "unsure_top3_accuracy": _share(in_top3, unsure),
                "sure_accuracy": _share(right, sure),
                "mistakes_caught": _share(unsure, ~right),
            })  # fmt: skip
    return rows


def _share(values: torch.Tensor, where: torch.Tensor) -> float | None:
    return float(values[where].double().mean()) if bool(where.any()) else None


@torch.inference_mode()
def logits_of(model: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
    """The model's logits for normalised inputs (N, 1, 28, 28), in batches."""
    return torch.cat([model(inputs[i : i + EVAL_BATCH]) for i in range(0, len(inputs), EVAL_BATCH)])


def mnist_inputs(images: torch.Tensor) -> torch.Tensor:
    """uint8 MNIST digits (N, 28, 28) -> model inputs, through the serving preprocessing."""
    return torch.stack([preprocess(image.numpy()) for image in images])


def drawn_inputs(images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Each digit redrawn in the next of ``training.drawings``' styles, as model inputs: what
    the app's users send."""
    return torch.stack([normalise(digit) for digit in redrawn(images, sorted(STYLES), seed)])


def redrawn(images: torch.Tensor, styles: Sequence[str], seed: int = 0) -> np.ndarray:
    """What the model sees (N, 28, 28 uint8) of each digit redrawn in the next of ``styles``,
    encoded, then decoded and preprocessed exactly as the handler does. The digits are drawn in
    shares of a fixed size, each with its own seed, so that the drawings are the same however
    many cores share them out."""
    shares = np.array_split(np.arange(len(images)), math.ceil(len(images) / DRAWINGS_PER_SHARE))
    seeds = np.random.SeedSequence(seed).spawn(len(shares))
    jobs = [(images[share].numpy(), int(share[0]), styles) for share in shares]
    workers = min(os.cpu_count() or 1, len(jobs))
    if workers == 1:
        pixels = [
            _draw_share(*job, share_seed) for job, share_seed in zip(jobs, seeds, strict=True)
        ]
    else:
        with ProcessPoolExecutor(workers) as pool:
            pixels = list(pool.map(_draw_share, *zip(*jobs, strict=True), seeds))
    return np.concatenate(pixels)


def _draw_share(
    digits: np.ndarray, first: int, styles: Sequence[str], seed: np.random.SeedSequence
) -> np.ndarray:
    """What the model sees for these digits, the i-th of the whole set in style i mod n."""
    rng = np.random.default_rng(seed)
    chosen = [STYLES[name] for name in styles]
    return np.stack(
        [
            to_mnist_pixels(
                decode_image(render_drawing(digit, chosen[(first + i) % len(chosen)], rng))
            )
            for i, digit in enumerate(digits)
        ]
    )


def held_out(train: MnistSplit, holdout: int) -> MnistSplit:
    """The last ``holdout`` training images: training skips them (``training/__main__.py``)."""
    return MnistSplit(images=train.images[-holdout:], labels=train.labels[-holdout:])


def calibrate(
    model_path: Path,
    data_dir: Path,
    results_dir: Path,
    holdout: int = DEFAULT_HOLDOUT,
    drawings: int = DEFAULT_DRAWINGS,
) -> dict:
    """Fit T on the held-out digits, export the model with T inside, write the figures."""
    net = MnistNet()
    net.load_state_dict(torch.load(state_dict_path(model_path), map_location="cpu"))
    uncalibrated = served_model(net.eval()).eval()
    train, test = load_mnist(data_dir)
    fit_split = held_out(train, holdout)
    fit_inputs = torch.cat(
        [mnist_inputs(fit_split.images), drawn_inputs(fit_split.images[:drawings])]
    )
    fit_labels = torch.cat([fit_split.labels, fit_split.labels[:drawings]])
    temperature = fit_temperature(logits_of(uncalibrated, fit_inputs), fit_labels)
    calibrated = served_model(net, temperature).eval()
    export_torchscript(calibrated, model_path, fit_inputs[:64])
    print(f"Temperature {temperature:.3f} fitted on {len(fit_labels):,} held-out digits; "
          f"{model_path} now carries it")  # fmt: skip

    evaluations = {
        "mnist_test": (mnist_inputs(test.images), test.labels),
        "test_drawings": (drawn_inputs(test.images[:drawings], seed=1), test.labels[:drawings]),
    }
    report: dict = {
        "temperature": temperature,
        "fitted_on": {"held_out_mnist_training_digits": holdout, "of_them_redrawn": drawings},
        "band_edges": list(BAND_EDGES),
        "evaluations": {},
    }
    curves = {}
    for name, (inputs, labels) in evaluations.items():
        logits = logits_of(uncalibrated, inputs).double()
        before = reliability(logits.softmax(dim=1), labels)
        after = reliability((logits / temperature).softmax(dim=1), labels)
        curves[name] = (before, after)
        report["evaluations"][name] = {"before": asdict(before), "after": asdict(after)}
        if name == "test_drawings":
            report["unsure_rules"] = unsure_rules((logits / temperature).softmax(dim=1), labels)
        print(f"{name}: ECE {100 * before.ece:.2f} % before, {100 * after.ece:.2f} % after")
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / CALIBRATION_FILE).write_text(json.dumps(report, indent=2) + "\n")
    plot_reliability(curves, temperature, results_dir / RELIABILITY_PLOT)
    return report


def plot_reliability(
    curves: dict[str, tuple[Reliability, Reliability]], temperature: float, path: Path | None
) -> Figure:
    """Per evaluation set: accuracy against mean confidence in each band, before and after T;
    points on the diagonal are calibrated. Beneath: how many answers each band holds."""
    figure = Figure(figsize=(6 * len(curves), 8))
    axes = figure.subplots(2, len(curves), squeeze=False, height_ratios=(3, 1))
    for column, (name, (before, after)) in enumerate(curves.items()):
        axis, counts = axes[0, column], axes[1, column]
        axis.plot([0, 1], [0, 1], color="grey", linestyle=":", label="calibrated")
        for label, result, style in (
            ("before", before, "o--"),
            (f"T = {temperature:.2f}", after, "o-"),
        ):
            filled = [band for band in result.bands if band.count]
            axis.plot(
                [band.mean_confidence for band in filled],
                [band.accuracy for band in filled],
                style,
                label=f"{label} (ECE {100 * result.ece:.2f} %)",
            )
        axis.set(title=f"{name} ({after.count:,})", xlabel="mean confidence", ylabel="accuracy")
        axis.set(xlim=(0, 1.02), ylim=(0, 1.02))
        axis.grid(alpha=0.3)
        axis.legend(loc="upper left")
        names = [f"{band.low:g}-{band.high:g}" for band in after.bands]
        counts.bar(names, [max(band.count, 0.5) for band in after.bands], log=True)
        counts.set(ylabel="answers (after)", xlabel="confidence band")
        counts.tick_params(axis="x", labelrotation=45, labelsize=8)
    figure.tight_layout()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=100, bbox_inches="tight")
    return figure
