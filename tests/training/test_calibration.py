"""Temperature scaling: fitting, the reliability figures, and the model file that carries T."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import training.calibration
from model.calibration import CalibratedNet, temperature_of
from model.net import MnistNet
from model.predictor import MNISTPredictor
from model.torchscript import export_torchscript, load_torchscript, save_checkpoint
from training.calibration import (
    CALIBRATION_FILE,
    MIN_REFIT_MISTAKES,
    RELIABILITY_PLOT,
    calibrate,
    choose_temperature,
    drawn_inputs,
    fit_temperature,
    reliability,
    unsure_rules,
)


def synthetic(temperature: float, count: int = 20_000, seed: int = 0):
    """Logits whose labels are drawn from softmax(logits / temperature): T is the truth."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(count, 10, generator=generator) * 4
    labels = torch.multinomial((logits / temperature).softmax(dim=1), 1, generator=generator)
    return logits, labels.squeeze(1)


@pytest.mark.parametrize("true_temperature", [0.5, 1.0, 2.5])
def test_fit_recovers_a_known_temperature(true_temperature: float) -> None:
    logits, labels = synthetic(true_temperature)
    assert fit_temperature(logits, labels) == pytest.approx(true_temperature, rel=0.05)


def test_fitting_lowers_the_calibration_error_of_an_overconfident_model() -> None:
    logits, labels = synthetic(2.5)
    temperature = fit_temperature(logits, labels)
    before = reliability(logits.softmax(dim=1), labels)
    after = reliability((logits / temperature).softmax(dim=1), labels)
    assert before.mean_confidence > before.accuracy + 0.05  # overconfident before
    assert after.ece < before.ece / 3
    assert after.nll < before.nll
    assert after.accuracy == before.accuracy  # T never changes the digit


def test_logits_made_in_inference_mode_can_be_fitted() -> None:
    logits, labels = synthetic(2.5, count=2_000)
    with torch.inference_mode():
        frozen = logits.double() * 1
    assert fit_temperature(frozen, labels) == pytest.approx(2.5, rel=0.15)


def identity(logits: torch.Tensor) -> torch.Tensor:
    return logits


def test_people_read_overconfidently_get_their_own_temperature() -> None:
    logits, labels = synthetic(2.5, count=2_000)
    choice = choose_temperature(identity, logits, labels, kept=1.0, minimum=500)
    assert choice.refitted and choice.temperature == pytest.approx(2.5, rel=0.15)
    assert choice.ece_refitted < choice.ece_kept / 2
    assert choice.drawings == 2_000 and "2000 holdout drawings" in choice.reason


