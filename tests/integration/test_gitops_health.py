"""GitOps health of kubetune's resources, read by the engines Argo CD and Flux themselves run.

The objects are the ones the e2e tests saw (hack/capture-gitops-testdata.py); the engines are
gopher-lua (Argo CD's Lua VM) and kstatus from sigs.k8s.io/cli-utils (Flux), built from Go
modules by hack/gitops-health.sh. Marked integration rather than unit: no cluster, but real
external engines built by a toolchain, which the unit tier does without.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CUSTOMIZATIONS = REPO / "gitops" / "argocd" / "resource_customizations" / "kubetune.io"
KINDS = ("FineTuneJob", "ModelDeployment")

# What Flux (kstatus) should say for each captured state, as a user reads it: InProgress while
# the operator works or waits for something that comes by itself, Failed while someone has to
# act, Current once settled (a user-suspended job included: nothing more will happen by itself).
KSTATUS = {
    "FineTuneJob": {
        "no-status": "InProgress",
        "pending-pods-starting": "InProgress",
        "pending-pods-starting-generation-ahead": "InProgress",
        "pending-pods-starting-spec-change-ignored": "InProgress",  # observedGeneration lags: not acted on
        "pending-unschedulable": "Failed",
        "pending-image-pull-back-off": "Failed",
        "pending-quota-exceeded": "Failed",
        "queued": "InProgress",
        "validating": "InProgress",
        "validating-generation-ahead": "InProgress",
        "validating-spec-change-ignored": "InProgress",
        "running": "InProgress",
        "suspended": "Current",
        "suspended-generation-ahead": "InProgress",
        "suspended-spec-change-ignored": "InProgress",
        "succeeded": "Current",
        "failed-backoff-limit-exceeded": "Failed",
        "failed-invalid-spec": "Failed",
    },
    "ModelDeployment": {
        "no-status": "InProgress",
        "progressing-starting": "InProgress",
        "progressing-canary": "InProgress",
        "progressing-fine-tune-job-not-found": "InProgress",
        "paused-analysis-error": "InProgress",  # Reconciling=True while held: a Flux wait waits for promote/abort
        "healthy-serving": "Current",
        "healthy-serving-generation-ahead": "InProgress",
        "rolled-back-analysis-failed": "Failed",
        "degraded-evaluation-regressed": "Failed",
    },
}
# Where kstatus (cli-utils v0.37.2) says something else, and why (docs/gitops.md, "Known gaps").
# Each must still differ from the expectation: once fixed, this test fails until the entry goes.
KSTATUS_GAPS = {
    # No status at all: kstatus checks observedGeneration only when present, and an object with no
    # conditions is "Resource is current". True of every custom resource before its controller writes.
    ("FineTuneJob", "no-status"): "Current",
    ("ModelDeployment", "no-status"): "Current",
}
# Where the two tools must agree (docs/gitops.md): Argo CD health -> the kstatus statuses it allows.
AGREE = {"Healthy": {"Current"}, "Suspended": {"Current", "InProgress"}, "Progressing": {"InProgress"},
         "Degraded": {"Failed", "InProgress"}}


@pytest.fixture(scope="module")
def checker() -> str:
    """hack/test.sh exports it; otherwise build (or find) it the same way."""
    path = os.environ.get("KUBETUNE_GITOPS_HEALTH")
    if not path:
        out = subprocess.run(["bash", str(REPO / "hack" / "gitops-health.sh")], check=True, capture_output=True,
                             text=True)
        path = out.stdout.strip()
    if not os.access(path, os.X_OK):
        raise pytest.UsageError(f"gitops-health checker {path} is not executable: run `bash hack/gitops-health.sh`")
    return path


def run(checker: str, *args: str, ok: tuple[int, ...] = (0,)) -> list[dict]:
    proc = subprocess.run([checker, *map(str, args)], capture_output=True, text=True, timeout=60)
    assert proc.returncode in ok, f"{checker} {args}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return [json.loads(line) for line in proc.stdout.splitlines()]


def captured(kind: str) -> list[Path]:
    return sorted((CUSTOMIZATIONS / kind / "testdata").glob("*.yaml"))


@pytest.mark.parametrize("kind", KINDS)
def test_every_argocd_health_test_case_passes_under_gopher_lua(checker: str, kind: str):
    cases = yaml.safe_load((CUSTOMIZATIONS / kind / "health_test.yaml").read_text())["tests"]
    results = run(checker, "argocd", CUSTOMIZATIONS / kind / "health_test.yaml", ok=(0, 1))
    assert len(results) == len(cases)
    failing = [r for r in results if not r["pass"]]
    assert not failing, json.dumps(failing, indent=1)


@pytest.mark.parametrize("kind", KINDS)
def test_every_captured_state_is_an_argocd_case_and_in_the_kstatus_table(kind: str):
    files = {p.name for p in captured(kind)}
    assert files, f"no captured test data for {kind}: run hack/capture-gitops-testdata.py"
    cases = {c["inputPath"].removeprefix("testdata/")
             for c in yaml.safe_load((CUSTOMIZATIONS / kind / "health_test.yaml").read_text())["tests"]}
    assert files == cases
    assert {f.removesuffix(".yaml") for f in files} == set(KSTATUS[kind])


@pytest.mark.parametrize("kind", KINDS)
def test_kstatus_reads_each_captured_state_as_a_user_expects(checker: str, kind: str):
    results = run(checker, "kstatus", *captured(kind))
    got = {Path(r["path"]).stem: r["status"] for r in results}
    gaps = {name: actual for (k, name), actual in KSTATUS_GAPS.items() if k == kind}
    assert all(KSTATUS[kind][name] != actual for name, actual in gaps.items())
    assert got == {**KSTATUS[kind], **gaps}, json.dumps(results, indent=1)


@pytest.mark.parametrize("kind", KINDS)
def test_argocd_and_flux_agree(checker: str, kind: str):
    health = {Path(r["inputPath"]).stem: r["actual"]["status"]
              for r in run(checker, "argocd", CUSTOMIZATIONS / kind / "health_test.yaml")}
    kstatus = {Path(r["path"]).stem: r["status"] for r in run(checker, "kstatus", *captured(kind))}
    assert set(health) == set(kstatus)
    disagree = {name: (health[name], kstatus[name]) for name in health
                if kstatus[name] not in AGREE[health[name]] and (kind, name) not in KSTATUS_GAPS}
    assert not disagree
    for path in captured(kind):  # a failed job or a rolled-back deployment is Degraded and Failed in both
        if (yaml.safe_load(path.read_text()).get("status") or {}).get("phase") in ("Failed", "RolledBack"):
            assert (health[path.stem], kstatus[path.stem]) == ("Degraded", "Failed"), path.name


def test_a_queued_job_is_progressing_and_a_suspended_one_suspended(checker: str):
    health = {Path(r["inputPath"]).stem: r["actual"]["status"]
              for r in run(checker, "argocd", CUSTOMIZATIONS / "FineTuneJob" / "health_test.yaml")}
    assert (health["queued"], health["suspended"]) == ("Progressing", "Suspended")


def test_the_runner_reports_a_wrong_expectation_and_an_invalid_status(checker: str, tmp_path: Path):
    """The argocd runner fails a case whose result differs, and maps an unknown status to Unknown as Argo CD does."""
    (tmp_path / "testdata").mkdir()
    (tmp_path / "testdata" / "x.yaml").write_text("apiVersion: kubetune.io/v1alpha1\nkind: FineTuneJob\n"
                                                  "metadata: {name: x, generation: 1}\nstatus: {phase: Succeeded}\n")
    (tmp_path / "health.lua").write_text('hs = {}\nhs.status = obj.status.phase\nhs.message = "m"\nreturn hs\n')
    (tmp_path / "health_test.yaml").write_text(
        "tests:\n- healthStatus: {status: Healthy, message: m}\n  inputPath: testdata/x.yaml\n")
    [result] = run(checker, "argocd", tmp_path / "health_test.yaml", ok=(1,))
    assert result["actual"] == {"status": "Unknown", "message": "Lua returned an invalid health status"}
    assert result["pass"] is False


@pytest.mark.parametrize("kind", KINDS)
def test_the_argocd_cm_snippet_in_the_docs_is_the_health_check(kind: str):
    doc = (REPO / "docs" / "gitops.md").read_text()
    match = re.search(rf"resource\.customizations\.health\.kubetune\.io_{kind}: \|\n((?:    .*\n|\n)+)", doc)
    assert match, f"docs/gitops.md has no argocd-cm entry for {kind}"
    snippet = "".join(line[4:] + "\n" for line in match.group(1).rstrip("\n").split("\n"))
    assert snippet == (CUSTOMIZATIONS / kind / "health.lua").read_text()
