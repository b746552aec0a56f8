"""The Kubernetes manifests in deploy/k8s, checked without a cluster: core kinds against the
Kubernetes API's schemas (kubernetes-validate, strict: an unknown field is an error), the
InferenceService, the ServingRuntime and the PodMonitors against KServe's and the Prometheus
Operator's own CRD schemas (vendored, deploy/k8s/schema/SOURCE), and the wiring between them."""

from __future__ import annotations

import copy
import gzip
import json
import subprocess
import sys
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
# The custom kinds' schemas, vendored from the projects that define them (schema/SOURCE).
SCHEMAS = {
    "InferenceService": K8S_DIR / "schema" / "inferenceservice-v1beta1.json.gz",
    "ServingRuntime": K8S_DIR / "schema" / "servingruntime-v1alpha1.json.gz",
    "PodMonitor": K8S_DIR / "schema" / "podmonitor-v1.json.gz",
    "PrometheusRule": K8S_DIR / "schema" / "prometheusrule-v1.json.gz",
}
ENTRYPOINT = PROJECT_ROOT / "deploy" / "containers" / "entrypoint.sh"
ALERTS = PROJECT_ROOT / "deploy" / "prometheus" / "alerts.yml"


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


def validate_custom(document: dict[str, Any]) -> None:
    """A custom resource against its kind's CRD schema, unknown fields refused."""
    schema = strict(json.loads(gzip.decompress(SCHEMAS[document["kind"]].read_bytes())))
    # Not jsonschema.validate, which first checks the schema's patterns as Python regular
    # expressions: they are Go's, and Python refuses some (PrometheusRule's "^(?i)...").
    jsonschema.validators.validator_for(schema)(schema).validate(document)


def layout_port(name: str) -> int:
    """A listener's port in `make kserve-store`'s config.properties."""
    properties = kserve_properties("/mnt/models", "mnist", "1")
    return int(properties[name].rsplit(":")[-1])


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}


