"""The model and the handler on a CUDA GPU give the CPU's answers (`make gpu-check` serves it)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks.worker import WorkerContext
from handler.mnist_handler import MNISTHandler
from model.predictor import MNISTPredictor
from training.drawings import drawings

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none here"),
]


def test_the_predictor_on_cuda_agrees_with_the_cpu(scripted_model: Path, mnist_dir: Path) -> None:
    images = [image for image, _ in drawings("black_on_white", 64, data_dir=mnist_dir)]
    on_gpu = MNISTPredictor(scripted_model, device="cuda").predict_batch(images)
    on_cpu = MNISTPredictor(scripted_model, device="cpu").predict_batch(images)
    assert [p.digit for p in on_gpu] == [p.digit for p in on_cpu]
    for gpu, cpu in zip(on_gpu, on_cpu, strict=True):
        assert gpu.probabilities == pytest.approx(cpu.probabilities, abs=1e-4)


def test_the_handler_with_a_gpu_id_runs_on_that_gpu(scripted_model: Path, mnist_dir: Path) -> None:
    context = WorkerContext(scripted_model, gpu_id=0)
    handler = MNISTHandler()
    handler.initialize(context.context)
    assert handler.device == torch.device("cuda:0")
    samples = drawings("black_on_white", 8, data_dir=mnist_dir)
    answers = handler.handle([{"body": image} for image, _ in samples], context.for_batch(8))
    expected = MNISTPredictor(scripted_model, device="cpu").predict_batch([i for i, _ in samples])
    assert [a["digit"] for a in answers] == [p.digit for p in expected]
