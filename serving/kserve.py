"""`python -m serving.kserve`: the storage layout the project's KServe runtime serves.

KServe mounts an InferenceService's `storageUri` at /mnt/models and starts the runtime's
container: the project's own image (deploy/k8s/servingruntime.yaml), whose `kserve` role is
`python -m serving.kserve --serve`, TorchServe in the foreground on that layout. KServe's stock
`kserve-torchserve` runtime is not used: its image (pytorch/torchserve-kfs) has an older
TorchServe and Python than the handler needs, and its wrapper binds 8080 and 8081 itself
(docs/deployment.md). This writes the layout:

    model-store/mnist.mar        the store's default version of the model: `make archive`'s,
                                 or the retrained version promoted since (`serving.models`)
    config/config.properties     the project's config.properties with KServe's ports and paths
    config/metrics.yaml          the metrics it names

Everything else (batching, limits, metrics, JVM options, the model API off) is the project's
own configuration; what differs, and why, is in docs/deployment.md and SECURITY.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import yaml

from config import get_settings
from model import versions
from serving.archive import MODEL_CONFIG, ArchiveError
from serving.server import (
    CONFIG_PATH,
    foreground_command,
    read_properties,
    torchserve_executable,
    write_properties,
)

KSERVE_ROOT = "/mnt/models"
METRICS_CONFIG = Path(__file__).resolve().parent.parent / "handler" / "metrics.yaml"
# The model-config.yaml keys that the model_snapshot names the same way.
SNAPSHOT_KEYS = ("minWorkers", "maxWorkers", "batchSize", "maxBatchDelay", "responseTimeout")


def kserve_properties(root: str, model_name: str, version: str) -> dict[str, str]:
    """config.properties for KServe: the project's, with KServe's listeners and paths."""
    properties = read_properties(CONFIG_PATH)
    properties.pop("load_models", None)  # the model_snapshot loads the model instead
    model_config = yaml.safe_load(MODEL_CONFIG.read_text())
    snapshot = {
        "name": "startup.cfg",
        "modelCount": 1,
        "models": {
            model_name: {
                version: {
                    "defaultVersion": True,
                    "marName": f"{model_name}.mar",
                    **{key: model_config[key] for key in SNAPSHOT_KEYS},
                }
            }
        },
    }
    properties.update(
        {
            # KServe sends its v1 protocol to the container's port, 8080, which TorchServe's
            # own inference API serves; 8082 is scraped from outside the pod's loopback, and
            # management stays inside the pod.
            "inference_address": "http://0.0.0.0:8080",
            "management_address": "http://127.0.0.1:8081",
            "metrics_address": "http://0.0.0.0:8082",
            "grpc_inference_address": "0.0.0.0",
            "grpc_inference_port": "7070",
            "grpc_management_address": "127.0.0.1",
            "grpc_management_port": "7071",
            # The key file is written inside each pod, where no client can read it: access is
            # decided by KServe's ingress and the cluster's policies (SECURITY.md).
            "disable_token_authorization": "true",
            "model_store": f"{root}/model-store",
            "allowed_urls": f"file://{root}/model-store/[^/]+[.]mar",
            "metrics_config": f"{root}/config/metrics.yaml",
            "model_snapshot": json.dumps(snapshot, separators=(",", ":")),
        }
    )
    return properties


def build_store(model_store: Path, out: Path, root: str, model_name: str) -> versions.Archive:
    """Write the layout under `out`, for KServe to mount at `root`, with the store's default
    version (KServe serves one; a new one reaches it as a new revision of the InferenceService);
    returns that archive."""
    archive = versions.default_archive(model_store, model_name)
    if archive is None:
        raise ArchiveError(f"no {model_name}.mar in {model_store}: run `make train-and-archive`")
    (out / "model-store").mkdir(parents=True, exist_ok=True)
    shutil.copy(archive.path, out / "model-store" / f"{model_name}.mar")
    config_dir = out / "config"
    config_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(METRICS_CONFIG, config_dir / "metrics.yaml")
    properties = kserve_properties(root, model_name, archive.version)
    write_properties(config_dir / "config.properties", properties, "`make kserve-store`")
    return archive


def torchserve_command(root: str) -> list[str]:
    """TorchServe in the foreground on the layout mounted at `root`: the runtime's container."""
    return [
        torchserve_executable(), "--start", "--foreground", "--ncs",
        f"--model-store={root}/model-store", f"--ts-config={root}/config/config.properties",
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-store", type=Path, help="archives and defaults (MODEL_STORE)")
    parser.add_argument("--out", type=Path, default=Path("build/kserve"), help="layout folder")
    parser.add_argument(
        "--root", default=KSERVE_ROOT, help="where KServe mounts it (paths in the config)"
    )
    parser.add_argument("--model-name", help="the model's name (MODEL_NAME)")
    parser.add_argument(
        "--serve",
        action="store_true",
        help="instead, become TorchServe on the layout at --root (the runtime's container)",
    )
    args = parser.parse_args(argv)
    if args.serve:  # reads no settings: the pod's environment is KServe's, not the project's
        command = foreground_command(torchserve_command(args.root))
        os.execv(command[0], command)
    settings = get_settings()
    model_store = args.model_store or settings.model_store
    model_name = args.model_name or settings.model_name
    try:
        archive = build_store(model_store, args.out, args.root, model_name)
    except (ArchiveError, versions.VersionError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{args.out}: {archive.path.name}, version {archive.version}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
