"""Per-object gauges on /metrics: fed from FineTuneJob and ModelDeployment status, removed on delete."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from types import SimpleNamespace

import kopf
import pytest
from prometheus_client import REGISTRY

from kubetune.api import FineTuneJobStatus
from kubetune.api.finetunejob import Progress
from kubetune.api.modeldeployment import AbortedRevision, ModelDeploymentStatus, Revision
from kubetune.finetunejob.handlers import on_finetunejob_event
from kubetune.finetunejob.retries import RetryQueue
from kubetune.metrics import JOB_GAUGES
from kubetune.modeldeployment.handlers import on_modeldeployment_event

pytestmark = pytest.mark.unit

LOG = logging.getLogger("test")


def sample(metric: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(metric, labels)


def job_body(name: str, status: FineTuneJobStatus | None) -> kopf.Body:
    wire = status.model_dump(mode="json", by_alias=True, exclude_none=True) if status else {}
    return kopf.Body({"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
                      "metadata": {"namespace": "team-a", "name": name, "uid": f"uid-{name}", "generation": 1},
                      "spec": {}, "status": wire})


def deployment_body(name: str, status: ModelDeploymentStatus) -> kopf.Body:
    return kopf.Body({"apiVersion": "kubetune.io/v1alpha1", "kind": "ModelDeployment",
                      "metadata": {"namespace": "team-a", "name": name}, "spec": {},
                      "status": status.model_dump(mode="json", by_alias=True, exclude_none=True)})


def memo() -> SimpleNamespace:
    # The FineTuneJobs count as reconciled at their generation: these events only feed /metrics.
    return SimpleNamespace(ctx=SimpleNamespace(last_reconciled={}, known_deployments={}, active_rollouts=set(),
                                               acted_generations={"uid-bot": 1}, retries=RetryQueue()))


def test_job_progress_gauges_follow_the_trainer_status_and_vanish_on_delete() -> None:
    running = FineTuneJobStatus(phase="Running", progress=Progress(
        step=30, total_steps=120, percent=25, train_loss=1.25, eval_loss=1.5, tokens_per_second=812.5))
    m = memo()
    on_finetunejob_event(type="MODIFIED", body=job_body("bot", running), memo=m, logger=LOG)
    labels = {"namespace": "team-a", "name": "bot"}
    assert sample("kubetune_finetunejob_progress_ratio", **labels) == 0.25
    assert sample("kubetune_finetunejob_step", **labels) == 30
    assert sample("kubetune_finetunejob_total_steps", **labels) == 120
    assert sample("kubetune_finetunejob_train_loss", **labels) == 1.25
    assert sample("kubetune_finetunejob_eval_loss", **labels) == 1.5
    assert sample("kubetune_finetunejob_tokens_per_second", **labels) == 812.5
    assert sample("kubetune_finetunejob_phase", phase="Running", **labels) == 1

    done = FineTuneJobStatus(phase="Succeeded", progress=Progress(step=120, total_steps=120, train_loss=0.5))
    on_finetunejob_event(type="MODIFIED", body=job_body("bot", done), memo=m, logger=LOG)
    assert sample("kubetune_finetunejob_progress_ratio", **labels) == 1.0
    assert sample("kubetune_finetunejob_phase", phase="Succeeded", **labels) == 1
    # One phase series per job: the old phase is gone, not left at 0 or 1.
    assert sample("kubetune_finetunejob_phase", phase="Running", **labels) is None
    # A field the trainer no longer reports is dropped rather than kept stale.
    assert sample("kubetune_finetunejob_tokens_per_second", **labels) is None

    on_finetunejob_event(type="DELETED", body=job_body("bot", done), memo=m, logger=LOG)
    for name in ("kubetune_finetunejob_progress_ratio", "kubetune_finetunejob_step", "kubetune_finetunejob_train_loss"):
        assert sample(name, **labels) is None
    assert sample("kubetune_finetunejob_phase", phase="Succeeded", **labels) is None


def test_a_job_without_status_counts_as_pending_and_exports_no_progress() -> None:
    on_finetunejob_event(type=None, body=job_body("fresh", None), memo=memo(), logger=LOG)
    labels = {"namespace": "team-a", "name": "fresh"}
    assert sample("kubetune_finetunejob_phase", phase="Pending", **labels) == 1
    assert sample("kubetune_finetunejob_progress_ratio", **labels) is None
    JOB_GAUGES.record("team-a", "fresh", None)
    assert sample("kubetune_finetunejob_phase", phase="Pending", **labels) is None


def test_progress_ratio_falls_back_to_percent_without_step_counts() -> None:
    JOB_GAUGES.record("team-a", "pct", {"phase": "Running", "progress": {"percent": 40}})
    assert sample("kubetune_finetunejob_progress_ratio", namespace="team-a", name="pct") == 0.4
    JOB_GAUGES.record("team-a", "pct", None)


def test_deployment_weights_and_last_rollback_time() -> None:
    stable, canary = Revision(revision="aaa"), Revision(revision="bbb")
    rolled_back_at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    m = memo()
    labels = {"namespace": "team-a", "name": "chat"}
    rolling = ModelDeploymentStatus(phase="Progressing", stable=stable, canary=canary, canary_weight=25, achieved_weight=20)
    on_modeldeployment_event(type="MODIFIED", body=deployment_body("chat", rolling), memo=m)
    assert sample("kubetune_modeldeployment_canary_weight_percent", **labels) == 25
    assert sample("kubetune_modeldeployment_canary_achieved_weight_percent", **labels) == 20
    assert sample("kubetune_modeldeployment_last_rollback_timestamp_seconds", **labels) is None

    rolled_back = ModelDeploymentStatus(phase="RolledBack", stable=stable, aborted=[
        AbortedRevision(revision="bbb", reason="AnalysisFailed", time=rolled_back_at)])
    on_modeldeployment_event(type="MODIFIED", body=deployment_body("chat", rolled_back), memo=m)
    assert sample("kubetune_modeldeployment_canary_weight_percent", **labels) == 0  # all traffic back on stable
    assert sample("kubetune_modeldeployment_canary_achieved_weight_percent", **labels) == 0
    assert sample("kubetune_modeldeployment_last_rollback_timestamp_seconds", **labels) == rolled_back_at.timestamp()

    on_modeldeployment_event(type="DELETED", body=deployment_body("chat", rolled_back), memo=m)
    for name in ("kubetune_modeldeployment_canary_weight_percent", "kubetune_modeldeployment_canary_achieved_weight_percent",
                 "kubetune_modeldeployment_last_rollback_timestamp_seconds"):
        assert sample(name, **labels) is None


def test_operator_info_is_exported_before_any_object_is_seen() -> None:
    info = [s for metric in REGISTRY.collect() if metric.name == "kubetune_operator_info" for s in metric.samples]
    assert [s.value for s in info] == [1.0] and info[0].labels["version"]
