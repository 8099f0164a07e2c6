"""A new Kueue verdict on a queued trainer Job's Workload reaches the FineTuneJob's status from
the Workload's own watch event (finetunejob/handlers.py on_kueue_workload), not at the resync.

Kueue requeues a preempted job for quota after the Job's last event; before this handler that
verdict waited for the resync (the e2e test caught it as a 30 s timeout in CI)."""

from __future__ import annotations

import copy

import kopf
import pytest

from kubetune.finetunejob.handlers import on_kueue_workload, on_trainer_job
from kubetune.finetunejob.kueue import JOB_UID_LABEL
from tests.unit.fake_kube import FakeKube
from tests.unit.test_finetunejob_events import LOG, NAME, NS, Operator, new_ftj

pytestmark = pytest.mark.unit

QUOTA = "couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu in flavor gpu"
PREEMPTED = "Preempted to accommodate a workload due to prioritization"


def workload(job_uid: str, *conditions: dict, name: str = "job-bot-train-1") -> dict:
    return {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "Workload",
            "metadata": {"name": name, "namespace": NS, "labels": {JOB_UID_LABEL: job_uid}},
            "status": {"conditions": list(conditions)}}


def cond(ctype: str, status: str, reason: str, message: str = "") -> dict:
    return {"type": ctype, "status": status, "reason": reason, "message": message}


def deliver(op: Operator, event: str, obj: dict) -> None:
    on_kueue_workload(type=event, body=kopf.Body(copy.deepcopy(obj)), memo=kopf.Memo(ctx=op.ctx), logger=LOG)


@pytest.fixture
def queued(monkeypatch) -> tuple[FakeKube, Operator, dict]:
    """A FineTuneJob in queue "gpus" reconciled once: its Job suspended, Kueue's verdict not in yet."""
    kube = FakeKube()
    op = Operator(kube, monkeypatch)
    op.deliver("ADDED", new_ftj(kube, queueName="gpus"))
    job = kube.get("batch/v1", "Job", NS, f"{NAME}-train")
    assert job["spec"]["suspend"] is True
    assert op.stored()["status"]["message"] == "waiting for Kueue to admit it from queue gpus"
    return kube, op, job


def test_a_verdict_written_after_the_jobs_last_event_reaches_the_status(queued):
    kube, op, job = queued
    wl = kube.put(workload(job["metadata"]["uid"], cond("QuotaReserved", "False", "Pending", QUOTA)))
    deliver(op, "ADDED", wl)
    status = op.stored()["status"]
    assert status["phase"] == "Queued" and status["message"] == f"waiting for Kueue (Pending) in queue gpus: {QUOTA}"
    assert op.triggers == [1, 1]

    # Preempted, then requeued for quota: each verdict reaches the status from its own event.
    kube.objects[("Workload", NS, wl["metadata"]["name"])]["status"]["conditions"] = [
        cond("QuotaReserved", "True", "QuotaReserved"), cond("Evicted", "True", "Preempted", PREEMPTED)]
    deliver(op, "MODIFIED", kube.get("", "Workload", NS, wl["metadata"]["name"]))
    assert "(Preempted)" in op.stored()["status"]["message"]
    kube.objects[("Workload", NS, wl["metadata"]["name"])]["status"]["conditions"] = [
        cond("QuotaReserved", "False", "Pending", QUOTA), cond("Evicted", "True", "Preempted", PREEMPTED)]
    deliver(op, "MODIFIED", kube.get("", "Workload", NS, wl["metadata"]["name"]))
    assert op.stored()["status"]["message"] == f"waiting for Kueue (Pending) in queue gpus: {QUOTA}"
    assert op.triggers == [1, 1, 1, 1]


def test_workload_events_that_change_no_verdict_reconcile_nothing(queued):
    kube, op, job = queued
    wl = kube.put(workload(job["metadata"]["uid"], cond("QuotaReserved", "False", "Pending", QUOTA)))
    deliver(op, "ADDED", wl)
    assert op.triggers == [1, 1]
    deliver(op, "MODIFIED", wl)  # Kueue's own bookkeeping (requeue counts, resourceVersion)
    deliver(op, "MODIFIED", kube.put(workload("someone-elses-job", cond("QuotaReserved", "False", "Pending", QUOTA),
                                              name="other")))
    assert op.triggers == [1, 1], "an unchanged verdict and a Workload of a Job never queued here"


def test_a_recreated_workloads_verdict_counts_and_the_jobs_deletion_forgets_it(queued):
    kube, op, job = queued
    uid = job["metadata"]["uid"]
    first = kube.put(workload(uid, cond("QuotaReserved", "False", "Pending", QUOTA)))
    deliver(op, "ADDED", first)
    # Kueue recreates the Workload (the queued Job's pod template changed): the new verdict counts.
    kube.objects.pop(("Workload", NS, first["metadata"]["name"]))
    deliver(op, "DELETED", first)
    deliver(op, "ADDED", kube.put(workload(uid, cond("QuotaReserved", "False", "Inadmissible", "no flavor"),
                                           name="job-bot-train-2")))
    assert op.stored()["status"]["message"] == "waiting for Kueue (Inadmissible) in queue gpus: no flavor"
    kube.objects.pop(("Job", NS, job["metadata"]["name"]))
    on_trainer_job(type="DELETED", body=kopf.Body(job), memo=kopf.Memo(ctx=op.ctx), logger=LOG)
    assert uid not in op.ctx.kueue_verdicts, "a replacement Job has another uid"
