#!/usr/bin/env python3
"""Captures the Argo CD health checks' test data from real e2e runs.

Runs the e2e tests that walk FineTuneJobs and ModelDeployments through their states with
KUBETUNE_CAPTURE_STATUS set (tests/support/status_capture.py keeps the first object seen in
each distinct state), then writes each state, trimmed to what a health check reads (apiVersion,
kind, metadata name/namespace/generation, status), to
gitops/argocd/resource_customizations/kubetune.io/<Kind>/testdata/<phase>-<reason>[...].yaml,
replacing the YAML files there. health_test.yaml is not touched: its expectations are written
by hand (the script prints each state to help). Runs through hack/test.sh, so the tools are
prepared as for any test run.

    python3 hack/capture-gitops-testdata.py            # the default selection below
    python3 hack/capture-gitops-testdata.py -- -k X    # extra pytest arguments
    python3 hack/capture-gitops-testdata.py --from DIR # only trim DIR, a KUBETUNE_CAPTURE_STATUS folder
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "gitops" / "argocd" / "resource_customizations" / "kubetune.io"
E2E = "tests/e2e/"
# The tests that between them reach every phase and condition set the operator writes.
SELECTION = [
    E2E + "test_finetunejob.py::test_finetunejob_runs_on_a_gpu_node_and_succeeds",
    E2E + "test_finetunejob.py::test_failing_pod_is_retried_then_fails_stalled",
    E2E + "test_finetunejob.py::test_suspend_resume_and_delete",
    E2E + "test_finetunejob.py::test_relative_paths_fail_with_a_message",
    E2E + "test_finetunejob.py::test_trainer_reports_progress_with_its_own_minimal_credentials",
    E2E + "test_finetunejob_failures.py::test_unschedulable_shows_the_schedulers_message",
    E2E + "test_finetunejob_failures.py::test_unpullable_image_is_image_pull_back_off",
    E2E + "test_finetunejob_spec_errors.py::test_an_ignored_spec_edit_does_not_advance_observed_generation",
    E2E + "test_finetunejob_spec_errors.py::test_a_forbidden_child_waits_visibly_with_bounded_retries_and_recovers",
    E2E + "test_modeldeployment.py::test_healthy_canary_is_promoted",
    E2E + "test_modeldeployment.py::test_injected_errors_roll_the_canary_back",
    E2E + "test_modeldeployment.py::test_prometheus_down_gives_error_measurements_and_the_configured_outcome",
    E2E + "test_modeldeployment.py::test_a_finetunejob_that_succeeds_rolls_out_its_adapter",
    E2E + "test_modeldeployment.py::test_a_regressed_finetunejob_does_not_roll_out",
    # Queued: no e2e test reaches it yet (no Kueue in the test bed); see that file's docstring.
    "gitops/capture/test_states_no_e2e_test_reaches.py",
]
# gitops/capture is outside tests/, so tests/conftest.py's fixture plugins are named here
# (pytest registers a plugin once, so the e2e files loading them again is harmless).
PLUGINS = ["tests.support.s3_fixtures", "tests.support.cluster_fixtures", "tests.support.prometheus_fixtures",
           "tests.support.serving_fixtures", "tests.support.pod_runner_fixtures"]


def trim(obj: dict) -> dict:
    meta = obj["metadata"]
    out = {
        "apiVersion": obj["apiVersion"], "kind": obj["kind"],
        "metadata": {"name": meta["name"], "namespace": meta["namespace"], "generation": meta["generation"]},
    }
    if "status" in obj:  # absent before the operator's first write, and kept absent: tools read that case
        out["status"] = obj["status"]
    return out


def file_stem(obj: dict) -> tuple[str, list[str]]:
    """<phase>-<reason>, then what else sets the state apart; and the True condition types for a tie."""
    status = obj.get("status") or {}
    if not status.get("phase"):
        return "no-status", []
    conds = {c["type"]: c for c in status.get("conditions") or []}
    reason = (conds.get("Ready") or {}).get("reason")
    parts = [status["phase"]] + ([reason] if reason and reason != status["phase"] else [])
    if (conds.get("SpecApplied") or {}).get("status") == "False":
        parts.append("spec-change-ignored")
    elif status.get("observedGeneration") != obj["metadata"].get("generation"):
        parts.append("generation-ahead")
    slug = "-".join(re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "-", p).lower() for p in parts)
    return slug, sorted(t.lower() for t, c in conds.items() if c.get("status") == "True")


def write_testdata(captured: Path) -> int:
    written = 0
    for kind_dir in sorted(p for p in captured.iterdir() if p.is_dir()):
        objs = [json.loads(p.read_text())["object"] for p in sorted(kind_dir.glob("*.json"))]
        stems = [file_stem(o) for o in objs]
        counts: dict[str, int] = {}
        for slug, _ in stems:
            counts[slug] = counts.get(slug, 0) + 1
        target = OUT / kind_dir.name / "testdata"
        target.mkdir(parents=True, exist_ok=True)
        for old in target.glob("*.yaml"):
            old.unlink()
        for obj, (slug, true_types) in sorted(zip(objs, stems), key=lambda pair: pair[1]):
            name = slug if counts[slug] == 1 else "-".join([slug, *true_types]) or slug
            path = target / f"{name}.yaml"
            path.write_text(yaml.safe_dump(trim(obj), sort_keys=False, width=120))
            status = obj.get("status") or {}
            print(f"{kind_dir.name}/testdata/{path.name}: phase={status.get('phase')} "
                  f"message={status.get('message')!r}")
            written += 1
    return written


def main(extra: list[str]) -> int:
    # KUBETUNE_CAPTURE_STATUS already set: capture there and keep it (for --from); else a temporary folder.
    kept = os.environ.get("KUBETUNE_CAPTURE_STATUS")
    with tempfile.TemporaryDirectory(prefix="kubetune-capture-") as scratch:
        tmp = kept or scratch
        env = {**os.environ, "KUBETUNE_CAPTURE_STATUS": tmp}
        plugin_args = [arg for name in PLUGINS for arg in ("-p", name)]
        cmd = ["bash", str(REPO / "hack" / "test.sh"), *plugin_args, "-q", "-p", "no:cacheprovider", *SELECTION, *extra]
        rc = subprocess.run(cmd, cwd=REPO, env=env).returncode
        written = write_testdata(Path(tmp))
    print(f"wrote {written} captured states under {OUT.relative_to(REPO)} (pytest exit {rc})", file=sys.stderr)
    # A failed test still leaves what it saw captured, but the run is reported as failed.
    return rc if written else 1


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--from"]:  # re-trim a capture kept from an earlier run (KUBETUNE_CAPTURE_STATUS=<dir>)
        sys.exit(0 if write_testdata(Path(args[1])) else 1)
    sys.exit(main(args[args.index("--") + 1:] if "--" in args else args))
