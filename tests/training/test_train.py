"""The training loop's pieces: preprocessing parity, augmentation, a short run, export, summary."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from handler.preprocessing import normalise
from model.net import MnistNet
from model.torchscript import ExportMismatchError, check_agreement, export_torchscript
from training import plots
from training.data import MnistSplit, load_split
from training.train import (
    ELASTIC_ALPHA,
    TrainConfig,
    confusion_matrix,
    elastic_field,
    evaluate,
    fit,
    random_proportions,
    random_stroke_width,
    random_warp,
    random_writing_variants,
    sample_indices,
    seed_everything,
    summarise,
    to_model_input,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def mnist(mnist_dir: Path) -> tuple[MnistSplit, MnistSplit]:
    return load_split(mnist_dir, train=True), load_split(mnist_dir, train=False)


def test_training_input_is_exactly_what_the_handler_feeds(mnist) -> None:
    _, test = mnist
    batch = to_model_input(test.images[:5])
    for index in range(5):
        assert torch.equal(batch[index], normalise(test.images[index].numpy()))


def _augmented(
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor], images: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixels in 0-1, augmented with seed 0), checked for what every augmentation keeps:
    the shape, the 0-1 range and the same result for the same seed."""
    pixels = images.unsqueeze(1).float() / 255
    augmented = augment(pixels, torch.Generator().manual_seed(0))
    assert augmented.shape == pixels.shape
    assert augmented.min() >= 0 and augmented.max() <= 1
    assert torch.equal(augmented, augment(pixels, torch.Generator().manual_seed(0)))
    return pixels, augmented


def test_warp_moves_pixels_but_keeps_shape_range_and_the_digit(mnist) -> None:
    _, test = mnist
    pixels, warped = _augmented(random_warp, test.images[:64])
    assert not torch.allclose(warped, pixels, atol=0.05)
    assert torch.allclose(warped.amax(dim=(1, 2, 3)), torch.ones(64))  # full contrast
    ink_ratio = warped.sum(dim=(1, 2, 3)) / pixels.sum(dim=(1, 2, 3))
    assert ink_ratio.min() > 0.5 and ink_ratio.max() < 1.6  # changed, but the digit is there
    moved = (warped - pixels).abs().mean(dim=(1, 2, 3))
    assert moved.std() > 0.01  # each image gets its own warp


def test_elastic_field_is_smooth_and_bounded() -> None:
    field = elastic_field(8, 28, 28, torch.Generator().manual_seed(1))
    assert field.shape == (8, 28, 28, 2)
    assert field.abs().max() <= ELASTIC_ALPHA + 1e-5
    neighbour_step = (field[:, 1:] - field[:, :-1]).abs().mean()
    assert neighbour_step < field.abs().mean() / 3  # neighbours move together


def test_stroke_width_changes_half_the_digits_by_at_most_two_pixels(mnist) -> None:
    _, test = mnist
    pixels, changed = _augmented(random_stroke_width, test.images[:400])
    widest = torch.nn.functional.max_pool2d(pixels, 5, stride=1, padding=2)
    thinnest = -torch.nn.functional.max_pool2d(-pixels, 3, stride=1, padding=1)
    assert (changed <= widest + 1e-6).all() and (changed >= thinnest - 1e-6).all()
    which = (changed != pixels).flatten(1).any(dim=1)
    assert 0.4 < which.float().mean() < 0.6
    thicker = (changed.sum(dim=(1, 2, 3)) > pixels.sum(dim=(1, 2, 3)))[which]
    assert 0.3 < thicker.float().mean() < 0.7  # both ways


def _ink_box_and_centre(pixels: torch.Tensor) -> tuple[int, int, float, float]:
    """Height and width of the ink's box, and the centre of mass."""
    ink = pixels[0]
    rows = torch.nonzero((ink > 0).any(dim=1)).flatten()
    cols = torch.nonzero((ink > 0).any(dim=0)).flatten()
    index = torch.arange(28, dtype=ink.dtype)
    total = ink.sum()
    return (
        int(rows[-1] - rows[0] + 1),
        int(cols[-1] - cols[0] + 1),
        float(ink.sum(dim=1) @ index / total),
        float(ink.sum(dim=0) @ index / total),
    )


