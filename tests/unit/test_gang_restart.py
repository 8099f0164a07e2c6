"""Gang restarts of multi-node jobs: the decision (pure) and reconcile() carrying it out, without a cluster.

A failed multi-node Job attempt either ends the FineTuneJob or is replaced by a new Job for all
ranks; each failure is handled once, whatever the operator does meanwhile (finetunejob/gang.py).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

import pytest

from kubetune.api import FineTuneJobStatus
from kubetune.api.resources import FINETUNEJOB
from kubetune.builders.common import Owner
from kubetune.context import Context
from kubetune.finetunejob.gang import deadline_left, gang_outcome
from kubetune.finetunejob.reconcile import reconcile
from kubetune.settings import OperatorSettings
from tests.unit.fake_kube import FakeKube

pytestmark = pytest.mark.unit

NS, NAME = "team-a", "bot"
OWNER = Owner(name=NAME, namespace=NS, uid="ftj-uid-1")
JOB = OWNER.job_name
LOG = logging.getLogger("test")
# The Job controller's own words (pkg/controller/job/pod_failure_policy.go).
BAD_INPUT = f"Container trainer for pod {NS}/{JOB}-1-x failed with exit code 65 matching FailJob rule at index 0"
PREEMPTED = f"Container trainer for pod {NS}/{JOB}-1-x failed with exit code 75 matching FailJob rule at index 1"
DISRUPTED = f"Pod {NS}/{JOB}-1-x has condition DisruptionTarget matching FailJob rule at index 2"


def failed_job(uid: str = "job-1", reason: str = "BackoffLimitExceeded", message: str = "Job has reached the "
               "specified backoff limit", stopped: bool = True) -> dict:
    conditions = [{"type": "FailureTarget", "status": "True", "reason": reason, "message": message}]
    if stopped:
        conditions.append({"type": "Failed", "status": "True", "reason": reason, "message": message})
    return {"metadata": {"name": JOB, "uid": uid}, "spec": {}, "status": {"failed": 1, "conditions": conditions}}


def rank_pod(index: int, exit_code: int | None, finished: str, job_uid: str = "job-1", name: str | None = None,
             created: str = "2026-01-02T03:00:00Z") -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name or f"{JOB}-{index}-{job_uid}", "namespace": NS, "creationTimestamp": created,
                         "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
                         "labels": {"batch.kubernetes.io/controller-uid": job_uid, "batch.kubernetes.io/job-name": JOB}},
            "status": {"phase": "Failed", "containerStatuses": [{"name": "trainer", "state": {"terminated": {
                "exitCode": exit_code, "reason": "Error", "finishedAt": finished}}}]}}


# -- the decision ------------------------------------------------------------------------------

def outcome(job: dict, pods=(), previous: FineTuneJobStatus | None = None, backoff_limit: int = 3):
    return gang_outcome(job, list(pods), previous or FineTuneJobStatus(), backoff_limit, nodes=2)


def test_a_crashed_rank_restarts_the_gang_and_counts():
    # Rank 1 crashed first; rank 0 was stopped by the Job controller afterwards (exit 75 on SIGTERM).
    pods = [rank_pod(0, 75, "2026-01-02T03:00:09Z"), rank_pod(1, 1, "2026-01-02T03:00:05Z")]
    got = outcome(failed_job(), pods)
    assert (got.cause, got.restart, got.failed_attempts, got.reason) == ("Crashed", True, 1, "Restarting")
    assert got.job_uid == "job-1"
    assert f"pod {JOB}-1-job-1: trainer exited 1" in got.message  # the rank that failed, not the one stopped after it
    assert "restarting all 2 nodes together from the last complete checkpoint (1 of backoffLimit 3" in got.message


def test_a_failure_already_handled_is_not_counted_again():
    handled = FineTuneJobStatus(failed_attempts=1, last_failed_job_uid="job-1")
    assert outcome(failed_job(), previous=handled).failed_attempts == 1
    assert outcome(failed_job(uid="job-2"), previous=handled).failed_attempts == 2


def test_preemption_and_disruption_restart_without_counting_even_when_the_pod_is_gone():
    for message, cause in ((PREEMPTED, "Preempted"), (DISRUPTED, "Disrupted")):
        got = outcome(failed_job(reason="PodFailurePolicy", message=message), backoff_limit=0)
        assert (got.cause, got.restart, got.failed_attempts) == (cause, True, 0)
        assert "not counted against backoffLimit" in got.message


def test_bad_input_fails_at_once_whatever_the_budget():
    got = outcome(failed_job(reason="PodFailurePolicy", message=BAD_INPUT),
                  [rank_pod(1, 65, "2026-01-02T03:00:05Z", name=f"{JOB}-1-x")], backoff_limit=10)
    assert (got.cause, got.restart, got.reason) == ("BadInput", False, "PodFailurePolicy")
    assert "rejected its input (exit 65)" in got.message


def test_the_budget_runs_out_after_backoff_limit_restarts():
    used = FineTuneJobStatus(failed_attempts=2, last_failed_job_uid="job-2")
    got = outcome(failed_job(uid="job-3"), [rank_pod(1, 1, "2026-01-02T03:00:05Z", job_uid="job-3")], used, 2)
    assert (got.restart, got.failed_attempts, got.reason) == (False, 3, "BackoffLimitExceeded")
    assert got.message.startswith("BackoffLimitExceeded: 3 failed attempts, more than backoffLimit 2")


def test_the_pods_decide_when_the_controllers_message_does_not_name_a_rule():
    job = failed_job(reason="PodFailurePolicy", message="some future wording")
    assert outcome(job, [rank_pod(1, 65, "2026-01-02T03:00:05Z")]).cause == "BadInput"
    assert outcome(job, [rank_pod(1, 75, "2026-01-02T03:00:05Z")]).cause == "Preempted"


def test_deadline_ends_the_job_and_is_not_a_failed_attempt():
    got = outcome(failed_job(reason="DeadlineExceeded", message="Job was active longer than specified deadline"))
    assert (got.restart, got.reason, got.failed_attempts) == (False, "DeadlineExceeded", 0)


def test_no_outcome_while_the_job_has_not_failed():
    assert outcome({"metadata": {"uid": "j"}, "status": {"active": 2}}) is None


def test_a_later_attempt_gets_only_what_is_left_of_the_deadline():
    start = datetime(2026, 1, 2, 3, 0, tzinfo=timezone.utc)
    started = FineTuneJobStatus(start_time=start)
    assert deadline_left(None, started, start) is None
    assert deadline_left(3600, FineTuneJobStatus(), start) == 3600  # the first attempt
    assert deadline_left(3600, started, start + timedelta(minutes=50)) == 600
    assert deadline_left(3600, started, start + timedelta(hours=2)) == 1  # spent: the Job fails at once


# -- reconcile() carrying it out -------------------------------------------------------------------

def make_ftj(kube: FakeKube, backoff_limit: int = 1) -> dict:
    return kube.put({
        "apiVersion": FINETUNEJOB.api_version, "kind": FINETUNEJOB.kind,
        "metadata": {"name": NAME, "namespace": NS, "uid": OWNER.uid, "generation": 1},
        "spec": {"baseModel": {"uri": "s3://m/base"}, "dataset": {"train": "s3://d/train.jsonl"},
                 "storage": {"uri": "s3://runs"}, "backoffLimit": backoff_limit,
                 "resources": {"nodes": 2, "gpusPerNode": 1}}})


def run(kube: FakeKube, ftj: dict | None = None, job: dict | None = None) -> FineTuneJobStatus | None:
    """One reconcile by a freshly started operator (nothing remembered from earlier passes)."""
    ctx = Context(kube=kube, settings=OperatorSettings())
    return reconcile(ctx, ftj if ftj is not None else kube.get("", FINETUNEJOB.kind, NS, NAME), LOG, job=job)


def current_job(kube: FakeKube) -> dict:
    return kube.get("batch/v1", "Job", NS, JOB)


def fail_current_job(kube: FakeKube, message: str = "Job has reached the specified backoff limit",
                     reason: str = "BackoffLimitExceeded", exit_code: int = 1, stopped: bool = True) -> str:
    """Play the Job controller: rank 1 failed, rank 0 was stopped, the Job is marked failed."""
    job = kube.objects[("Job", NS, JOB)]
    uid = job["metadata"]["uid"]
    kube.put(rank_pod(1, exit_code, "2026-01-02T03:00:05Z", job_uid=uid, name=f"{JOB}-1-x"))
    kube.put(rank_pod(0, 75, "2026-01-02T03:00:09Z", job_uid=uid))
    job["status"] = failed_job(uid, reason, message, stopped)["status"]
    return uid


def gang_events(kube: FakeKube) -> list[str]:
    return [message for _, reason, message in kube.events if reason == "GangRestart"]


def test_a_failed_rank_replaces_the_whole_job_once():
    kube = FakeKube()
    make_ftj(kube)
    run(kube)
    first = fail_current_job(kube)
    status = run(kube)
    stored = kube.status_of("FineTuneJob", NS, NAME)
    assert (stored["failedAttempts"], stored["lastFailedJobUid"]) == (1, first)
    assert kube.deleted == [first]  # the old attempt's Job, all ranks with it
    assert current_job(kube)["metadata"]["uid"] != first  # the next attempt, created in the same pass
    assert current_job(kube)["spec"]["backoffLimit"] == 0
    assert status.phase == "Pending" and len(gang_events(kube)) == 1
    run(kube)  # nothing new happened: nothing counted, deleted or announced again
    assert kube.status_of("FineTuneJob", NS, NAME)["failedAttempts"] == 1
    assert len(kube.deleted) == 1 and len(gang_events(kube)) == 1


def test_the_job_stays_until_every_rank_stopped():
    kube = FakeKube()
    make_ftj(kube)
    run(kube)
    first = fail_current_job(kube, stopped=False)  # FailureTarget: the Job controller is stopping rank 0
    assert run(kube).phase == "Pending"
    assert kube.status_of("FineTuneJob", NS, NAME)["failedAttempts"] == 1
    assert not kube.deleted and current_job(kube)["metadata"]["uid"] == first
    kube.objects[("Job", NS, JOB)]["status"] = failed_job(first)["status"]  # Failed: all ranks stopped
    run(kube)
    assert kube.deleted == [first] and kube.status_of("FineTuneJob", NS, NAME)["failedAttempts"] == 1


def test_an_operator_killed_between_counting_and_deleting_does_not_count_twice():
    kube = FakeKube()
    make_ftj(kube)
    run(kube)
    first = fail_current_job(kube)
    kube.fail_next_delete = RuntimeError("operator killed")
    with pytest.raises(RuntimeError):
        run(kube)
    assert kube.status_of("FineTuneJob", NS, NAME)["failedAttempts"] == 1 and current_job(kube)["metadata"]["uid"] == first
    run(kube)  # the restarted operator
    assert kube.status_of("FineTuneJob", NS, NAME)["failedAttempts"] == 1
    assert kube.deleted == [first] and current_job(kube)["metadata"]["uid"] != first


def test_a_status_read_before_an_earlier_restart_neither_loses_a_count_nor_takes_it_back():
    kube = FakeKube()
    make_ftj(kube, backoff_limit=3)
    run(kube)
    stale_ftj = kube.get("", FINETUNEJOB.kind, NS, NAME)  # read before the first failure was counted
    fail_current_job(kube)
    run(kube)
    # A pass that works from the old read while the new attempt runs must not write the count back.
    kube.objects[("Job", NS, JOB)]["status"] = {"active": 2, "ready": 2}
    assert run(kube, ftj=stale_ftj).phase == "Validating"  # (so that pass does write a status)
    assert kube.status_of("FineTuneJob", NS, NAME)["failedAttempts"] == 1
    # ... nor, when the second attempt fails, count on top of the old read (0 + 1).
    fail_current_job(kube)
    run(kube, ftj=stale_ftj)
    assert kube.status_of("FineTuneJob", NS, NAME)["failedAttempts"] == 2
    assert len(kube.deleted) == 2 and len(gang_events(kube)) == 2


def test_a_late_event_of_a_replaced_job_is_not_counted_again():
    kube = FakeKube()
    make_ftj(kube, backoff_limit=3)
    run(kube)
    fail_current_job(kube)
    late = current_job(kube)  # the first attempt's failed Job, as a late watch event carries it
    run(kube)
    fail_current_job(kube)
    run(kube)  # the second failure is the one on record now
    run(kube, job=late)
    stored = kube.status_of("FineTuneJob", NS, NAME)
    assert stored["failedAttempts"] == 2 and stored["lastFailedJobUid"] == kube.deleted[-1]
    assert len(kube.deleted) == 2 and len(gang_events(kube)) == 2


def test_bad_input_fails_once_and_keeps_the_job():
    kube = FakeKube()
    make_ftj(kube, backoff_limit=3)
    run(kube)
    first = fail_current_job(kube, message=BAD_INPUT, reason="PodFailurePolicy", exit_code=65)
    status = run(kube)
    assert status.phase == "Failed" and status.message.startswith("PodFailurePolicy: ")
    assert not kube.deleted and current_job(kube)["metadata"]["uid"] == first and not gang_events(kube)
    assert [reason for _, reason, _ in kube.events].count("Failed") == 1


def test_backoff_limit_bounds_the_restarts():
    kube = FakeKube()
    make_ftj(kube, backoff_limit=1)
    run(kube)
    fail_current_job(kube)
    run(kube)
    second = fail_current_job(kube)
    status = run(kube)
    assert status.phase == "Failed" and status.failed_attempts == 2
    assert next(c for c in status.conditions if c.type == "Stalled").reason == "BackoffLimitExceeded"
    assert current_job(kube)["metadata"]["uid"] == second and len(kube.deleted) == 1


def test_preemption_restarts_without_using_the_budget():
    kube = FakeKube()
    make_ftj(kube, backoff_limit=0)
    run(kube)
    for _ in range(3):
        fail_current_job(kube, message=PREEMPTED, reason="PodFailurePolicy", exit_code=75)
        assert run(kube).phase == "Pending"
    assert len(kube.deleted) == 3 and "failedAttempts" not in kube.status_of("FineTuneJob", NS, NAME)
    assert all(type_ == "Normal" for type_, reason, _ in kube.events if reason == "GangRestart")
