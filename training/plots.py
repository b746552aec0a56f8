"""The pictures training leaves in ``results/``; each function returns its figure for notebooks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

MISTAKE_COLOUR = "tab:red"
CORRECT_COLOUR = "tab:green"


def _save(figure: Figure, path: Path | None) -> Figure:
    """Figures are built without pyplot, so no GUI backend or global state is involved."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=100, bbox_inches="tight")
    return figure


def plot_history(epochs: Sequence[dict], path: Path | None = None) -> Figure:
    """Loss and accuracy per epoch, training next to test."""
    numbers = [e["epoch"] for e in epochs]
    figure = Figure(figsize=(11, 4))
    loss_axis, accuracy_axis = figure.subplots(1, 2)
    loss_axis.plot(numbers, [e["train_loss"] for e in epochs], "o-", label="train")
    loss_axis.plot(numbers, [e["test_loss"] for e in epochs], "o-", label="test")
    loss_axis.set(title="Cross-entropy loss", xlabel="epoch", ylabel="loss")
    accuracy_axis.plot(numbers, [100 * e["train_accuracy"] for e in epochs], "o-", label="train")
    accuracy_axis.plot(numbers, [100 * e["test_accuracy"] for e in epochs], "o-", label="test")
    accuracy_axis.axhline(99.0, color="grey", linestyle=":", label="99 %")
    accuracy_axis.set(title="Accuracy", xlabel="epoch", ylabel="accuracy (%)")
    for axis in (loss_axis, accuracy_axis):
        axis.grid(alpha=0.3)
        axis.legend()
        axis.xaxis.get_major_locator().set_params(integer=True)
    return _save(figure, path)


def plot_predictions(
    images: np.ndarray,
    labels: np.ndarray,
    probabilities: np.ndarray,
    path: Path | None = None,
    columns: int = 5,
) -> Figure:
    """Digits with predicted label, true label and confidence; mistakes in red with a frame."""
    count = len(images)
    rows = max(1, -(-count // columns))
    figure = Figure(figsize=(2.1 * columns, 2.4 * rows))
    axes = figure.subplots(rows, columns, squeeze=False)
    for index, axis in enumerate(axes.flat):
        axis.set_xticks([])
        axis.set_yticks([])
        if index >= count:
            axis.set_axis_off()
            continue
        predicted = int(np.argmax(probabilities[index]))
        correct = predicted == int(labels[index])
        colour = CORRECT_COLOUR if correct else MISTAKE_COLOUR
        axis.imshow(images[index], cmap="gray")
        axis.set_title(
            f"pred {predicted} · true {int(labels[index])}\n"
            f"{100 * probabilities[index][predicted]:.1f} %" + ("" if correct else "  ✗"),
            color=colour,
            fontsize=9,
        )
        for spine in axis.spines.values():
            spine.set_color(colour)
            spine.set_linewidth(1 if correct else 3)
    mistakes = sum(int(np.argmax(p)) != int(y) for p, y in zip(probabilities, labels, strict=True))
    figure.suptitle(f"{count} test digits, {mistakes} mistaken (red, ✗)")
    return _save(figure, path)


def plot_probability_bars(
    images: np.ndarray, probabilities: np.ndarray, path: Path | None = None
) -> Figure:
    """Each digit beside a bar chart of the model's ten probabilities."""
    count = len(images)
    figure = Figure(figsize=(6, 1.6 * count))
    axes = figure.subplots(count, 2, squeeze=False)
    for (image_axis, bar_axis), image, probs in zip(axes, images, probabilities, strict=True):
        image_axis.imshow(image, cmap="gray")
        image_axis.set_axis_off()
        predicted = int(np.argmax(probs))
        colours = [CORRECT_COLOUR if d == predicted else "tab:blue" for d in range(10)]
        bar_axis.bar(range(10), probs, color=colours)
        bar_axis.set(ylim=(0, 1), xticks=range(10))
        bar_axis.set_title(f"{predicted} ({100 * probs[predicted]:.1f} %)", fontsize=9)
    figure.tight_layout()
    return _save(figure, path)


def plot_confusion_matrix(matrix: np.ndarray, path: Path | None = None) -> Figure:
    """Rows are true digits, columns predictions; off-diagonal counts are the mistakes."""
    figure = Figure(figsize=(7, 6))
    axis = figure.subplots()
    figure.colorbar(_draw_confusion(axis, matrix, "test images"), ax=axis)
    return _save(figure, path)


def plot_confusion_pair(
    left: np.ndarray, right: np.ndarray, names: tuple[str, str], path: Path | None = None
) -> Figure:
    """Two models' confusion matrices on the same images, side by side."""
    figure = Figure(figsize=(13, 6))
    for axis, matrix, name in zip(figure.subplots(1, 2), (left, right), names, strict=True):
        _draw_confusion(axis, matrix, f"drawings, {name}")
    return _save(figure, path)


def _draw_confusion(axis: Any, matrix: np.ndarray, what: str) -> Any:
    shown = axis.imshow(matrix, cmap="Blues")
    threshold = matrix.max() / 2
    for true_digit in range(matrix.shape[0]):
        for predicted in range(matrix.shape[1]):
            count = int(matrix[true_digit, predicted])
            if count:
                axis.text(
                    predicted,
                    true_digit,
                    str(count),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if count > threshold else "black",
                )
    accuracy = np.trace(matrix) / max(1, matrix.sum())
    axis.set(
        xticks=range(10),
        yticks=range(10),
        xlabel="predicted digit",
        ylabel="true digit",
        title=f"Confusion matrix on {int(matrix.sum()):,} {what} ({100 * accuracy:.2f} %)",
    )
    return shown