@pytest.mark.parametrize(
    "manifest",
    [m for m in manifests() if m["kind"] not in SCHEMAS],
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
    validate_custom(the("InferenceService", "mnist"))
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
        validate_custom(isvc)


@pytest.mark.parametrize(
    ("kind", "name", "misspelt"),
    [
        ("ServingRuntime", "mnist-runtime", ("spec", "containers", 0, "imagePullPolcy")),
        ("PodMonitor", "mnist-app", ("spec", "podMetricsEndpoints", 0, "intervall")),
        ("PodMonitor", "mnist-torchserve", ("spec", "podMetricsEndpoints", 0, "intervall")),
    ],
)
def test_the_runtime_and_monitors_match_their_schemas_which_refuse_a_misspelt_field(
    kind: str, name: str, misspelt: tuple[str | int, ...]
) -> None:
    document = the(kind, name)
    validate_custom(document)
    broken = copy.deepcopy(document)
    node = broken
    for key in misspelt[:-1]:
        node = node[key]
    node[misspelt[-1]] = "x"
    with pytest.raises(jsonschema.ValidationError):
        validate_custom(broken)


def test_prometheus_scrapes_the_app_with_its_metrics_token_at_an_address_it_allows() -> None:
    """The Host Prometheus sends is the pod's IP and the scraped port; the app allows it."""
    [endpoint] = the("PodMonitor", "mnist-app")["spec"]["podMetricsEndpoints"]
    app = the("StatefulSet", "mnist-app")["spec"]["template"]
    [container] = app["spec"]["containers"]
    [port] = [p for p in container["ports"] if p["name"] == endpoint["port"]]
    names = [item["name"] for item in container["env"]]
    env = env_of(container)
    assert env["POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert names.index("POD_IP") < names.index("UI_ALLOWED_HOSTS")  # $(POD_IP) is expanded
    allowed = env["UI_ALLOWED_HOSTS"].split(",")
    assert f"$(POD_IP):{port['containerPort']}" in allowed
    assert the("Ingress", "mnist-app")["spec"]["rules"][0]["host"] in allowed
    assert endpoint["path"] == "/metrics"
    assert endpoint["authorization"]["type"] == "Bearer" and "basicAuth" not in endpoint
    assert endpoint["authorization"]["credentials"] == env["METRICS_TOKEN"]["secretKeyRef"]


def test_prometheus_scrapes_torchserves_metrics_port_under_the_alerts_job_names() -> None:
    monitor = the("PodMonitor", "mnist-torchserve")["spec"]
    [endpoint] = monitor["podMetricsEndpoints"]
    metrics_port = kserve_properties("/mnt/models", "mnist", "1")["metrics_address"].split(":")[-1]
    [address] = [r for r in endpoint["relabelings"] if r.get("targetLabel") == "__address__"]
    assert address["replacement"] == f"$1:{metrics_port}"
    policy = the("NetworkPolicy", "mnist-torchserve")["spec"]
    assert monitor["selector"] == policy["podSelector"]
    assert int(metrics_port) in {
        p["port"] for rule in policy["ingress"] if "from" not in rule for p in rule["ports"]
    }
    [job] = [r for r in endpoint["relabelings"] if r.get("targetLabel") == "job"]
    app_job = the("PodMonitor", "mnist-app")["metadata"]["labels"]["app.kubernetes.io/name"]
    assert the("PodMonitor", "mnist-app")["spec"]["jobLabel"] == "app.kubernetes.io/name"
    alerts = ALERTS.read_text()
    assert f'job="{job["replacement"]}"' in alerts and f'job="{app_job}"' in alerts


def test_the_inference_service_runs_on_the_projects_image_and_layout() -> None:
    """Not KServe's stock kserve-torchserve runtime, whose image cannot run this handler."""
    isvc = the("InferenceService", "mnist")
    model = isvc["spec"]["predictor"]["model"]
    runtime = the("ServingRuntime", model["runtime"])["spec"]
    assert {"name": model["modelFormat"]["name"], "version": "1", "autoSelect": False} in runtime[
        "supportedModelFormats"
    ]
    assert model["protocolVersion"] in runtime["protocolVersions"]
    assert model["storageUri"]
    assert model["resources"]["limits"]["memory"]  # a worker that leaks is stopped, not the node
    [container] = runtime["containers"]
    [app] = the("StatefulSet", "mnist-app")["spec"]["template"]["spec"]["containers"]
    assert container["image"] == app["image"]
    [role] = container["args"]
    assert f"    {role})\n        exec python -m serving.kserve --serve" in ENTRYPOINT.read_text()
    # KServe's Service sends traffic to the first port: TorchServe's inference listener.
    assert container["ports"][0]["containerPort"] == layout_port("inference_address")
    assert container["readinessProbe"]["httpGet"]["port"] == layout_port("inference_address")
    assert container["securityContext"]["runAsNonRoot"] is True


def test_the_layouts_listeners_each_have_a_port_of_their_own() -> None:
    properties = kserve_properties("/mnt/models", "mnist", "1")
    addresses = ("inference_address", "management_address", "metrics_address")
    ports = [layout_port(name) for name in addresses]
    ports += [int(properties["grpc_inference_port"]), int(properties["grpc_management_port"])]
    assert len(set(ports)) == len(ports)


def test_the_app_reaches_torchserve_through_the_direct_service() -> None:
    service = the("Service", "mnist-torchserve")
    inference, metrics = layout_port("inference_address"), layout_port("metrics_address")
    grpc = int(kserve_properties("/mnt/models", "mnist", "1")["grpc_inference_port"])
    assert {p["port"] for p in service["spec"]["ports"]} == {inference, grpc, metrics}
    assert service["spec"]["selector"] == {"serving.kserve.io/inferenceservice": "mnist"}
    [container] = the("StatefulSet", "mnist-app")["spec"]["template"]["spec"]["containers"]
    env = env_of(container)
    assert env["TS_INFERENCE_URL"] == f"http://mnist-torchserve:{inference}"
    assert env["TS_METRICS_URL"] == f"http://mnist-torchserve:{metrics}"
    assert env["TS_GRPC_TARGET"] == f"mnist-torchserve:{grpc}"


def test_only_the_app_may_call_torchserves_grpc_api_and_no_one_its_management() -> None:
    policy = the("NetworkPolicy", "mnist-torchserve")["spec"]
    app_labels = the("StatefulSet", "mnist-app")["spec"]["template"]["metadata"]["labels"]
    [grpc_api] = [rule for rule in policy["ingress"] if "from" in rule]
    assert {p["port"] for p in grpc_api["ports"]} == {7070}
    [source] = grpc_api["from"]
    assert source["podSelector"]["matchLabels"].items() <= app_labels.items()
    open_ports = {
        p["port"] for rule in policy["ingress"] if "from" not in rule for p in rule["ports"]
    }
    assert open_ports == {layout_port("inference_address"), layout_port("metrics_address")}
    assert layout_port("management_address") not in open_ports | {7070}


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
    assert spec["enableServiceLinks"] is False  # a Service named postgres sets POSTGRES_PORT
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
        "app.yaml", "inferenceservice.yaml", "monitoring.yaml", "servingruntime.yaml",
        "torchserve-direct.yaml",
    }  # fmt: skip


def test_make_k8s_rules_writes_the_alert_rules_as_a_prometheus_rule(tmp_path: Path) -> None:
    out = tmp_path / "prometheus-rule.yaml"
    command = [sys.executable, str(K8S_DIR / "prometheus_rule.py"), "--out", str(out)]
    subprocess.run(command, cwd=PROJECT_ROOT, check=True, capture_output=True)
    rule = yaml.safe_load(out.read_text())
    validate_custom(rule)
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]
    broken = copy.deepcopy(rule)
    broken["spec"]["groups"][0]["rules"][0]["fore"] = "1m"
    with pytest.raises(jsonschema.ValidationError):
        validate_custom(broken)
