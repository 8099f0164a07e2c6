"""Gang restarts of a multi-node trainer: what a failed Job attempt means, and what comes next. Pure.

The ranks of a multi-node job form one torch.distributed group; a replacement pod for one rank
cannot rejoin it (the others wait in a collective for a peer that is gone). So on several nodes
every pod failure fails the whole Job attempt (builders/trainer/job.py, gang_failure_policy), and
the operator decides here whether the job is over or starts again as a new Job, all ranks
together, from the newest complete checkpoint (the trainer resumes from it by itself).

Each failed Job is handled once: its uid goes into status.lastFailedJobUid in the same status
write as the count, and that write is made with the FineTuneJob's resourceVersion as a
precondition before the Job is deleted (finetunejob/reconcile.py). An operator restarted at any
point of a replacement therefore neither counts a failure twice nor loses one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from kubetune.api import FineTuneJobStatus
from kubetune.api.trainer_config import EXIT_BAD_INPUT, EXIT_PREEMPTED
from kubetune.builders.trainer.job import GANG_RULE_CAUSES

from .podfailure import describe_pod_failure, disrupted, terminated

# Causes that restart the gang without using up backoffLimit: the trainer saved a checkpoint
# on SIGTERM (exit 75), or the node went away under it (eviction, preemption, drain).
NOT_COUNTED = frozenset({"Preempted", "Disrupted"})
# Causes that end the job whatever backoffLimit says: the same input fails again; time is up.
TERMINAL_CAUSES = {"BadInput": "PodFailurePolicy", "DeadlineExceeded": "DeadlineExceeded"}
# The Job controller's FailJob message: "... matching FailJob rule at index 1".
_RULE_INDEX = re.compile(r"matching FailJob rule at index (\d+)")
# It names the pod: "Container trainer for pod ns/name failed ..." or "Pod ns/name has condition ...".
_POD_NAME = re.compile(r"(?:for pod|Pod) [^/\s]+/(\S+)")


@dataclass(frozen=True)
class GangOutcome:
    """What one failed gang Job attempt means for the FineTuneJob."""

    job_uid: str
    cause: str              # BadInput, Preempted, Disrupted, Crashed or DeadlineExceeded
    restart: bool           # True: a new Job for all ranks; False: the FineTuneJob failed
    failed_attempts: int    # counted against backoffLimit, this attempt included when it counts
    reason: str             # CamelCase, for the phase's conditions
    message: str


def failure_condition(job: dict) -> dict | None:
    """The Job's Failed condition, or FailureTarget (the controller is still stopping the other ranks)."""
    conditions = (job.get("status") or {}).get("conditions") or []
    for ctype in ("Failed", "FailureTarget"):
        for cond in conditions:
            if cond.get("type") == ctype and cond.get("status") == "True":
                return cond
    return None


def all_ranks_stopped(job: dict) -> bool:
    """The Job controller adds Failed (after FailureTarget) only once every pod has terminated."""
    return any(c.get("type") == "Failed" and c.get("status") == "True"
               for c in (job.get("status") or {}).get("conditions") or [])


def _pod_cause(pod: dict | None) -> str:
    code = (terminated(pod) or {}).get("exitCode") if pod else None
    if code == EXIT_BAD_INPUT:
        return "BadInput"
    if code == EXIT_PREEMPTED:
        return "Preempted"
    return "Disrupted" if pod and disrupted(pod) else "Crashed"


def _first_failed_pod(pods: list[dict], named: str | None) -> dict | None:
    """The rank whose failure failed the attempt: the pod the Job controller names, else the first
    to finish (the others were stopped because of it, so they finished later)."""
    failed = [p for p in pods if (p.get("status") or {}).get("phase") == "Failed"]
    if named is not None and (pod := next((p for p in failed if p["metadata"]["name"] == named), None)):
        return pod
    return min(failed, key=lambda p: ((terminated(p) or {}).get("finishedAt") or "~", p["metadata"]["name"]),
               default=None)


def classify(condition: dict, trigger: dict | None) -> str:
    """Why the attempt failed, from the Job controller's own record (it outlives the pods: an evicted
    pod is deleted); the failed pod decides only if that record does not say."""
    reason = condition.get("reason") or ""
    if reason == "DeadlineExceeded":
        return "DeadlineExceeded"
    if reason == "PodFailurePolicy":
        found = _RULE_INDEX.search(condition.get("message") or "")
        if found is not None and int(found.group(1)) < len(GANG_RULE_CAUSES):
            return GANG_RULE_CAUSES[int(found.group(1))]
        return _pod_cause(trigger)
    return "Crashed"  # BackoffLimitExceeded (limit 0): a failure no rule matched; counts


def gang_outcome(job: dict, pods: list[dict], previous: FineTuneJobStatus, backoff_limit: int,
                 nodes: int) -> GangOutcome | None:
    """The outcome of a failed multi-node Job attempt; None while the Job has not failed."""
    condition = failure_condition(job)
    if condition is None:
        return None
    uid = job["metadata"]["uid"]
    named = _POD_NAME.search(condition.get("message") or "")
    trigger = _first_failed_pod(pods, named.group(1) if named else None)
    cause = classify(condition, trigger)
    counted = cause not in NOT_COUNTED and cause != "DeadlineExceeded"
    handled_before = previous.last_failed_job_uid == uid
    failed = (previous.failed_attempts or 0) + (1 if counted and not handled_before else 0)
    what = describe_pod_failure(trigger) if trigger else f"{condition.get('reason')}: {condition.get('message') or ''}"
    if cause in TERMINAL_CAUSES:
        reason = TERMINAL_CAUSES[cause]
        return GangOutcome(uid, cause, False, failed, reason,
                           f"{reason}: {condition.get('message') or 'the trainer Job failed'}; last attempt: {what}")
    if counted and failed > backoff_limit:
        return GangOutcome(uid, cause, False, failed, "BackoffLimitExceeded", (
            f"BackoffLimitExceeded: {failed} failed attempts, more than backoffLimit {backoff_limit}; "
            f"last attempt: {what}"))
    if counted:
        budget = f" ({failed} of backoffLimit {backoff_limit} failed attempts used)"
    else:  # the pod's own description says so when there is one
        budget = "" if trigger else " (not counted against backoffLimit)"
    return GangOutcome(uid, cause, True, failed, "Restarting", (
        f"restarting all {nodes} nodes together from the last complete checkpoint{budget} after: {what}"))


def deadline_left(active_deadline_seconds: int | None, previous: FineTuneJobStatus, now: datetime) -> int | None:
    """What is left of spec.activeDeadlineSeconds (a limit on the whole job, not on each attempt)
    for a Job created now; at least 1 s, so a spent budget fails the Job at once (DeadlineExceeded)."""
    if active_deadline_seconds is None or previous.start_time is None:
        return active_deadline_seconds
    return max(1, active_deadline_seconds - int((now - previous.start_time).total_seconds()))
