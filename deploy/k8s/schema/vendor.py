"""Refresh the vendored InferenceService schema from a KServe checkout.

    python deploy/k8s/schema/vendor.py ~/src/kserve

Takes the v1beta1 OpenAPI schema out of the CRD in a KServe checkout
(config/crd/full/serving.kserve.io_inferenceservices.yaml), drops the descriptions (most of its
size) and writes it gzipped beside this file, with the KServe version it came from in SOURCE.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
CRD = "config/crd/full/serving.kserve.io_inferenceservices.yaml"
OUT = HERE / "inferenceservice-v1beta1.json.gz"


def without_descriptions(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            key: without_descriptions(value) for key, value in node.items() if key != "description"
        }
    if isinstance(node, list):
        return [without_descriptions(value) for value in node]
    return node


def main(checkout: Path) -> None:
    crd = yaml.safe_load(git(checkout, "show", f"HEAD:{CRD}"))
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1beta1"]
    schema = without_descriptions(version["schema"]["openAPIV3Schema"])
    text = json.dumps(schema, separators=(",", ":"), sort_keys=True).encode()
    OUT.write_bytes(gzip.compress(text, mtime=0))
    described, commit = git(checkout, "describe", "--tags"), git(checkout, "rev-parse", "HEAD")
    (HERE / "SOURCE").write_text(
        f"kserve/kserve {described} (commit {commit}), {CRD}, version v1beta1,\n"
        "descriptions removed (deploy/k8s/schema/vendor.py). KServe is Apache-2.0 licensed.\n"
    )
    print(f"{OUT.name}: {OUT.stat().st_size} bytes from KServe {described}")


def git(checkout: Path, *args: str) -> str:
    """Git's answer in `checkout` (a work tree or a bare clone)."""
    command = ["git", "-C", str(checkout), *args]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
