"""Fixtures shared by every part of the suite: MNIST on disk and a quickly trained model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from serving.settings import get_settings
from tests.fixtures.serving import torchserve  # noqa: F401

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--screenshots",
        metavar="DIR",
        type=Path,
        help="keep the browser test's screenshots in DIR (`--screenshots results` refreshes "
        "the README's); by default they go to a temporary folder",
    )


def require_or_skip(variable: str, reason: str) -> None:
    """Skip with `reason`, or fail when CI set `variable`=1 to demand the service."""
    if os.environ.get(variable) == "1":
        pytest.fail(f"{reason} ({variable}=1 makes this a failure)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """MNIST in torchvision's raw layout, fetched once by `python -m training.data`."""
    data_dir = get_settings().data_dir
    subprocess.run([sys.executable, "-m", "training.data", "--data-dir", str(data_dir)], check=True)
    return data_dir


@pytest.fixture(scope="session")
def trained_model(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TorchScript model trained for one epoch through the real CLI (about 98 % accurate)."""
    out = tmp_path_factory.mktemp("trained")
    model_path = out / "mnist_cnn.pt"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "training",
            "--mode",
            "train",
            "--epochs",
            "1",
            "--data-dir",
            str(mnist_dir),
            "--model-path",
            str(model_path),
            "--results-dir",
            str(out / "results"),
            "--no-cuda",
        ],
        check=True,
        cwd=PROJECT_ROOT,
    )
    assert model_path.is_file()
    return model_path
