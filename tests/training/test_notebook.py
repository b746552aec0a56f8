"""The notebook runs top to bottom on a small subset, so it cannot rot."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from training.train import TrainConfig

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "mnist_classifier.ipynb"


@pytest.mark.slow
def test_notebook_executes_and_shows_its_figures(
    mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Enough images for two epochs of the default (augmented) training to clearly learn.
    monkeypatch.setenv("NOTEBOOK_TRAIN_SUBSET", "6000")
    monkeypatch.setenv("NOTEBOOK_EPOCHS", "2")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": NOTEBOOK.parent}},
    )
    client.execute()

    outputs = [output for cell in notebook.cells for output in cell.get("outputs", [])]
    assert not [output for output in outputs if output.output_type == "error"]
    text = "".join(output.get("text", "") for output in outputs)
    assert "21,840 trainable parameters" in text
    assert f"Dropout2d(p={TrainConfig().conv_dropout}," in text  # the network `make train` trains
    assert "training on 6,000 of 60,000 images" in text
    accuracy = float(text.split("test accuracy after 2 epochs: ")[1].split(" %")[0])
    assert accuracy > 80
    images = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(images) >= 5  # digits, history, probability bars, predictions, confusion matrix
    assert text.count("predicted") == 8
