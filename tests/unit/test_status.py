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


def derive(job_obj=None, pods=(), previous=None, s=None, generation=3, problems=(), blocked=None) -> FineTuneJobStatus:
    return derive_status(Observed(generation=generation, spec=s or spec(), job=job_obj, pods=list(pods),
                                  previous=previous or FineTuneJobStatus(), storage_uri=STORAGE, now=NOW,
                                  problems=list(problems), **({"blocked": blocked} if blocked else {})))


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
    # No Ready while suspended: kstatus (Flux) reads Ready=False as InProgress, and suspended is what was asked.
    assert conditions(st) == {"Reconciling": "False", "Stalled": "False"}
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
    assert set(body) == {"phase", "observedGeneration", "conditions", "message", "attempts", "attemptStartTime",
                         "failedAttempts", "lastFailedJobUid", "trainerJob", "artifacts", "startTime", "completionTime"}
    assert "progress" not in body  # the trainer's field is never overwritten
    assert body["artifacts"] is None  # null clears in a merge patch


def created(p: dict, at: str) -> dict:
    p["metadata"]["creationTimestamp"] = at
    return p


def test_an_evicted_pod_that_is_gone_still_counts_as_an_attempt():
    first = derive(job(active=1, ready=1), [created(pod("a", None, phase="Running"), "2026-01-02T03:00:00Z")])
    assert first.attempts == 1
    # The evicted pod was deleted; its replacement is the only pod left.
    replacement = [created(pod("b", None, phase="Running"), "2026-01-02T03:04:00Z")]
    second = derive(job(active=1, ready=1), replacement, previous=first)
    assert second.attempts == 2 and second.attempt_start_time == datetime(2026, 1, 2, 3, 4, tzinfo=timezone.utc)
    assert derive(job(active=1, ready=1), replacement, previous=second).attempts == 2  # seen again: not a new one


def test_indexed_attempts_count_rank_zero_pods():
    pods = [pod("a", 75, index="0"), pod("b", 75, index="1"), pod("c", None, phase="Running", index="0"),
            pod("d", None, phase="Running", index="1")]
    st = derive(job(active=2, ready=2), pods, s=spec(resources={"nodes": 2, "gpusPerNode": 1}))
    assert st.attempts == 2


