"""Status derivation: phase, kstatus conditions and messages from the Job and its pods."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from kubetune.api import FineTuneJobSpec, FineTuneJobStatus
from kubetune.api.finetunejob import Progress
from kubetune.finetunejob.status import Observed, derive_status, status_patch

pytestmark = pytest.mark.unit

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
STORAGE = "s3://runs/kubetune/team-a/bot"


def spec(**overrides) -> FineTuneJobSpec:
    doc = {"baseModel": {"uri": "s3://m/base"}, "dataset": {"train": "s3://d/train.jsonl"},
           "storage": {"uri": "s3://runs/kubetune"}}
    doc.update(overrides)
    return FineTuneJobSpec.model_validate(doc)


def job(suspend: bool = False, conditions: list[dict] | None = None, **status) -> dict:
    return {"metadata": {"name": "bot-train", "uid": "j1"}, "spec": {"suspend": suspend},
            "status": {"conditions": conditions or [], **status}}


def pod(name: str, exit_code: int | None = None, phase: str = "Failed", finished: str = "2026-01-02T03:00:00Z",
        index: str | None = None, message: str | None = None, disruption: str | None = None) -> dict:
    terminated = {"exitCode": exit_code, "reason": "Error", "finishedAt": finished}
    if message:
        terminated["message"] = message
    conditions = [{"type": "DisruptionTarget", "status": "True", "reason": disruption}] if disruption else []
    annotations = {"batch.kubernetes.io/job-completion-index": index} if index is not None else {}
    return {"metadata": {"name": name, "annotations": annotations},
            "status": {"phase": phase, "conditions": conditions,
                       "containerStatuses": [{"name": "trainer", "state": {"terminated": terminated}}]}}


def derive(job_obj=None, pods=(), previous=None, s=None, generation=3, problems=()) -> FineTuneJobStatus:
    return derive_status(Observed(generation=generation, spec=s or spec(), job=job_obj, pods=list(pods),
                                  previous=previous or FineTuneJobStatus(), storage_uri=STORAGE, now=NOW,
                                  problems=list(problems)))


def conditions(status: FineTuneJobStatus) -> dict[str, str]:
    return {c.type: c.status for c in status.conditions}


def test_no_job_yet_is_pending_and_reconciling():
    st = derive(None)
    assert st.phase == "Pending"
    assert conditions(st) == {"Ready": "False", "Reconciling": "True", "Stalled": "False"}
    assert all(c.observed_generation == 3 for c in st.conditions)
    assert st.observed_generation == 3


def test_pods_starting_then_validating_then_running():
    assert derive(job(active=1, ready=0)).phase == "Pending"
    assert derive(job(active=1, ready=1)).phase == "Validating"
    running = derive(job(active=1, ready=1), previous=FineTuneJobStatus(progress=Progress(step=5, total_steps=10)))
    assert running.phase == "Running"
    assert conditions(running)["Reconciling"] == "True"


def test_succeeded_fills_artifacts_and_ready():
    done = job(conditions=[{"type": "Complete", "status": "True"}], completionTime="2026-01-02T03:00:00Z",
               startTime="2026-01-02T02:00:00Z", succeeded=1)
    st = derive(done, pods=[pod("bot-train-a", 0, phase="Succeeded")])
    assert st.phase == "Succeeded"
    assert conditions(st) == {"Ready": "True", "Reconciling": "False", "Stalled": "False"}
    assert st.artifacts.adapter_uri == f"{STORAGE}/adapter"
    assert st.artifacts.merged_uri is None
    assert st.artifacts.evaluation_report_uri == f"{STORAGE}/reports/evaluation.json"
    assert st.artifacts.metrics_uri == f"{STORAGE}/metrics.jsonl"
    assert st.completion_time == datetime(2026, 1, 2, 3, 0, tzinfo=timezone.utc)
    assert st.start_time == datetime(2026, 1, 2, 2, 0, tzinfo=timezone.utc)
    assert st.attempts == 1
    merged = derive(done, s=spec(output={"mergeAdapter": True}))
    assert merged.artifacts.merged_uri == f"{STORAGE}/merged"
    full = derive(done, s=spec(method="full"))
    assert full.artifacts.adapter_uri is None and full.artifacts.merged_uri == f"{STORAGE}/model"


def test_backoff_exceeded_is_stalled_with_exit_code_and_last_words():
    failed = job(conditions=[{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                              "message": "Job has reached the specified backoff limit"}], failed=2)
    pods = [pod("bot-train-a", 1, finished="2026-01-02T03:00:00Z"),
            pod("bot-train-b", 1, finished="2026-01-02T03:05:00Z", message="Traceback...\nCUDA error: out of memory")]
    st = derive(failed, pods)
    assert st.phase == "Failed"
    assert conditions(st) == {"Ready": "False", "Reconciling": "False", "Stalled": "True"}
    stalled = next(c for c in st.conditions if c.type == "Stalled")
    assert stalled.reason == "BackoffLimitExceeded"
    assert "pod bot-train-b: trainer exited 1" in st.message  # the newest failure
    assert st.message.endswith("CUDA error: out of memory")
    assert st.attempts == 2
    assert st.completion_time == NOW


def test_bad_input_exit_code_explains_what_to_fix():
    failed = job(conditions=[{"type": "Failed", "status": "True", "reason": "PodFailurePolicy",
                              "message": "Container trainer for pod team-a/bot-train-a failed with exit code 65"}])
    st = derive(failed, [pod("bot-train-a", 65, message="train.jsonl:17: no assistant turn")])
    assert st.phase == "Failed"
    assert "rejected its input (exit 65)" in st.message
    assert "train.jsonl:17: no assistant turn" in st.message
    assert next(c for c in st.conditions if c.type == "Stalled").reason == "PodFailurePolicy"


def test_preemption_and_disruption_are_retries_not_failures():
    running = job(active=1, ready=1)
    st = derive(running, [pod("bot-train-a", 75)])
    assert st.phase == "Validating"
    assert "preempted and saved a checkpoint (exit 75); not counted" in st.message
    assert st.attempts == 1
    st = derive(job(active=1, ready=0), [pod("bot-train-a", 137, disruption="PreemptionByScheduler")])
    assert st.phase == "Pending"
    assert "disrupted (PreemptionByScheduler)" in st.message
    assert conditions(st)["Stalled"] == "False"


def test_suspend_and_queue():
    st = derive(job(suspend=True), s=spec(suspend=True))
    assert st.phase == "Suspended"
    assert conditions(st) == {"Ready": "False", "Reconciling": "False", "Stalled": "False"}
    assert derive(job(suspend=True), s=spec(queueName="gpus")).phase == "Queued"
    assert derive(job(suspend=True)).phase == "Pending"  # resuming


def test_invalid_spec_fails_at_once():
    st = derive(None, problems=["spec.dataset.train: relative path './x.jsonl' only works with `kubetune train`"])
    assert st.phase == "Failed"
    assert st.message.startswith("spec.dataset.train: relative path")
    assert next(c for c in st.conditions if c.type == "Stalled").reason == "InvalidSpec"


def test_terminal_status_survives_a_deleted_job():
    done = derive(job(conditions=[{"type": "Complete", "status": "True"}]))
    assert derive(None, previous=done).phase == "Succeeded"


def test_transition_times_move_only_on_change_and_patch_is_stable():
    first = derive(job(active=1, ready=1))
    later = derive_status(Observed(generation=3, spec=spec(), job=job(active=1, ready=1), pods=[], previous=first,
                                   storage_uri=STORAGE, now=NOW + timedelta(minutes=5)))
    assert [c.last_transition_time for c in later.conditions] == [c.last_transition_time for c in first.conditions]
    assert status_patch(later) == status_patch(first)  # nothing to write
    done = derive_status(Observed(generation=3, spec=spec(), job=job(conditions=[{"type": "Complete", "status": "True"}]),
                                  pods=[], previous=first, storage_uri=STORAGE, now=NOW + timedelta(minutes=5)))
    ready = next(c for c in done.conditions if c.type == "Ready")
    stalled = next(c for c in done.conditions if c.type == "Stalled")
    assert ready.last_transition_time == NOW + timedelta(minutes=5)
    assert stalled.last_transition_time == NOW  # still False


def test_status_patch_names_only_operator_fields():
    st = derive(job(active=1, ready=1), previous=FineTuneJobStatus(progress=Progress(step=1)))
    body = status_patch(st)["status"]
    assert set(body) == {"phase", "observedGeneration", "conditions", "message", "attempts", "artifacts",
                         "startTime", "completionTime"}
    assert "progress" not in body  # the trainer's field is never overwritten
    assert body["artifacts"] is None  # null clears in a merge patch


def test_indexed_attempts_count_rank_zero_pods():
    pods = [pod("a", 75, index="0"), pod("b", 75, index="1"), pod("c", None, phase="Running", index="0"),
            pod("d", None, phase="Running", index="1")]
    st = derive(job(active=2, ready=2), pods, s=spec(resources={"nodes": 2, "gpusPerNode": 1}))
    assert st.attempts == 2
