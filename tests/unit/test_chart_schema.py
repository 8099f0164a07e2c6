"""helm/kubetune/values.schema.json: every value documented, typos and wrong types refused by Helm itself.

Helm validates the merged values against the chart's schema on `helm install`, `upgrade`,
`template` and `lint`; these tests run the real `helm` binary (hack/tools.sh), no cluster.
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
SCHEMA = CHART / "values.schema.json"


def helm(*args: str, values: dict | None = None, tmp_path: Path | None = None) -> subprocess.CompletedProcess[str]:
    extra: list[str] = []
    if values is not None:
        assert tmp_path is not None
        f = tmp_path / "values.yaml"
        f.write_text(yaml.safe_dump(values))
        extra = ["--values", str(f)]
    return subprocess.run([tool("helm"), *args, str(CHART), *extra], capture_output=True, text=True, timeout=120)


def _resolve(schema: dict, node: dict) -> dict:
    while "$ref" in node:
        node = schema["definitions"][node["$ref"].removeprefix("#/definitions/")]
    return node


def _undocumented(schema: dict, node: dict, value: object, path: str) -> list[str]:
    """Paths in `value` the schema gives no type for (each level: a named property or a typed map)."""
    node = _resolve(schema, node)
    missing = [] if ("type" in node or "oneOf" in node) else [path or "/"]
    if isinstance(value, dict):
        for key, child in value.items():
            props = node.get("properties", {})
            if key in props:
                sub = props[key]
            elif isinstance(node.get("additionalProperties"), dict):
                sub = node["additionalProperties"]
            else:
                missing.append(f"{path}/{key}")
                continue
            missing += _undocumented(schema, sub, child, f"{path}/{key}")
    return missing


def test_every_value_has_a_typed_schema_entry():
    schema = json.loads(SCHEMA.read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert _undocumented(schema, schema, values, "") == []
    # Top-level keys the chart reads by name: a misspelt one would be ignored without this.
    assert schema["additionalProperties"] is False


@pytest.mark.parametrize("scope", [[], ["--set", "watchAllNamespaces=false", "--set", "watchNamespaces={team-a,team-b}"]],
                         ids=["cluster-wide", "namespace-scoped"])
def test_chart_lints_clean(scope):
    res = helm("lint", "--strict", *scope)
    assert res.returncode == 0, res.stdout + res.stderr


def test_clusters_without_validating_admission_policy_v1_are_refused():
    res = helm("template", "kt", "--kube-version", "1.29.0")
    assert res.returncode != 0 and "requires kubeVersion: >=1.30.0-0" in res.stderr
    assert helm("template", "kt", "--kube-version", "1.30.0").returncode == 0


def test_documented_examples_are_accepted(tmp_path):
    """Values the comments in values.yaml and docs/install.md show must pass the schema."""
    values = {
        "image": {"repository": "registry.corp/kubetune/operator", "tag": "0.1.0", "pullPolicy": "Always"},
        "watchAllNamespaces": False, "watchNamespaces": ["team-a", "team-b"],
        "defaults": {"storageUri": "s3://platform/runs", "storageEndpoint": "https://minio.corp:9000",
                     "storageRegion": "eu-west-1", "storageCredentialsSecret": "kubetune-s3",
                     "trainerImage": "registry.corp/kubetune/trainer:0.1.0"},
        "workers": 8, "resyncSeconds": 30, "serving": {"prometheusAddress": "http://prometheus.monitoring:9090",
                                                        "rolloutTickSeconds": 2.5},
        "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"cpu": 1, "memory": "1Gi"}},
        "metrics": {"port": 9100}, "health": {"port": 8081},
        "nodeSelector": {"node-role.kubernetes.io/control": ""},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}],
        "admissionPolicies": {"enabled": True, "validationActions": ["Warn", "Audit"],
                              "namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "Exists"}]},
                              "extraStatusWriters": ["system:serviceaccount:ops:status-fixer"]},
        "guardrails": {"allowedTrainerImages": ["ghcr.io/kubetune/trainer:*"], "allowedSecrets": ["kubetune-*"]},
        "monitoring": {"dashboard": {"enabled": True, "labels": {"grafana_dashboard": "1"}},
                       "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"},
                                          "pendingMinutes": 15}},
    }
    res = helm("template", "kt", values=values, tmp_path=tmp_path)
    assert res.returncode == 0, res.stderr


# (values, the field Helm must name, what it must say about it)
REFUSED = [
    ({"workerz": 4}, "at ''", "additional properties 'workerz' not allowed"),
    ({"workers": "many"}, "at '/workers'", "got string, want integer"),
    ({"workers": 0}, "at '/workers'", "minimum"),
    ({"watchAllNamespaces": "false"}, "at '/watchAllNamespaces'", "got string, want boolean"),
    ({"watchNamespaces": ["Team_A"]}, "at '/watchNamespaces/0'", "does not match pattern"),
    ({"image": {"repository": "r", "pullpolicy": "Always"}}, "at '/image'", "'pullpolicy' not allowed"),
    ({"image": {"repository": "r", "pullPolicy": "Sometimes"}}, "at '/image/pullPolicy'", "must be one of"),
    ({"defaults": {"storageURI": "s3://b/p"}}, "at '/defaults'", "'storageURI' not allowed"),
    ({"defaults": {"storageUri": "/data/runs"}}, "at '/defaults/storageUri'", "does not match pattern"),
    ({"metrics": {"port": 70000}}, "at '/metrics/port'", "maximum"),
    ({"health": {"port": "8080"}}, "at '/health/port'", "got string, want integer"),
    ({"resources": {"request": {"cpu": "1"}}}, "at '/resources'", "'request' not allowed"),
    ({"resources": {"limits": {"memory": "lots"}}}, "at '/resources/limits/memory'", "does not match pattern"),
    ({"tolerations": [{"key": "k", "operater": "Exists"}]}, "at '/tolerations/0'", "'operater' not allowed"),
    ({"admissionPolicies": {"validationActions": ["Denied"]}}, "at '/admissionPolicies/validationActions/0'",
     "must be one of"),
    ({"admissionPolicies": {"validationActions": ["Deny", "Warn"]}}, "at '/admissionPolicies/validationActions'",
     "'not' failed"),
    ({"admissionPolicies": {"validationActions": []}}, "at '/admissionPolicies/validationActions'", "minItems"),
    ({"guardrails": {"allowedImages": ["x"]}}, "at '/guardrails'", "'allowedImages' not allowed"),
    ({"serving": {"rolloutTickSeconds": 0}}, "at '/serving/rolloutTickSeconds'", "exclusiveMinimum"),
    ({"monitoring": {"prometheusRule": {"pendingMinutes": 0}}}, "at '/monitoring/prometheusRule/pendingMinutes'",
     "minimum"),
    ({"monitoring": {"dashbaord": {"enabled": True}}}, "at '/monitoring'", "'dashbaord' not allowed"),
]


@pytest.mark.parametrize("command", ["template", "lint"])
@pytest.mark.parametrize("values,field,says", REFUSED, ids=[f"{f}:{s}" for _, f, s in REFUSED])
def test_bad_values_are_refused_with_the_field_named(tmp_path, command, values, field, says):
    res = helm(command, *(["kt"] if command == "template" else []), values=values, tmp_path=tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode != 0, f"helm {command} accepted {values}:\n{out[-2000:]}"
    assert "values don't meet the specifications of the schema" in out, out
    assert field in out and says in out, out
