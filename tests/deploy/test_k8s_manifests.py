"""The Kubernetes manifests in deploy/k8s, checked without a cluster: core kinds against the
Kubernetes API's schemas (kubernetes-validate, strict: an unknown field is an error), the
InferenceService against KServe's own CRD schema (vendored, deploy/k8s/schema/SOURCE), and the
wiring between them."""

from __future__ import annotations

import copy
import gzip
import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from config import PROJECT_ROOT, Settings
from serving.kserve import kserve_properties

K8S_DIR = PROJECT_ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.33.0"
ISVC_SCHEMA = K8S_DIR / "schema" / "inferenceservice-v1beta1.json.gz"


def manifests() -> list[dict[str, Any]]:
    return [
        document
        for path in sorted(K8S_DIR.glob("*.yaml"))
        for document in yaml.safe_load_all(path.read_text())
    ]


def the(kind: str, name: str) -> dict[str, Any]:
    [found] = [m for m in manifests() if m["kind"] == kind and m["metadata"]["name"] == name]
    return found


def strict(schema: Any) -> Any:
    """The schema with unknown fields refused, as `kubectl apply --validate=strict` does."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    tightened = {key: strict(value) for key, value in schema.items()}
    if (
        "properties" in tightened
        and "additionalProperties" not in tightened
        and not tightened.get("x-kubernetes-preserve-unknown-fields")
    ):
        tightened["additionalProperties"] = False
    return tightened


def validate_inference_service(document: dict[str, Any]) -> None:
    schema = strict(json.loads(gzip.decompress(ISVC_SCHEMA.read_bytes())))
    jsonschema.validate(document, schema)


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}


@pytest.mark.parametrize(
    "manifest",
    [m for m in manifests() if m["kind"] != "InferenceService"],
    ids=lambda m: f"{m['kind']}/{m['metadata']['name']}",
)
def test_core_kinds_match_the_kubernetes_schema(manifest: dict[str, Any]) -> None:
    kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def test_the_core_validator_refuses_a_misspelt_field() -> None:
    app = copy.deepcopy(the("StatefulSet", "mnist-app"))
    app["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(app, KUBERNETES_VERSION, strict=True)


def test_the_inference_service_matches_kserves_schema() -> None:
    validate_inference_service(the("InferenceService", "mnist"))
    assert "v0.20" in (K8S_DIR / "schema" / "SOURCE").read_text()


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("spec", "predictor", "model", "storageUrl"), "pvc://x"),  # misspelt
        (("spec", "predictor", "minReplicas"), "one"),  # wrong type
    ],
)
def test_kserves_schema_refuses_a_broken_inference_service(
    path: tuple[str, ...], value: Any
) -> None:
    isvc = copy.deepcopy(the("InferenceService", "mnist"))
    node = isvc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        validate_inference_service(isvc)


def test_the_inference_service_uses_kserves_torchserve_runtime_and_our_layout() -> None:
    isvc = the("InferenceService", "mnist")
    model = isvc["spec"]["predictor"]["model"]
    assert "serviceEnvelope" not in isvc["metadata"]["labels"]  # the handler reads KServe v1
    assert model["modelFormat"]["name"] == "pytorch"
    assert model["runtime"] == "kserve-torchserve"
    assert model["protocolVersion"] == "v1"
    assert model["storageUri"]
    assert model["resources"]["limits"]["memory"]  # a worker that leaks is stopped, not the node


def test_the_app_reaches_torchserve_through_the_direct_service() -> None:
    service = the("Service", "mnist-torchserve")
    inference_port = kserve_properties("/mnt/models", "mnist", "1")["inference_address"]
    assert {p["port"] for p in service["spec"]["ports"]} == {
        int(inference_port.rsplit(":")[-1]),
        7070,
    }
    assert service["spec"]["selector"] == {"serving.kserve.io/inferenceservice": "mnist"}
    [container] = the("StatefulSet", "mnist-app")["spec"]["template"]["spec"]["containers"]
    env = env_of(container)
    assert env["TS_INFERENCE_URL"] == "http://mnist-torchserve:8085"
    assert env["TS_GRPC_TARGET"] == "mnist-torchserve:7070"


def test_only_the_app_may_call_torchserves_own_api() -> None:
    policy = the("NetworkPolicy", "mnist-torchserve")["spec"]
    app_labels = the("StatefulSet", "mnist-app")["spec"]["template"]["metadata"]["labels"]
    [own_api] = [
        rule for rule in policy["ingress"] if {p["port"] for p in rule["ports"]} == {8085, 7070}
    ]
    [source] = own_api["from"]
    assert source["podSelector"]["matchLabels"].items() <= app_labels.items()
    open_ports = {
        p["port"] for rule in policy["ingress"] if "from" not in rule for p in rule["ports"]
    }
    assert open_ports.isdisjoint({8085, 7070, 8081, 7071})  # never the API or management


def test_the_app_takes_its_secrets_from_a_secret_and_runs_locked_down() -> None:
    spec = the("StatefulSet", "mnist-app")["spec"]["template"]["spec"]
    [container] = spec["containers"]
    env = env_of(container)
    for name in ("DATABASE_URL", "UI_PASSWORD"):
        assert env[name] == {
            "secretKeyRef": {"name": "mnist-app", "key": env[name]["secretKeyRef"]["key"]}
        }
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert (
        container["resources"]["requests"]["memory"] and container["resources"]["limits"]["memory"]
    )


def test_each_app_replica_keeps_its_outbox_on_its_own_volume() -> None:
    """The outbox lives in the app's data directory (the image's working directory plus the
    `data_dir` setting), so that directory must be a claim that outlives the pod."""
    app = the("StatefulSet", "mnist-app")["spec"]
    [workdir] = [
        line.split()[1]
        for line in (PROJECT_ROOT / "Containerfile").read_text().splitlines()
        if line.startswith("WORKDIR ")
    ]
    data_dir = Path(workdir) / Settings.model_fields["data_dir"].default
    [container] = app["template"]["spec"]["containers"]
    [mount] = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == data_dir]
    [claim] = [c for c in app["volumeClaimTemplates"] if c["metadata"]["name"] == mount["name"]]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert mount["name"] not in {v["name"] for v in app["template"]["spec"]["volumes"]}
    assert app["persistentVolumeClaimRetentionPolicy"]["whenScaled"] == "Retain"


def test_several_app_replicas_have_sticky_sessions() -> None:
    hpa = the("HorizontalPodAutoscaler", "mnist-app")["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "name": "mnist-app",
    }
    assert hpa["maxReplicas"] > 1
    assert the("Service", "mnist-app")["spec"]["sessionAffinity"] == "ClientIP"
    annotations = the("Ingress", "mnist-app")["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/affinity"] == "cookie"


def test_every_manifest_belongs_to_the_project() -> None:
    assert all(m["metadata"]["labels"]["app.kubernetes.io/part-of"] == "mnist" for m in manifests())
    assert {Path(p).name for p in K8S_DIR.glob("*.yaml")} == {
        "app.yaml", "inferenceservice.yaml", "torchserve-direct.yaml",
    }  # fmt: skip
