"""`python -m benchmarks.ceiling`: its checks, and a quick run of the whole comparison."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks import ceiling
from training.data import MnistSplit
from training.train import TrainConfig


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--styles", "thin_stroke,no_such_style"], "unknown styles no_such_style"),
        (["--training-style", "felt_tip"], "unknown styles felt_tip"),
        (["--train-subset", "100", "--training-count", "200"], "cannot exceed --train-subset"),
        (["--per-style", "300"], "--per-style must divide 10,000"),
    ],
)
def test_what_it_cannot_measure_is_refused(
    arguments: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        ceiling.main([*arguments, "--model-path", str(tmp_path / "none.pt")])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_the_reference_is_the_same_design_much_wider() -> None:
    reference = ceiling.count_parameters(ceiling.ReferenceNet())
    assert reference > 10 * ceiling.count_parameters(ceiling.MnistNet())


def test_each_network_starts_from_the_training_seeds_weights(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ceiling, "fit", lambda *args: None)
    digits = MnistSplit(images=torch.zeros(4, 28, 28, dtype=torch.uint8), labels=torch.zeros(4))
    model = ceiling.trained(ceiling.MnistNet, digits, digits, TrainConfig(seed=5))
    torch.manual_seed(5)
    expected = ceiling.MnistNet()
    for got, want in zip(model.parameters(), expected.parameters(), strict=True):
        assert torch.equal(got, want)


@pytest.mark.slow
def test_a_quick_run_reads_the_same_drawings_with_four_models(
    scripted_model: Path, mnist_dir: Path, tmp_path: Path
) -> None:
    code = ceiling.main(
        ["--model-path", str(scripted_model), "--styles", "thin_stroke,sent_28",
         "--per-style", "20", "--training-count", "100", "--epochs", "3",
         "--train-subset", "3000", "--results-dir", str(tmp_path)]
    )  # fmt: skip
    assert code == 0
    report = json.loads((tmp_path / "ceiling.json").read_text())
    figures = report["accuracy"]
    assert list(figures) == [
        "served",
        "reference",
        "reference + very_thick_stroke",
        "served design + very_thick_stroke",
    ]
    for row in figures.values():
        assert list(row) == ["mnist_same_digits", "thin_stroke", "sent_28"]
        assert all(0 <= value <= 1 for value in row.values())
    # Three epochs on 3,000 digits already read most digits; the untrained served file does not.
    assert figures["reference"]["mnist_same_digits"] > 0.7
    assert figures["served"]["mnist_same_digits"] < 0.5
    table = (tmp_path / "ceiling.md").read_text()
    assert "| sent_28 |" in table and "reference + very_thick_stroke" in table
