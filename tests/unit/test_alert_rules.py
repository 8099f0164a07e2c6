"""The chart's alert rules: valid for Prometheus, and each alert unit-tested firing and not firing.

`promtool test rules` evaluates helm/kubetune/alerts/rules.yaml with Prometheus's own engine
over the input series of tests/unit/alerts/rules_test.yaml; no Prometheus server is needed.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.tools import REPO, tool

pytestmark = pytest.mark.unit

RULES = REPO / "helm" / "kubetune" / "alerts" / "rules.yaml"
RULE_TESTS = Path(__file__).parent / "alerts" / "rules_test.yaml"
ALERTS = {"KubetuneFineTuneJobStuckPending", "KubetuneFineTuneJobFailed", "KubetuneCanaryRolledBack", "KubetuneOperatorDown"}


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("promtool"), *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def alert_rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r]


def test_rules_file_passes_promtool_check() -> None:
    out = promtool("check", "rules", str(RULES))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in out.stdout


def test_the_alerts_the_issue_asks_for_exist_with_a_severity_and_summary() -> None:
    rules = alert_rules()
    assert {r["alert"] for r in rules} == ALERTS
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


def test_stuck_pending_waits_fifteen_minutes_by_default() -> None:
    """The chart's monitoring.prometheusRule.pendingMinutes default; the chart test checks the override."""
    stuck = next(r for r in alert_rules() if r["alert"] == "KubetuneFineTuneJobStuckPending")
    assert stuck["for"] == "15m"


def test_promtool_unit_tests_pass() -> None:
    out = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_every_alert_is_tested_both_firing_and_not_firing() -> None:
    cases = [c for group in yaml.safe_load(RULE_TESTS.read_text())["tests"] for c in group.get("alert_rule_test", [])]
    firing = {c["alertname"] for c in cases if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    assert firing == ALERTS, f"never tested firing: {ALERTS - firing}"
    assert quiet == ALERTS, f"never tested staying quiet: {ALERTS - quiet}"


def test_promtool_unit_tests_catch_a_broken_rule(tmp_path: Path) -> None:
    """The unit tests are not vacuous: the same tests over a rule that waits an hour fail."""
    broken = RULES.read_text().replace("for: 15m", "for: 60m")
    assert broken != RULES.read_text()
    (tmp_path / "rules.yaml").write_text(broken)
    tests = yaml.safe_load(RULE_TESTS.read_text())
    tests["rule_files"] = ["rules.yaml"]
    (tmp_path / "rules_test.yaml").write_text(yaml.safe_dump(tests))
    out = promtool("test", "rules", "rules_test.yaml", cwd=tmp_path)
    assert out.returncode != 0
    assert "KubetuneFineTuneJobStuckPending" in out.stdout + out.stderr
