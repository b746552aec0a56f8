"""The storage layout for KServe (`make kserve-store`), made from a model store whose default is
a promoted retrained version, and served the way the project's ServingRuntime serves it
(`python -m serving.kserve --serve --root <root>`, the image's `kserve` role), with only its
listeners moved to free ports on 127.0.0.1. `make compose-smoke` runs the image itself so."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from config import PROJECT_ROOT
from model import versions
from serving.archive import build_archive
from serving.kserve import KSERVE_ROOT
from serving.server import free_ports, read_properties, write_properties
from tests.fixtures.waiting import wait_until_ok
from training.drawings import drawings

pytestmark = pytest.mark.slow

READY_TIMEOUT_S = 240.0


PROMOTED = "2.20261207120000"


def model_store(model: Path, store: Path, promote: bool = True) -> Path:
    """`make archive`'s version 1.0 and a retrained version beside it, promoted to default
    unless `promote` is false (the same weights: the version is what tells them apart)."""
    build_archive(model, store, "mnist", "1.0")
    retrained = build_archive(model, store / "retrained", "mnist", PROMOTED)
    retrained.replace(store / versions.archive_name("mnist", PROMOTED))
    if promote:
        versions.record_default(store, "mnist", PROMOTED)
    return store


def make_store(store: Path, out: Path, root: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "serving.kserve",
        "--model-store", str(store), "--out", str(out), "--root", root,
    ]  # fmt: skip
    return subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True)


def snapshot_versions(out: Path) -> dict:
    properties = read_properties(out / "config" / "config.properties")
    return json.loads(properties["model_snapshot"])["models"]["mnist"]


def test_the_layout_is_the_one_kserve_expects(scripted_model: Path, tmp_path: Path) -> None:
    store = model_store(scripted_model, tmp_path / "model_store")
    made = make_store(store, tmp_path / "store", KSERVE_ROOT)
    assert made.returncode == 0, made.stderr
    layout = tmp_path / "store"
    assert sorted(p.relative_to(layout).as_posix() for p in layout.rglob("*.*")) == [
        "config/config.properties",
        "config/metrics.yaml",
        "model-store/mnist.mar",
    ]
    properties = read_properties(tmp_path / "store" / "config" / "config.properties")
    assert properties["inference_address"] == "http://0.0.0.0:8080"  # KServe's port
    assert properties["metrics_address"] == "http://0.0.0.0:8082"
    assert properties["grpc_inference_port"] == "7070"
    assert properties["management_address"] == "http://127.0.0.1:8081"  # inside the pod only
    assert properties["enable_envvars_config"] == "false"
    assert properties["enable_model_api"] == "false"
    assert properties["model_store"] == "/mnt/models/model-store"
    assert properties["metrics_config"] == "/mnt/models/config/metrics.yaml"
    assert "load_models" not in properties
    [(version, model)] = snapshot_versions(tmp_path / "store").items()
    assert model["marName"] == "mnist.mar" and model["defaultVersion"]
    assert model["batchSize"] >= 1 and model["minWorkers"] >= 1
    assert version == PROMOTED
    assert versions.archive_version(tmp_path / "store" / "model-store" / "mnist.mar") == PROMOTED


def test_without_a_promotion_the_layout_holds_make_archives_version(
    scripted_model: Path, tmp_path: Path
) -> None:
    store = model_store(scripted_model, tmp_path / "model_store", promote=False)
    assert make_store(store, tmp_path / "store", KSERVE_ROOT).returncode == 0
    assert list(snapshot_versions(tmp_path / "store")) == ["1.0"]
    assert versions.archive_version(tmp_path / "store" / "model-store" / "mnist.mar") == "1.0"


def test_an_empty_store_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "model_store").mkdir()
    made = make_store(tmp_path / "model_store", tmp_path / "store", KSERVE_ROOT)
    assert made.returncode == 1
    assert "no mnist.mar in" in made.stderr and "make train-and-archive" in made.stderr


@pytest.fixture
def kserve_torchserve(trained_model: Path, tmp_path: Path) -> Iterator[dict[str, str]]:
    """TorchServe started from the layout by the runtime container's own command."""
    root = tmp_path / "mnt-models"
    made = make_store(model_store(trained_model, tmp_path / "model_store"), root, str(root))
    assert made.returncode == 0, made.stderr
    config = root / "config" / "config.properties"
    inference, management, metrics, grpc_inference, grpc_management = free_ports(5)
    properties = read_properties(config)
    properties.update(
        {
            "inference_address": f"http://127.0.0.1:{inference}",
            "management_address": f"http://127.0.0.1:{management}",
            "metrics_address": f"http://127.0.0.1:{metrics}",
            "grpc_inference_address": "127.0.0.1",
            "grpc_inference_port": str(grpc_inference),
            "grpc_management_port": str(grpc_management),
        }
    )
    write_properties(config, properties, "the test, with its ports moved")
    env = {
        **os.environ,
        "TMPDIR": str(tmp_path),
        "LOG_LOCATION": str(tmp_path / "logs"),
        "METRICS_LOCATION": str(tmp_path / "logs"),
    }
    command = [sys.executable, "-m", "serving.kserve", "--serve", "--root", str(root)]
    # Not a pipe: the JVM inherits the launcher's stdout and keeps it open.
    with (tmp_path / "torchserve.out").open("w") as console:
        server = subprocess.Popen(
            command, cwd=tmp_path, env=env, stdout=console, stderr=console, start_new_session=True
        )
    urls = {
        "inference": f"http://127.0.0.1:{inference}",
        "metrics": f"http://127.0.0.1:{metrics}",
    }
    try:
        wait_until_ok(f"{urls['inference']}/ping", READY_TIMEOUT_S, tmp_path / "torchserve.out")
        yield urls
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the launcher, the JVM and its workers
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def test_torchserve_serves_the_layout_as_the_runtimes_container_runs_it(
    kserve_torchserve: dict[str, str], mnist_dir: Path
) -> None:
    samples = drawings("black_on_white", 20, data_dir=mnist_dir, seed=11)
    answers = []
    for image, _ in samples:
        response = requests.post(
            f"{kserve_torchserve['inference']}/predictions/mnist", data=image, timeout=30
        )
        assert response.status_code == 200, response.text
        answers.append(response.json())
    correct = sum(a["digit"] == label for a, (_, label) in zip(answers, samples, strict=True))
    print(f"\nKServe layout: {correct} of {len(samples)} drawings read right")
    assert correct >= 17  # the session's model is trained for one epoch only
    assert {answer["model_version"] for answer in answers} == {PROMOTED}
    # KServe's v1 protocol, on the same listener: TorchServe's own v1 route.
    instances = [{"b64": base64.b64encode(image).decode()} for image, _ in samples[:5]]
    v1 = requests.post(
        f"{kserve_torchserve['inference']}/v1/models/mnist:predict",
        json={"instances": instances},
        timeout=30,
    )
    assert v1.status_code == 200, v1.text
    assert [p["digit"] for p in v1.json()["predictions"]] == [a["digit"] for a in answers[:5]]
    scrape = requests.get(f"{kserve_torchserve['metrics']}/metrics", timeout=10).text
    assert "ts_inference_requests_total" in scrape
    assert "mnist_predictions_total" in scrape
