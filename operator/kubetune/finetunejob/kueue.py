"""Kueue's own reason for a queued FineTuneJob: read from the Workload Kueue made for its trainer Job.

Kueue writes why a Workload waits (QuotaReserved=False, e.g. reason Pending, "couldn't assign
flavors ... insufficient unused quota ...") or why it was put back (Evicted=True, reason Preempted)
on the Workload, not on the Job. A cluster without Kueue (no Workload CRD: 404) or an operator
without the workloads rule (403) falls back to the generic message: never a failed reconcile.
"""

from __future__ import annotations

import re

from kubernetes.client.rest import ApiException

from kubetune.k8s import Kube

GROUP = "kueue.x-k8s.io"
# Newest first: Kueue 0.15+ stores v1beta2; older releases serve only v1beta1.
WORKLOAD_VERSIONS = (f"{GROUP}/v1beta2", f"{GROUP}/v1beta1")
JOB_UID_LABEL = f"{GROUP}/job-uid"


def _condition(workload: dict, ctype: str) -> dict:
    return next((c for c in (workload.get("status") or {}).get("conditions") or [] if c.get("type") == ctype), {})


def kueue_wait(workloads: list[dict]) -> tuple[str, str] | None:
    """(reason, message) Kueue gives for not running the Workload now, None if it gives none (yet)."""
    for wl in workloads:
        reserved, evicted = _condition(wl, "QuotaReserved"), _condition(wl, "Evicted")
        if reserved.get("status") == "False" and reserved.get("reason"):
            return reserved["reason"], (reserved.get("message") or "").strip()
        if evicted.get("status") == "True" and evicted.get("reason"):
            return evicted["reason"], (evicted.get("message") or "").strip()
    return None


def queued_reason_and_message(queue: str, wait: tuple[str, str] | None) -> tuple[str, str]:
    """The Queued condition's reason and the status message: Kueue's own when it gave one."""
    if wait is None:
        return "Queued", f"waiting for Kueue to admit it from queue {queue}"
    reason, message = wait
    word = re.sub(r"[^A-Za-z0-9]", "", reason) or "Queued"  # a condition reason is CamelCase
    return word, f"waiting for Kueue ({reason}) in queue {queue}: {message or 'no detail'}"


def read_kueue_wait(kube: Kube, namespace: str, job_uid: str) -> tuple[str, str] | None:
    """Kueue's reason for the Job's Workload; None when there is no Kueue, no access, or no verdict yet."""
    for api_version in WORKLOAD_VERSIONS:
        try:
            return kueue_wait(kube.list(api_version, "Workload", namespace, f"{JOB_UID_LABEL}={job_uid}"))
        except ApiException as err:
            if err.status == 404:
                continue  # this version (or Kueue itself) is not served
            if err.status == 403:
                return None  # the chart's workloads rule removed: the generic message is still true
            raise  # transient (429/5xx): the handler's retry
    return None
