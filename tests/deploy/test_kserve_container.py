"""`make compose-smoke`, second part: the project's image run as deploy/k8s's ServingRuntime runs
it (its args and user, `make kserve-store`'s layout mounted read-only at /mnt/models), asked
from inside the container over KServe's v1 protocol, TorchServe's own API and the metrics port.

Runs only with COMPOSE_SMOKE=1, after the compose stack (with podman's host network in the
sandbox, the two would share ports).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from config import PROJECT_ROOT
from model import versions
from serving.kserve import KSERVE_ROOT
from serving.server import read_properties
from tests.deploy.test_k8s_manifests import the
from training.drawings import drawings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

LAYOUT = PROJECT_ROOT / "build" / "kserve"
CONTAINER = "mnist-kserve-smoke"
START_TIMEOUT_S = 240.0
# Runs inside the container: TorchServe's answers to the drawings on stdin, as JSON.
ASK = """
import base64, json, sys, urllib.request
port, metrics_port = sys.argv[1], sys.argv[2]
images = json.load(sys.stdin)

def post(path, body, kind):
    url = f"http://127.0.0.1:{port}{path}"
    request = urllib.request.Request(url, body, {"Content-Type": kind})
    return json.load(urllib.request.urlopen(request, timeout=60))

instances = json.dumps({"instances": [{"b64": image} for image in images]}).encode()
v1 = post("/v1/models/mnist:predict", instances, "application/json")
own = post("/predictions/mnist", base64.b64decode(images[0]), "application/octet-stream")
metrics = f"http://127.0.0.1:{metrics_port}/metrics"
scrape = urllib.request.urlopen(metrics, timeout=10).read().decode()
print(json.dumps({"v1": v1, "own": own, "scraped": "mnist_predictions_total" in scrape}))
"""
PING = "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)"


def podman(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["podman", *args], input=stdin, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def runtime_container() -> Iterator[dict]:
    if os.environ.get("COMPOSE_SMOKE") != "1":
        pytest.skip("the image carries PyTorch: `make compose-smoke` runs this")
    [container] = the("ServingRuntime", "mnist-runtime")["spec"]["containers"]
    user = str(container["securityContext"]["runAsUser"])
    podman("rm", "--force", CONTAINER)
    started = podman(
        "run", "--detach", "--name", CONTAINER, "--user", user,
        "--volume", f"{LAYOUT}:{KSERVE_ROOT}:ro", "localhost/mnist", *container["args"],
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    probe = container["readinessProbe"]["httpGet"]
    ping = f"http://127.0.0.1:{probe['port']}{probe['path']}"
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while podman("exec", CONTAINER, "python", "-c", PING, ping).returncode != 0:
            if time.monotonic() > deadline:
                pytest.fail(f"not ready:\n{podman('logs', '--tail', '40', CONTAINER).stdout}")
            time.sleep(3)
        yield container
    finally:
        podman("rm", "--force", CONTAINER)


def test_the_runtime_container_serves_the_layout_as_kserve_calls_it(
    runtime_container: dict, mnist_dir: Path
) -> None:
    properties = read_properties(LAYOUT / "config" / "config.properties")
    port = str(runtime_container["ports"][0]["containerPort"])
    metrics = properties["metrics_address"].rsplit(":")[-1]
    samples = drawings("canvas_transparent", 10, data_dir=mnist_dir, seed=21)
    images = [base64.b64encode(image).decode() for image, _ in samples]
    asked = podman(
        "exec", "-i", CONTAINER, "python", "-c", ASK, port, metrics, stdin=json.dumps(images)
    )
    assert asked.returncode == 0, asked.stderr
    answers = json.loads(asked.stdout)
    digits = [prediction["digit"] for prediction in answers["v1"]["predictions"]]
    labels = [label for _, label in samples]
    print(f"\nKServe's v1 protocol in the runtime's container: {digits} for {labels}")
    assert sum(d == label for d, label in zip(digits, labels, strict=True)) >= 9
    assert answers["own"]["digit"] == digits[0]
    assert answers["own"]["model_version"] == versions.archive_version(
        LAYOUT / "model-store" / "mnist.mar"
    )
    assert answers["scraped"]
    who = podman("exec", CONTAINER, "id", "-u").stdout.strip()
    assert who == str(runtime_container["securityContext"]["runAsUser"])
