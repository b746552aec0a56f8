"""`python -m serving.archive`: the .mar holds the model, the handler package and its config."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def archive(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "serving.archive", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=PROJECT_ROOT)


def test_archive_packs_model_handler_preprocessing_and_config(
    trained_model: Path, tmp_path: Path
) -> None:
    args = ("--model-file", str(trained_model), "--export-path", str(tmp_path / "store"))
    built = archive(*args, "--version", "3.1")
    assert built.returncode == 0, built.stderr
    mar = Path(built.stdout.strip())
    assert mar == tmp_path / "store" / "mnist.mar"

    with zipfile.ZipFile(mar) as contents:
        names = set(contents.namelist())
        manifest = json.loads(contents.read("MAR-INF/MANIFEST.json"))["model"]
        config = yaml.safe_load(contents.read("model-config.yaml"))
        packed_preprocessing = contents.read("handler/preprocessing.py")
    assert {
        trained_model.name,
        "mnist_handler.py",
        "handler/__init__.py",
        "handler/preprocessing.py",
        "model-config.yaml",
    } <= names
    assert manifest["modelName"] == "mnist"
    assert manifest["modelVersion"] == "3.1"
    assert manifest["handler"] == "mnist_handler.py"
    assert manifest["serializedFile"] == trained_model.name
    assert manifest["configFile"] == "model-config.yaml"
    assert packed_preprocessing == (PROJECT_ROOT / "handler" / "preprocessing.py").read_bytes()
    assert config["batchSize"] >= 1 and config["maxBatchDelay"] <= 20
    assert not any("__pycache__" in name for name in names)

    rebuilt = archive(*args, "--model-name", "digits")
    assert rebuilt.returncode == 0, rebuilt.stderr
    with zipfile.ZipFile(tmp_path / "store" / "digits.mar") as contents:
        manifest = json.loads(contents.read("MAR-INF/MANIFEST.json"))["model"]
    assert manifest["modelVersion"].startswith("1.2") and manifest["modelName"] == "digits"


WORKER_SMOKE_TEST = """
import json, sys
from pathlib import Path
model_dir = Path(sys.argv[1])
sys.path.insert(0, str(model_dir))  # what TorchServe's worker does with the unpacked archive
import mnist_handler
from handler import preprocessing
from ts.context import Context, RequestProcessor
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
assert Path(mnist_handler.__file__).parent == model_dir, mnist_handler.__file__
assert Path(preprocessing.__file__).parent == model_dir / "handler", preprocessing.__file__
manifest = json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text())
metrics = MetricsCacheYamlImpl(sys.argv[2])
metrics.initialize_cache()
context = Context("mnist", str(model_dir), manifest, 1, None, "0.12.0", metrics=metrics)
context.request_processor = [RequestProcessor({})]
handler = mnist_handler.MNISTHandler()
handler.initialize(context)
bar = lambda row, col: 255 if 4 <= row <= 23 and 13 <= col <= 14 else 0
pixels = [[bar(row, col) for col in range(28)] for row in range(28)]
print(json.dumps(handler.handle([{"body": {"pixels": pixels}}], context)[0]))
"""


def test_the_unpacked_archive_works_on_its_own(trained_model: Path, tmp_path: Path) -> None:
    """The worker imports the handler and its preprocessing from the archive, not the repo."""
    built = archive("--model-file", str(trained_model), "--export-path", str(tmp_path))
    assert built.returncode == 0, built.stderr
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(built.stdout.strip()) as contents:
        contents.extractall(unpacked)
    metrics_yaml = PROJECT_ROOT / "handler" / "metrics.yaml"
    command = [sys.executable, "-c", WORKER_SMOKE_TEST, str(unpacked), str(metrics_yaml)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=unpacked)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["digit"] == 1 and len(answer["probabilities"]) == 10


def test_a_missing_model_says_to_train_first(tmp_path: Path) -> None:
    result = archive("--model-file", str(tmp_path / "absent.pt"), "--export-path", str(tmp_path))
    assert result.returncode == 1
    assert "make train" in result.stderr
    assert not list(tmp_path.glob("*.mar"))


def test_the_model_file_must_be_torchscript_pt(tmp_path: Path) -> None:
    state_dict = tmp_path / "weights.pth"
    state_dict.write_bytes(b"not used")
    result = archive("--model-file", str(state_dict), "--export-path", str(tmp_path))
    assert result.returncode == 1
    assert ".pt" in result.stderr
