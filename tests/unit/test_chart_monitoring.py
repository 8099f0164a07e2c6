"""The chart's monitoring objects: the dashboard ConfigMap and the PrometheusRule, on and off.

Renders with the real `helm template` (hack/tools.sh); no cluster.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.tools import REPO, tool

pytestmark = pytest.mark.unit

CHART = REPO / "helm" / "kubetune"


def render(tmp_path: Path, monitoring: dict) -> list[dict]:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"monitoring": monitoring}))
    out = subprocess.run([tool("helm"), "template", "rel", str(CHART), "--namespace", "ops", "--values", str(values)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]  # every document must be valid YAML


def dashboards(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "rel-operator-dashboard"]


def prometheus_rules(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["kind"] == "PrometheusRule"]


def test_defaults_ship_the_dashboard_but_no_prometheusrule(tmp_path: Path) -> None:
    docs = render(tmp_path, {})
    assert len(dashboards(docs)) == 1
    assert prometheus_rules(docs) == []  # the Prometheus Operator's CRD may be absent


def test_everything_off_renders_neither(tmp_path: Path) -> None:
    docs = render(tmp_path, {"dashboard": {"enabled": False}, "prometheusRule": {"enabled": False}})
    assert dashboards(docs) == [] and prometheus_rules(docs) == []
    assert any(d["kind"] == "Deployment" for d in docs)  # the rest of the chart still renders


def test_dashboard_configmap_carries_the_json_and_the_sidecar_labels(tmp_path: Path) -> None:
    docs = render(tmp_path, {"dashboard": {"enabled": True, "labels": {"grafana_dashboard": "1", "team": "ml"}}})
    (cm,) = dashboards(docs)
    assert cm["metadata"]["namespace"] == "ops"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1" and cm["metadata"]["labels"]["team"] == "ml"
    assert json.loads(cm["data"]["kubetune.json"]) == json.loads((CHART / "dashboards" / "kubetune.json").read_text())


def test_prometheusrule_wraps_the_rules_file_with_the_pending_minutes(tmp_path: Path) -> None:
    docs = render(tmp_path, {"prometheusRule": {"enabled": True, "labels": {"release": "kps"}, "pendingMinutes": 30}})
    (rule,) = prometheus_rules(docs)
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "kps"
    expected = yaml.safe_load((CHART / "alerts" / "rules.yaml").read_text())["groups"]
    for group in expected:
        for r in group["rules"]:
            if r.get("alert") == "KubetuneFineTuneJobStuckPending":
                r["for"] = "30m"
    assert rule["spec"]["groups"] == expected  # the same rules, only the `for` from values
    # What the Prometheus Operator hands Prometheus is still a valid rule file.
    path = tmp_path / "rendered-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    out = subprocess.run([tool("promtool"), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_pending_minutes_below_one_is_refused_naming_the_value(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"monitoring": {"prometheusRule": {"enabled": True, "pendingMinutes": 0}}}))
    out = subprocess.run([tool("helm"), "template", "rel", str(CHART), "--values", str(values)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "pendingMinutes" in out.stderr
