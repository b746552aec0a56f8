"""The seed CNN: input and output shapes, parameter count, logits rather than probabilities."""

import pytest
import torch

from model.net import MnistNet, count_parameters


def test_parameter_count_is_the_seed_models() -> None:
    assert count_parameters(MnistNet()) == 21_840


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_maps_a_batch_of_digits_to_ten_logits(batch: int) -> None:
    model = MnistNet().eval()
    logits = model(torch.randn(batch, 1, 28, 28))
    assert logits.shape == (batch, 10)
    assert logits.dtype == torch.float32


def test_returns_logits_not_probabilities() -> None:
    torch.manual_seed(0)
    logits = MnistNet().eval()(torch.randn(16, 1, 28, 28))
    assert not torch.allclose(logits.sum(dim=1), torch.ones(16))


def test_eval_mode_is_deterministic_and_train_mode_uses_dropout() -> None:
    torch.manual_seed(0)
    model = MnistNet()
    images = torch.randn(8, 1, 28, 28)
    model.eval()
    assert torch.equal(model(images), model(images))
    model.train()
    assert not torch.equal(model(images), model(images))


def test_rejects_images_of_the_wrong_size() -> None:
    with pytest.raises(RuntimeError):
        MnistNet().eval()(torch.randn(1, 1, 32, 32))
