"""Write the project's alert rules as a PrometheusRule, so the cluster's Prometheus (through the
Prometheus Operator) alerts on what the local and compose ones do, from the same file.

    python deploy/k8s/prometheus_rule.py --out build/k8s/prometheus-rule.yaml   # make k8s-rules

The rules stay in deploy/prometheus/alerts.yml alone, unit-tested there (alerts_test.yml); the
PodMonitors in monitoring.yaml give the jobs the names the rules use.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

ALERTS = Path(__file__).resolve().parents[1] / "prometheus" / "alerts.yml"
HEADER = "# Made by `make k8s-rules` from deploy/prometheus/alerts.yml: edit that file, not this.\n"


def prometheus_rule(alerts: dict[str, Any]) -> dict[str, Any]:
    """alerts.yml's groups as a PrometheusRule's spec, as they are."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "mnist",
            "labels": {"app.kubernetes.io/name": "mnist", "app.kubernetes.io/part-of": "mnist"},
        },
        "spec": {"groups": alerts["groups"]},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the PrometheusRule's YAML file")
    args = parser.parse_args(argv)
    rule = prometheus_rule(yaml.safe_load(ALERTS.read_text()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(HEADER + yaml.safe_dump(rule, sort_keys=False, width=1000))
    alerts = sum(len(group["rules"]) for group in rule["spec"]["groups"])
    print(f"{args.out}: PrometheusRule mnist, {alerts} alerts from {ALERTS.name}")


if __name__ == "__main__":
    main()
