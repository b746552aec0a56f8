"""Reading each digit as given and upright: the shear, what it keeps, and the averaged answer."""

from pathlib import Path

import pytest
import torch

from handler.preprocessing import MNIST_MEAN, MNIST_STD
from model.calibration import served_model, temperature_of
from model.net import MnistNet
from model.torchscript import export_torchscript, load_torchscript
from model.upright import MAX_SHEAR, MNIST_SLANT, UprightAveraged, slant, straighten


def slanted_bar(lean: float, height: int = 18) -> torch.Tensor:
    """A 2 px wide bar in a (1, 1, 28, 28) image whose x moves by `lean` per row downwards."""
    image = torch.zeros(1, 1, 28, 28)
    for row in range(5, 5 + height):
        col = round(14 + lean * (row - 14))
        image[0, 0, row, col : col + 2] = 1.0
    return image


def centre_of_mass(pixels: torch.Tensor) -> tuple[float, float]:
    ink = pixels[0, 0]
    index = torch.arange(28, dtype=ink.dtype)
    total = ink.sum()
    return float(ink.sum(1) @ index / total), float(ink.sum(0) @ index / total)


@pytest.mark.parametrize("lean", [-0.5, -0.2, 0.3])
def test_slant_measures_how_far_a_bar_leans(lean: float) -> None:
    measured, _ = slant(slanted_bar(lean))
    assert float(measured) == pytest.approx(lean, abs=0.05)


@pytest.mark.parametrize("lean", [-0.6, 0.4])
def test_straighten_brings_the_slant_to_mnists_and_keeps_the_centre_of_mass(lean: float) -> None:
    bar = slanted_bar(lean)
    upright = straighten(bar)
    assert float(slant(upright)[0]) == pytest.approx(MNIST_SLANT, abs=0.05)
    assert centre_of_mass(upright) == pytest.approx(centre_of_mass(bar), abs=0.1)
    assert float(upright.sum()) == pytest.approx(float(bar.sum()), rel=0.02)  # no ink lost


def test_a_digit_already_upright_is_left_as_it_is() -> None:
    upright = straighten(slanted_bar(0.5))
    assert torch.allclose(straighten(upright), upright, atol=0.02)


def test_the_shear_is_bounded_and_a_blank_image_stays_blank() -> None:
    flat = torch.zeros(1, 1, 28, 28)
    flat[0, 0, 14, 4:24] = 1.0
    flat[0, 0, 15, 4:6] = 1.0  # a nearly horizontal stroke: a huge measured slant
    assert float(slant(flat)[0].abs()) > MAX_SHEAR
    assert torch.isfinite(straighten(flat)).all()
    assert torch.equal(straighten(torch.zeros(2, 1, 28, 28)), torch.zeros(2, 1, 28, 28))


def test_the_answer_is_the_mean_of_both_readings_log_probabilities() -> None:
    torch.manual_seed(0)
    net = MnistNet().eval()
    bar = slanted_bar(-0.5)
    inputs = (bar - MNIST_MEAN) / MNIST_STD
    upright = (straighten(bar) - MNIST_MEAN) / MNIST_STD
    expected = (net(inputs).log_softmax(1) + net(upright).log_softmax(1)) / 2
    assert torch.allclose(UprightAveraged(net)(inputs), expected, atol=1e-6)


def test_the_exported_file_reads_both_ways_and_carries_the_temperature(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = served_model(MnistNet().eval(), 1.5).eval()
    sample = (torch.rand(4, 1, 28, 28) - MNIST_MEAN) / MNIST_STD
    scripted = load_torchscript(export_torchscript(model, tmp_path / "m.pt", sample))
    assert temperature_of(scripted) == 1.5
    with torch.inference_mode():
        assert torch.allclose(scripted(sample), model(sample), atol=1e-5)
