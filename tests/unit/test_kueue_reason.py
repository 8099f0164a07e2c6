"""Kueue's own reason in a queued FineTuneJob's status (finetunejob/kueue.py): wording and degradation."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from kubernetes.client.rest import ApiException

from kubetune.api import FineTuneJobSpec, FineTuneJobStatus
from kubetune.finetunejob.kueue import kueue_wait, queued_reason_and_message, read_kueue_wait
from kubetune.finetunejob.status import Observed, derive_status

pytestmark = pytest.mark.unit

QUOTA = ("couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu in flavor "
         "kwok-gpu, 1 more needed")


def workload(*conditions: dict) -> dict:
    return {"metadata": {"name": "job-bot-train-1"}, "status": {"conditions": list(conditions)}}


def cond(ctype: str, status: str, reason: str, message: str = "") -> dict:
    return {"type": ctype, "status": status, "reason": reason, "message": message}


def test_pending_for_quota_is_kueues_reason():
    assert kueue_wait([workload(cond("QuotaReserved", "False", "Pending", QUOTA))]) == ("Pending", QUOTA)


def test_evicted_by_preemption_is_kueues_reason_until_it_waits_again():
    evicted = cond("Evicted", "True", "Preempted", "Preempted to accommodate a workload due to prioritization")
    assert kueue_wait([workload(cond("QuotaReserved", "True", "QuotaReserved"), evicted)])[0] == "Preempted"
    # Requeued: waiting for quota again is the newer verdict.
    assert kueue_wait([workload(cond("QuotaReserved", "False", "Pending", QUOTA), evicted)]) == ("Pending", QUOTA)


def test_no_verdict_yet_or_no_workload():
    assert kueue_wait([]) is None
    assert kueue_wait([workload()]) is None
    assert kueue_wait([workload(cond("QuotaReserved", "True", "QuotaReserved"))]) is None


def test_wording():
    assert queued_reason_and_message("gpus", None) == ("Queued", "waiting for Kueue to admit it from queue gpus")
    reason, message = queued_reason_and_message("gpus", ("Pending", QUOTA))
    assert reason == "Pending" and message == f"waiting for Kueue (Pending) in queue gpus: {QUOTA}"
    assert queued_reason_and_message("q", ("Odd reason!", ""))[0] == "Oddreason"


def test_queued_status_carries_kueues_reason():
    spec = FineTuneJobSpec.model_validate({"baseModel": {"uri": "s3://m/base"}, "dataset": {"train": "s3://d/t.jsonl"},
                                           "queueName": "gpus"})
    job = {"metadata": {"name": "bot-train", "uid": "j1"}, "spec": {"suspend": True}, "status": {}}
    status = derive_status(Observed(generation=1, spec=spec, job=job, pods=[], previous=FineTuneJobStatus(),
                                    storage_uri=None, now=datetime(2026, 1, 1, tzinfo=timezone.utc),
                                    kueue_wait=("Pending", QUOTA)))
    assert status.phase == "Queued" and QUOTA in status.message
    reconciling = next(c for c in status.conditions if c.type == "Reconciling")
    assert reconciling.status == "True" and reconciling.reason == "Pending" and QUOTA in reconciling.message


class Lister:
    """Kube.list answering per apiVersion: a list of Workloads, or an ApiException to raise."""

    def __init__(self, answers: dict):
        self.answers, self.asked = answers, []

    def list(self, api_version, kind, namespace, selector):
        self.asked.append((api_version, kind, namespace, selector))
        answer = self.answers[api_version]
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_reads_the_newest_served_version_by_the_jobs_uid():
    kube = Lister({"kueue.x-k8s.io/v1beta2": [workload(cond("QuotaReserved", "False", "Pending", QUOTA))]})
    assert read_kueue_wait(kube, "ns", "u1") == ("Pending", QUOTA)
    assert kube.asked == [("kueue.x-k8s.io/v1beta2", "Workload", "ns", "kueue.x-k8s.io/job-uid=u1")]


def test_falls_back_to_v1beta1_then_to_nothing_without_kueue():
    wl = [workload(cond("QuotaReserved", "False", "Pending", QUOTA))]
    assert read_kueue_wait(Lister({"kueue.x-k8s.io/v1beta2": ApiException(404),
                                   "kueue.x-k8s.io/v1beta1": wl}), "ns", "u") == ("Pending", QUOTA)
    assert read_kueue_wait(Lister({"kueue.x-k8s.io/v1beta2": ApiException(404),
                                   "kueue.x-k8s.io/v1beta1": ApiException(404)}), "ns", "u") is None


def test_forbidden_degrades_but_a_busy_apiserver_is_retried():
    assert read_kueue_wait(Lister({"kueue.x-k8s.io/v1beta2": ApiException(403)}), "ns", "u") is None
    with pytest.raises(ApiException):
        read_kueue_wait(Lister({"kueue.x-k8s.io/v1beta2": ApiException(503)}), "ns", "u")
