"""Refresh a vendored custom-resource schema from a checkout of the project that defines it.

    python deploy/k8s/schema/vendor.py inferenceservice ~/src/kserve
    python deploy/k8s/schema/vendor.py servingruntime ~/src/kserve
    python deploy/k8s/schema/vendor.py podmonitor ~/src/prometheus-operator
    python deploy/k8s/schema/vendor.py prometheusrule ~/src/prometheus-operator

Takes one version's OpenAPI schema out of the CRD in the checkout (a work tree or a bare clone),
drops the descriptions (most of its size) and writes it gzipped beside this file, with the
version it came from in that CRD's paragraph of SOURCE.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Crd:
    repository: str
    path: str
    version: str
    out: str
    licence: str


CRDS = {
    "inferenceservice": Crd(
        "kserve/kserve",
        "config/crd/full/serving.kserve.io_inferenceservices.yaml",
        "v1beta1",
        "inferenceservice-v1beta1.json.gz",
        "KServe is Apache-2.0 licensed.",
    ),
    "servingruntime": Crd(
        "kserve/kserve",
        "config/crd/full/serving.kserve.io_servingruntimes.yaml",
        "v1alpha1",
        "servingruntime-v1alpha1.json.gz",
        "KServe is Apache-2.0 licensed.",
    ),
    "podmonitor": Crd(
        "prometheus-operator/prometheus-operator",
        "example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml",
        "v1",
        "podmonitor-v1.json.gz",
        "The Prometheus Operator is Apache-2.0 licensed.",
    ),
    "prometheusrule": Crd(
        "prometheus-operator/prometheus-operator",
        "example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml",
        "v1",
        "prometheusrule-v1.json.gz",
        "The Prometheus Operator is Apache-2.0 licensed.",
    ),
}


def without_descriptions(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            key: without_descriptions(value) for key, value in node.items() if key != "description"
        }
    if isinstance(node, list):
        return [without_descriptions(value) for value in node]
    return node


def main(name: str, checkout: Path) -> None:
    crd = CRDS[name]
    definition = yaml.safe_load(git(checkout, "show", f"HEAD:{crd.path}"))
    [version] = [v for v in definition["spec"]["versions"] if v["name"] == crd.version]
    schema = without_descriptions(version["schema"]["openAPIV3Schema"])
    text = json.dumps(schema, separators=(",", ":"), sort_keys=True).encode()
    out = HERE / crd.out
    out.write_bytes(gzip.compress(text, mtime=0))
    described, commit = (
        git(checkout, "describe", "--tags", "--match", "v*"),
        git(checkout, "rev-parse", "HEAD"),
    )
    source = HERE / "SOURCE"
    paragraphs = [p for p in source.read_text().split("\n\n") if p.strip()]
    kept = [p for p in paragraphs if f", {crd.path}, " not in p]
    kept.append(
        f"{crd.repository} {described} (commit {commit}), {crd.path}, version {crd.version},\n"
        f"descriptions removed (deploy/k8s/schema/vendor.py). {crd.licence}"
    )
    source.write_text("\n\n".join(p.strip() for p in sorted(kept)) + "\n")
    print(f"{out.name}: {out.stat().st_size} bytes from {crd.repository} {described}")


def git(checkout: Path, *args: str) -> str:
    """Git's answer in `checkout` (a work tree or a bare clone)."""
    command = ["git", "-C", str(checkout), *args]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
