#!/usr/bin/env python3
"""Write prometheusrule.yaml (a Prometheus Operator PrometheusRule) from the plain rules file.

The plain file deploy/prometheus/rules/lithowatch.rules.yml is the source: promtool tests it
and docker-compose / `lithowatch up` load it. Run this after changing it; a unit test fails
while the two differ.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
RULES_FILE = HERE.parents[1] / "prometheus" / "rules" / "lithowatch.rules.yml"
OUTPUT_FILE = HERE / "prometheusrule.yaml"
HEADER = (
    "# GENERATED from deploy/prometheus/rules/lithowatch.rules.yml by generate_prometheusrule.py\n"
    "# (beside this file); a unit test checks that the groups are equal. Do not edit by hand.\n"
)


def prometheus_rule(rules: dict[str, Any]) -> dict[str, Any]:
    """Wrap the rule groups of a Prometheus rules file into a PrometheusRule object."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "lithowatch",
            # release: what kube-prometheus-stack's ruleSelector matches (see kustomization.yaml)
            "labels": {"app.kubernetes.io/name": "lithowatch", "release": "kube-prometheus-stack"},
        },
        "spec": {"groups": rules["groups"]},
    }


def render(rules_file: Path = RULES_FILE) -> str:
    rules = yaml.safe_load(rules_file.read_text())
    return HEADER + yaml.safe_dump(prometheus_rule(rules), sort_keys=False, width=110)


def main() -> int:
    OUTPUT_FILE.write_text(render())
    print(f"wrote {OUTPUT_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