def waiting_pod(name: str = "bot-train-a", reason: str | None = None, message: str = "",
                unschedulable: str | None = None, image: str = "registry.example/trainer:1") -> dict:
    """A Pending trainer pod: unschedulable (the scheduler's message) or a container waiting with `reason`."""
    conditions = ([{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": unschedulable}]
                  if unschedulable else [{"type": "PodScheduled", "status": "True"}])
    statuses = ([{"name": "trainer", "image": image, "state": {"waiting": {"reason": reason, "message": message}}}]
                if reason else [])
    return {"metadata": {"name": name, "namespace": "team-a"},
            "status": {"phase": "Pending", "conditions": conditions, "containerStatuses": statuses}}


def stalled(status: FineTuneJobStatus) -> tuple[str, str]:
    cond = next(c for c in status.conditions if c.type == "Stalled")
    return cond.status, cond.reason


SCHEDULER_MESSAGE = ("0/3 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, "
                     "2 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available")


def test_unschedulable_pod_is_pending_stalled_with_the_schedulers_message():
    st = derive(job(active=1, ready=0), [waiting_pod(unschedulable=SCHEDULER_MESSAGE)])
    assert st.phase == "Pending"
    assert stalled(st) == ("True", "Unschedulable")
    # Reconciling=False while Stalled: kstatus reads the first true one of the two, so Flux shows Failed.
    assert conditions(st)["Reconciling"] == "False"
    assert SCHEDULER_MESSAGE in st.message
    assert "spec.resources" in st.message and "recreate the FineTuneJob" in st.message


def test_missing_secret_or_key_is_secret_not_found():
    for kubelet in ('secret "s3-creds" not found',
                    "couldn't find key AWS_SECRET_ACCESS_KEY in Secret team-a/s3-creds"):
        st = derive(job(active=1, ready=0), [waiting_pod(reason="CreateContainerConfigError", message=kubelet)])
        assert st.phase == "Pending"
        assert stalled(st) == ("True", "SecretNotFound")
        assert kubelet in st.message
        assert "spec.storage.credentialsSecret" in st.message and "namespace team-a" in st.message


def test_other_config_errors_keep_the_kubelets_reason():
    st = derive(job(active=1, ready=0), [waiting_pod(reason="CreateContainerConfigError",
                                                     message='configmap "bot-train-config" not found')])
    assert stalled(st) == ("True", "CreateContainerConfigError")
    assert 'configmap "bot-train-config" not found' in st.message


def test_image_pull_errors_are_one_reason_with_the_kubelets_detail():
    for kubelet_reason in ("ErrImagePull", "ImagePullBackOff"):
        st = derive(job(active=1, ready=0), [waiting_pod(reason=kubelet_reason, image="registry.invalid/t:1",
                                                         message='failed to resolve "registry.invalid/t:1"')])
        assert st.phase == "Pending"
        assert stalled(st) == ("True", "ImagePullBackOff")
        assert f"cannot pull image registry.invalid/t:1: {kubelet_reason}: failed to resolve" in st.message
        assert "spec.images.trainer" in st.message
    st = derive(job(active=1, ready=0), [waiting_pod(reason="InvalidImageName", image="Bad Image")])
    assert stalled(st) == ("True", "InvalidImageName")


def test_a_blocked_rank_wins_over_a_ready_one_and_clears_by_itself():
    ready = {"metadata": {"name": "bot-train-0"}, "status": {"phase": "Running", "conditions": []}}
    blocked = waiting_pod("bot-train-1", unschedulable=SCHEDULER_MESSAGE)
    st = derive(job(active=2, ready=1), [ready, blocked], s=spec(resources={"nodes": 2, "gpusPerNode": 1}))
    assert (st.phase, stalled(st)) == ("Pending", ("True", "Unschedulable"))
    assert "pod bot-train-1 cannot be scheduled" in st.message
    # Scheduled and started: the Stalled condition goes back to False by itself.
    later = derive(job(active=2, ready=2), [ready, {**blocked, "status": {"phase": "Running"}}],
                   s=spec(resources={"nodes": 2, "gpusPerNode": 1}), previous=st)
    assert later.phase == "Validating"
    assert stalled(later) == ("False", "Validating")


def test_failed_or_deleted_pods_are_not_blockers():
    gone = waiting_pod(reason="ImagePullBackOff")
    gone["metadata"]["deletionTimestamp"] = "2026-01-02T03:00:00Z"
    assert derive(job(active=1, ready=0), [gone]).message == "waiting for trainer pods to be scheduled and start"
    done = waiting_pod(unschedulable=SCHEDULER_MESSAGE)
    done["status"]["phase"] = "Failed"
    assert stalled(derive(job(active=1, ready=0), [done])) == ("False", "PodsStarting")


def test_a_job_the_operator_could_not_create_says_why():
    from kubetune.finetunejob.status import Blocker

    waiting = derive(None, blocked=Blocker("PreviousPodsTerminating", "waiting for 1 pod of the previous Job to go"))
    assert (waiting.phase, stalled(waiting)) == ("Pending", ("False", "PreviousPodsTerminating"))
    conflict = derive(None, blocked=Blocker("NameConflict", "Job bot-train exists and is not this FineTuneJob's"))
    assert (conflict.phase, stalled(conflict)) == ("Pending", ("True", "NameConflict"))
    assert conflict.message.startswith("Job bot-train exists")


def test_last_words_with_credentials_are_masked_in_status():
    words = ('botocore.exceptions.ClientError: signature mismatch; env {"AWS_SECRET_ACCESS_KEY": "wJalr/K7+xyz", '
             '"HF_TOKEN": "hf_abcdefghijklmnopqrstu"} url=https://bob:pa55w0rd@s3.example/x')
    failed = job(conditions=[{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}])
    st = derive(failed, [pod("bot-train-a", 1, message=words)])
    for value in ("wJalr/K7+xyz", "hf_abcdefghijklmnopqrstu", "pa55w0rd"):
        assert value not in st.message
    assert '"AWS_SECRET_ACCESS_KEY": <redacted>' in st.message and "https://bob:<redacted>@s3.example/x" in st.message
    assert "signature mismatch" in st.message  # the useful part stays


def test_paths_that_mention_a_secret_are_not_masked():
    from kubetune.finetunejob.podfailure import redact_credentials

    line = "bad data: s3://data/secret-9f3e2a.jsonl: no such key; aws_secret_access_key = abc123"
    assert redact_credentials(line) == "bad data: s3://data/secret-9f3e2a.jsonl: no such key; aws_secret_access_key = <redacted>"