def test_proportions_widen_some_digits_and_fit_them_into_the_box_again(mnist) -> None:
    _, test = mnist
    pixels, changed = _augmented(random_proportions, test.images[:400])
    which = (changed != pixels).flatten(1).any(dim=1)
    assert 0.08 < which.float().mean() < 0.22
    aspect_ratios = []
    for before, after in zip(pixels[which], changed[which], strict=True):
        height, width, row, col = _ink_box_and_centre(before)
        new_height, new_width, new_row, new_col = _ink_box_and_centre(after)
        # The longer side fills the 20 px box; resampling spills up to a pixel each side.
        assert max(height, width) == 20 and max(new_height, new_width) in (20, 21, 22)
        assert abs(new_row - row) < 0.5 and abs(new_col - col) < 0.5  # the centre stays
        aspect_ratios.append((new_width / new_height) / (width / height))
    ratios = torch.tensor(aspect_ratios)
    assert ratios.min() > 0.95 and ratios.max() < 2.2  # wider for their height, never narrower
    assert ratios.median() > 1.15


def test_writing_variants_add_a_stroke_where_each_digit_takes_it(mnist) -> None:
    _, test = mnist
    images, labels = test.images[:600], test.labels[:600]
    pixels, changed = _augmented(
        lambda batch, generator: random_writing_variants(batch, labels, generator), images
    )
    assert (changed >= pixels).all()  # ink is only added
    which = (changed != pixels).flatten(1).any(dim=1)
    assert set(labels[which].tolist()) == {1, 7, 9}
    share = which[torch.isin(labels, torch.tensor([1, 7, 9]))].float().mean()
    assert 0.2 < share < 0.4
    columns = torch.arange(28, dtype=pixels.dtype)
    for before, after, label in zip(
        pixels[which, 0], changed[which, 0], labels[which], strict=True
    ):
        added = after - before
        assert added.sum() > 3  # a stroke, not a speck
        inked = torch.nonzero(before.amax(dim=1) > 0.5).flatten()
        top, bottom = int(inked[0]), int(inked[-1])
        added_row = float(added.sum(dim=1) @ columns / added.sum())
        added_col = float(added.sum(dim=0) @ columns / added.sum())
        relative_row = (added_row - top) / (bottom - top + 1)
        if label == 1:  # a flag: from the top, to the left
            stem = float(before[top] @ columns / before[top].sum())
            assert relative_row < 0.4 and added_col < stem
        elif label == 7:  # a crossbar: through the middle, on both sides of the stem
            assert 0.3 < relative_row < 0.75
            spread = torch.nonzero(added.amax(dim=0) > 0.5).flatten()
            assert spread[-1] - spread[0] >= 4
        else:  # a tail hooked to the left, from the bottom
            stem = float(before[bottom] @ columns / before[bottom].sum())
            assert relative_row > 0.7 and added_col < stem


def test_short_training_on_a_subset_clearly_beats_chance(mnist) -> None:
    train, test = mnist
    # The loop is what is tested here; augmentation slows learning on so few images.
    config = TrainConfig(
        epochs=2, batch_size=64, learning_rate=0.01, augment=False, show_progress=False
    )
    model = MnistNet()
    subset = MnistSplit(train.images[:3000], train.labels[:3000])
    held_out = MnistSplit(test.images[:2000], test.labels[:2000])
    before = evaluate(model, held_out).accuracy
    epochs, after = fit(model, subset, held_out, config, seed_everything(0))
    assert before < 0.3
    assert after.accuracy > 0.85
    assert len(epochs) == 2 and epochs[1]["test_accuracy"] == after.accuracy
    assert epochs[1]["train_loss"] < epochs[0]["train_loss"]


def test_no_progress_bar_when_stderr_is_not_a_terminal(
    mnist, capsys: pytest.CaptureFixture[str]
) -> None:
    train, test = mnist
    config = TrainConfig(epochs=1, batch_size=100, show_progress=True)
    subset = MnistSplit(train.images[:300], train.labels[:300])
    held_out = MnistSplit(test.images[:100], test.labels[:100])
    fit(MnistNet(), subset, held_out, config, seed_everything(0))
    assert "batch/s" not in capsys.readouterr().err


def test_same_seed_gives_the_same_model(mnist) -> None:
    train, test = mnist
    config = TrainConfig(epochs=1, batch_size=100, show_progress=False)
    subset = MnistSplit(train.images[:500], train.labels[:500])
    held_out = MnistSplit(test.images[:200], test.labels[:200])
    results = []
    for _ in range(2):
        generator = seed_everything(7)
        model = MnistNet()
        fit(model, subset, held_out, config, generator)
        results.append(model.state_dict()["fc2.weight"].clone())
    assert torch.equal(results[0], results[1])


