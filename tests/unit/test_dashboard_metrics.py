"""The Grafana dashboard and the alert rules query only metrics the operator really exports.

A renamed gauge would otherwise leave an empty panel or an alert that can never fire, and
nothing would say so.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

import kubetune.metrics
from tests.support.promql_names import exported_names, grafana_to_promql, metric_names
from tests.support.tools import REPO, tool

pytestmark = pytest.mark.unit

CHART = REPO / "helm" / "kubetune"
DASHBOARD = CHART / "dashboards" / "kubetune.json"
RULES = CHART / "alerts" / "rules.yaml"
# What issue 10 asks the dashboard to show, by the metric that carries it.
SHOWN = {
    "job phase counts": "kubetune_finetunejob_phase",
    "job progress": "kubetune_finetunejob_progress_ratio",
    "tokens/s": "kubetune_finetunejob_tokens_per_second",
    "loss": "kubetune_finetunejob_train_loss",
    "canary weight": "kubetune_modeldeployment_canary_weight_percent",
    "analysis results": "kubetune_analysis_measurements_total",
    "rollbacks": "kubetune_rollbacks_total",
}


def _panels(panels: list[dict]) -> list[dict]:
    return [p for panel in panels for p in [panel, *_panels(panel.get("panels", []))]]


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in _panels(dashboard["panels"]) for t in p.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]
            queries.append(query["query"] if isinstance(query, dict) else query)
    return queries


def promql_of(query: str) -> str:
    """The PromQL in a dashboard query: Grafana variables filled in, query_result() unwrapped."""
    query = grafana_to_promql(query)
    if m := re.fullmatch(r"\s*query_result\((.*)\)\s*", query, re.DOTALL):
        query = m.group(1)
    if m := re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query, re.DOTALL):
        query = m.group(1)
    return query


def test_the_name_finder_tells_metrics_from_functions_labels_and_numbers() -> None:
    expr = ('sum by (kind) (rate(foo_total{kind="a",name=~"$namespace"}[$__rate_interval])) '
            '/ on (kind) group_left (x) bar offset 5m > bool 1e3 and absent(baz)')
    assert metric_names(expr) == {"foo_total", "bar", "baz"}
    assert metric_names("label_values(kubetune_x, namespace)") == {"kubetune_x"}
    assert metric_names("histogram_quantile(0.95, sum by (le) (rate(h_bucket[5m])))") == {"h_bucket"}
    assert metric_names("sum(x) without (instance)") == {"x"}


def test_exported_names_include_each_kind_of_sample() -> None:
    exported = exported_names(kubetune.metrics)
    assert {"kubetune_rollbacks_total", "kubetune_reconcile_duration_seconds_bucket",
            "kubetune_finetunejob_progress_ratio", "kubetune_operator_info"} <= exported
    assert "kubetune_rollbacks" not in exported  # a counter is only ever exposed with _total


def test_every_dashboard_query_uses_exported_metrics() -> None:
    exported = exported_names(kubetune.metrics)
    queries = dashboard_queries()
    unknown = {q: sorted(metric_names(q) - exported) for q in queries if metric_names(q) - exported}
    assert not unknown, f"dashboard queries name metrics the operator does not export: {unknown}"
    used = set().union(*(metric_names(q) for q in queries))
    missing = {what: name for what, name in SHOWN.items() if name not in used}
    assert not missing, f"the dashboard shows nothing for {missing}"


def test_every_alert_uses_exported_metrics() -> None:
    exported = exported_names(kubetune.metrics)
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    unknown = {r["alert"]: sorted(metric_names(r["expr"]) - exported) for r in rules if metric_names(r["expr"]) - exported}
    assert not unknown, f"alerts name metrics the operator does not export: {unknown}"
    assert all(metric_names(r["expr"]) for r in rules)


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Prometheus's own parser (promtool) reads every query, as recording rules."""
    rules = [{"record": f"dashboard:query_{i}", "expr": promql_of(q)} for i, q in enumerate(dashboard_queries())]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = subprocess.run([tool("promtool"), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{len(rules)} rules found" in out.stdout


def test_dashboard_is_well_formed_for_grafana() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = _panels(dashboard["panels"])
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert dashboard["uid"] and dashboard["title"]
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "namespace"} <= variables
    for p in panels:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}", p["title"]  # no data source uid of one Grafana baked in
            assert p["targets"], p["title"]