def test_too_few_drawings_keep_the_temperature_without_reading_them() -> None:
    def unread(logits: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the model was run on too few drawings")

    logits, labels = synthetic(2.5, count=499)
    choice = choose_temperature(unread, logits, labels, kept=1.2, minimum=500)
    assert (choice.temperature, choice.refitted, choice.ece_kept) == (1.2, False, None)
    assert "499 holdout drawings" in choice.reason and "needs 500" in choice.reason
    empty = choose_temperature(unread, logits[:0], labels[:0], kept=1.2, minimum=0)
    assert (empty.temperature, empty.refitted) == (1.2, False)


def test_a_holdout_with_too_few_mistakes_keeps_the_temperature() -> None:
    """With every answer right, fitting would drive T towards 0: certain of everything."""
    logits, _ = synthetic(1.0, count=1_000)
    labels = logits.argmax(dim=1)
    labels[: MIN_REFIT_MISTAKES - 1] = (labels[: MIN_REFIT_MISTAKES - 1] + 1) % 10
    choice = choose_temperature(identity, logits, labels, kept=1.2, minimum=500)
    assert (choice.temperature, choice.refitted) == (1.2, False)
    assert f"{MIN_REFIT_MISTAKES - 1} of them misread" in choice.reason


def test_reliability_bands_by_hand() -> None:
    probabilities = torch.tensor([
        [0.97, 0.03] + [0.0] * 8,  # right, band 0.95-0.99
        [0.96, 0.04] + [0.0] * 8,  # wrong, band 0.95-0.99
        [0.55, 0.45] + [0.0] * 8,  # right, band 0.5-0.6
        [0.35, 0.25] + [0.05] * 8,  # right, band 0.3-0.4
    ])  # fmt: skip
    labels = torch.tensor([0, 1, 0, 0])
    result = reliability(probabilities, labels, edges=(0.0, 0.3, 0.4, 0.5, 0.6, 0.95, 0.99, 1.0))
    counts = [band.count for band in result.bands]
    assert counts == [0, 1, 0, 1, 0, 2, 0]
    top = result.bands[5]
    assert (top.accuracy, top.mean_confidence) == (0.5, pytest.approx(0.965))
    expected_ece = (1 * 0.65 + 1 * 0.45 + 2 * 0.465) / 4
    assert result.ece == pytest.approx(expected_ece)
    assert result.accuracy == 0.75


def test_unsure_rules_count_what_they_flag() -> None:
    probabilities = torch.tensor([
        [0.9, 0.05, 0.05] + [0.0] * 7,  # sure and right
        [0.45, 0.4, 0.15] + [0.0] * 7,  # unsure, wrong, truth second
        [0.7, 0.1, 0.2] + [0.0] * 7,  # sure by margin only
    ])  # fmt: skip
    labels = torch.tensor([0, 1, 0])
    rules = {
        (r["confidence_below"], r["margin_below"]): r for r in unsure_rules(probabilities, labels)
    }
    rule = rules[(0.6, 0.3)]
    assert rule["unsure_share"] == pytest.approx(1 / 3)
    assert rule["unsure_accuracy"] == 0.0
    assert rule["unsure_top3_accuracy"] == 1.0
    assert rule["sure_accuracy"] == 1.0
    assert rule["mistakes_caught"] == 1.0
    assert rules[(0.8, 0.3)]["unsure_share"] == pytest.approx(2 / 3)


def test_the_model_file_carries_the_temperature(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = MnistNet().eval()
    path = export_torchscript(CalibratedNet(net, 2.0), tmp_path / "m.pt", torch.zeros(2, 1, 28, 28))
    scripted = load_torchscript(path)
    assert temperature_of(scripted) == 2.0
    inputs = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(scripted(inputs), net(inputs) / 2.0, atol=1e-6)
    predictor = MNISTPredictor(path, device="cpu")
    assert predictor.temperature == 2.0
    assert temperature_of(MnistNet()) == 1.0
    with pytest.raises(ValueError, match="positive"):
        CalibratedNet(net, 0.0)


def test_calibrate_fits_on_held_out_digits_and_re_exports_the_model(
    tmp_path: Path, mnist_dir: Path
) -> None:
    torch.manual_seed(0)
    net = MnistNet().eval()
    model_path = tmp_path / "mnist_cnn.pt"
    save_checkpoint(net, model_path)
    export_torchscript(net, model_path, torch.zeros(2, 1, 28, 28))

    report = calibrate(model_path, mnist_dir, tmp_path / "results", holdout=300, drawings=20)

    temperature = report["temperature"]
    assert temperature > 0 and temperature != 1.0
    assert temperature_of(load_torchscript(model_path)) == pytest.approx(temperature)
    written = json.loads((tmp_path / "results" / CALIBRATION_FILE).read_text())
    assert written["temperature"] == temperature
    assert written["fitted_on"] == {"held_out_mnist_training_digits": 300, "of_them_redrawn": 20}
    drawings = written["evaluations"]["test_drawings"]
    assert drawings["after"]["count"] == 20
    assert written["evaluations"]["mnist_test"]["after"]["count"] == 10_000
    assert written["unsure_rules"]
    assert (tmp_path / "results" / RELIABILITY_PLOT).stat().st_size > 0


def test_drawings_shared_out_to_worker_processes_come_back_in_order_and_repeatable(
    mnist_test, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = torch.from_numpy(mnist_test[0][:12])
    alone = drawn_inputs(images[:1])
    monkeypatch.setattr(training.calibration, "DRAWINGS_PER_SHARE", 4)

    shared = drawn_inputs(images)

    assert shared.shape == (12, 1, 28, 28)
    assert torch.equal(shared, drawn_inputs(images))
    monkeypatch.setattr(training.calibration.os, "cpu_count", lambda: 1)
    assert torch.equal(shared, drawn_inputs(images))
    assert not torch.equal(shared, drawn_inputs(images, seed=1))
    # The first share starts with the first digit and the first seed, as a single process does.
    assert torch.equal(shared[:1], alone)
