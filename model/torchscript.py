"""TorchScript export of the eval-mode model, checked against the eager model right away."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from model.files import written_whole

# Scripted and eager kernels may differ in the last bits of float32 arithmetic.
AGREEMENT_TOLERANCE = 1e-5


@contextmanager
def quiet_jit_deprecation() -> Iterator[None]:
    """torch 2.14 warns that TorchScript is deprecated; TorchServe still loads exactly that."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*", category=FutureWarning)
        yield


def load_torchscript(path: Path, device: torch.device | str = "cpu") -> torch.jit.ScriptModule:
    with quiet_jit_deprecation():
        return torch.jit.load(str(path), map_location=device).eval()


class ExportMismatchError(RuntimeError):
    """The exported TorchScript model does not reproduce the eager model's outputs."""


def state_dict_path(model_path: Path) -> Path:
    """The checkpoint that sits beside the TorchScript file: ``mnist_cnn.pt`` ->
    ``mnist_cnn_state_dict.pth``."""
    return model_path.with_name(f"{model_path.stem}_state_dict.pth")


def save_checkpoint(model: nn.Module, model_path: Path) -> Path:
    path = state_dict_path(model_path)
    with written_whole(path) as partial:
        torch.save(model.state_dict(), partial)
    return path


def export_torchscript(model: nn.Module, path: Path, sample: torch.Tensor) -> Path:
    """Script the model in eval mode, save it, reload it and compare outputs on ``sample``;
    ``path`` is replaced only by an export that passed."""
    model = model.eval()
    with quiet_jit_deprecation():
        scripted = torch.jit.script(model)
    with written_whole(path) as partial:
        scripted.save(str(partial))
        check_agreement(model, load_torchscript(partial), sample)
    return path


def check_agreement(
    eager: nn.Module, exported: torch.jit.ScriptModule, sample: torch.Tensor
) -> float:
    """Raise ``ExportMismatchError`` unless both models give the same logits on ``sample``."""
    device = next(eager.parameters()).device
    eager.eval()
    with torch.inference_mode():
        expected = eager(sample.to(device)).cpu()
        actual = exported.cpu()(sample.cpu())
    difference = (expected - actual).abs().max().item()
    if difference > AGREEMENT_TOLERANCE:
        raise ExportMismatchError(
            f"TorchScript logits differ from the eager model's by up to {difference:.3g}"
        )
    return difference