def test_torchscript_export_agrees_with_the_eager_model(mnist, tmp_path: Path) -> None:
    _, test = mnist
    torch.manual_seed(0)
    model = MnistNet()
    sample = to_model_input(test.images[:64])
    path = export_torchscript(model, tmp_path / "model.pt", sample)
    loaded = torch.jit.load(str(path))
    assert torch.allclose(loaded(sample), model.eval()(sample), atol=1e-5)
    assert not loaded.training


def test_a_rejected_export_leaves_the_model_before_it_in_place(
    mnist, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, test = mnist
    sample = to_model_input(test.images[:16])
    path = export_torchscript(MnistNet(), tmp_path / "model.pt", sample)
    before = path.read_bytes()
    monkeypatch.setattr("model.torchscript.AGREEMENT_TOLERANCE", -1.0)
    with pytest.raises(ExportMismatchError):
        export_torchscript(MnistNet(), path, sample)
    assert path.read_bytes() == before
    assert list(tmp_path.iterdir()) == [path]


def test_agreement_check_catches_a_different_model(mnist, tmp_path: Path) -> None:
    _, test = mnist
    sample = to_model_input(test.images[:16])
    torch.manual_seed(0)
    first = MnistNet()
    torch.manual_seed(1)
    other = torch.jit.script(MnistNet().eval())
    with pytest.raises(ExportMismatchError, match="differ"):
        check_agreement(first, other, sample)


def test_confusion_matrix_counts_each_pair() -> None:
    labels = torch.tensor([0, 0, 1, 9, 9, 9])
    predictions = torch.tensor([0, 1, 1, 9, 9, 4])
    matrix = confusion_matrix(labels, predictions)
    assert matrix.shape == (10, 10) and matrix.sum() == 6
    assert matrix[0, 0] == 1 and matrix[0, 1] == 1 and matrix[9, 9] == 2 and matrix[9, 4] == 1


def test_summary_finds_when_99_percent_was_first_reached() -> None:
    epochs = [
        {"epoch": 1, "test_accuracy": 0.98, "seconds": 5.0, "train_seconds": 4.0},
        {"epoch": 2, "test_accuracy": 0.991, "seconds": 6.0, "train_seconds": 5.0},
        {"epoch": 3, "test_accuracy": 0.989, "seconds": 7.0, "train_seconds": 6.0},
    ]
    summary = summarise(epochs, train_images=1000)
    assert summary["epoch_reaching_99"] == 2 and summary["seconds_to_99"] == 11.0
    assert summary["images_per_second"] == pytest.approx(3000 / 15)
    assert summary["final_test_accuracy"] == 0.989
    assert summarise(epochs[:1], 1000)["seconds_to_99"] is None


def test_plots_are_written_as_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    probabilities = rng.dirichlet(np.ones(10), size=7)
    labels = probabilities.argmax(1)
    labels[0] = (labels[0] + 1) % 10  # one mistake to mark
    history = [
        {"epoch": e, "train_loss": 1 / e, "test_loss": 1 / e, "train_accuracy": 0.9,
         "test_accuracy": 0.95}
        for e in (1, 2)
    ]  # fmt: skip
    figures = {
        "history.png": plots.plot_history(history, tmp_path / "history.png"),
        "predictions.png": plots.plot_predictions(
            images, labels, probabilities, tmp_path / "predictions.png"
        ),
        "bars.png": plots.plot_probability_bars(
            images[:3], probabilities[:3], tmp_path / "bars.png"
        ),
        "confusion.png": plots.plot_confusion_matrix(
            confusion_matrix(torch.tensor(labels), torch.tensor(probabilities.argmax(1))),
            tmp_path / "confusion.png",
        ),
    }
    for name in figures:
        assert (tmp_path / name).read_bytes().startswith(PNG_SIGNATURE)
    title = figures["predictions.png"]._suptitle.get_text()
    assert "1 mistaken" in title


def test_sample_picture_includes_some_mistakes() -> None:
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1])
    predictions = labels.clone()
    predictions[[5, 10, 11]] = 3
    chosen = sample_indices(labels, predictions, 8)
    assert chosen.tolist() == [0, 1, 2, 3, 4, 5, 6, 10]  # 6 first correct + 2 first mistakes
    assert sample_indices(labels, labels, 4).tolist() == [0, 1, 2, 3]
