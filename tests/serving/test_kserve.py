"""The storage layout for KServe (`make kserve-store`), served the way KServe's TorchServe
runtime serves it: `torchserve --start --model-store=<root>/model-store
--ts-config=<root>/config/config.properties`, with only its listeners moved to free ports on
127.0.0.1."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from config import PROJECT_ROOT
from serving.kserve import KSERVE_ROOT
from serving.server import free_ports, read_properties, write_properties
from tests.fixtures.waiting import wait_until_ok
from training.drawings import drawings

pytestmark = pytest.mark.slow

TORCHSERVE = Path(sys.executable).parent / "torchserve"
READY_TIMEOUT_S = 240.0


def make_store(model: Path, out: Path, root: str) -> None:
    command = [
        sys.executable, "-m", "serving.kserve",
        "--model-file", str(model), "--out", str(out), "--root", root,
    ]  # fmt: skip
    subprocess.run(command, check=True, cwd=PROJECT_ROOT, capture_output=True)


def test_the_layout_is_the_one_kserve_expects(scripted_model: Path, tmp_path: Path) -> None:
    make_store(scripted_model, tmp_path / "store", KSERVE_ROOT)
    assert sorted(p.relative_to(tmp_path / "store").as_posix() for p in tmp_path.rglob("*.*")) == [
        "config/config.properties",
        "config/metrics.yaml",
        "model-store/mnist.mar",
    ]
    properties = read_properties(tmp_path / "store" / "config" / "config.properties")
    assert properties["inference_address"] == "http://0.0.0.0:8085"
    assert properties["metrics_address"] == "http://0.0.0.0:8082"
    assert properties["grpc_inference_port"] == "7070"
    assert properties["management_address"] == "http://127.0.0.1:8081"  # inside the pod only
    assert properties["enable_envvars_config"] == "true"
    assert properties["enable_model_api"] == "false"
    assert properties["model_store"] == "/mnt/models/model-store"
    assert properties["metrics_config"] == "/mnt/models/config/metrics.yaml"
    assert "load_models" not in properties
    [(name, versions)] = json.loads(properties["model_snapshot"])["models"].items()
    [(_, model)] = versions.items()
    assert name == "mnist" and model["marName"] == "mnist.mar" and model["defaultVersion"]
    assert model["batchSize"] >= 1 and model["minWorkers"] >= 1


@pytest.fixture
def kserve_torchserve(trained_model: Path, tmp_path: Path) -> Iterator[dict[str, str]]:
    """TorchServe started from the layout by KServe's own command line."""
    root = tmp_path / "mnt-models"
    make_store(trained_model, root, str(root))
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
        # What KServe's runtime sets from the InferenceService's `serviceEnvelope` label, which
        # deploy/k8s leaves out: the handler reads KServe's v1 instances itself.
        "TS_SERVICE_ENVELOPE": "",
    }
    kserve_command = [
        str(TORCHSERVE), "--start", f"--model-store={root}/model-store",
        f"--ts-config={root}/config/config.properties",
    ]  # fmt: skip
    # Not capture_output: the JVM inherits the launcher's stdout and keeps it open.
    with (tmp_path / "torchserve.out").open("w") as console:
        subprocess.run(
            kserve_command, check=True, cwd=tmp_path, env=env, stdout=console, stderr=console
        )
    urls = {
        "inference": f"http://127.0.0.1:{inference}",
        "metrics": f"http://127.0.0.1:{metrics}",
    }
    try:
        wait_until_ok(f"{urls['inference']}/ping", READY_TIMEOUT_S, tmp_path / "torchserve.out")
        yield urls
    finally:
        with (tmp_path / "torchserve.out").open("a") as console:
            subprocess.run(
                [str(TORCHSERVE), "--stop"], cwd=tmp_path, env=env, stdout=console, stderr=console
            )


def test_torchserve_serves_the_layout_with_kserves_command_line(
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
    assert {answer["model_version"] for answer in answers} == {answers[0]["model_version"]}
    # KServe's v1 protocol, as KServe's runtime forwards it to TorchServe's own v1 route.
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
