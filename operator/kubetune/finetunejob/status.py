"""FineTuneJob status from what the cluster shows: pure, so every case is unit-tested.

The operator owns phase, conditions, message, attempts, artifacts and the
times; the trainer owns progress, dataset, lastCheckpoint and evaluation
(it patches those itself), so the patch built here never names them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from kubetune.api import Condition, FineTuneJobSpec, FineTuneJobStatus
from kubetune.api.finetunejob import Artifacts
from kubetune.conditions import kstatus_conditions
from kubetune.builders.trainer.job import COMPLETION_INDEX_ANNOTATION

from .gang import GangOutcome, gang_outcome
from .kueue import queued_reason_and_message
from .podfailure import describe_pod_failure, terminated

OPERATOR_FIELDS = frozenset(
    {"phase", "observed_generation", "conditions", "message", "attempts", "attempt_start_time", "failed_attempts",
     "last_failed_job_uid", "trainer_job", "artifacts", "start_time", "completion_time"}
)
TERMINAL = frozenset({"Succeeded", "Failed"})
MAX_MESSAGE = 1024
# Pending reasons that need someone to act (Stalled=True), although the job recovers by itself
# once they do: the kubelet and the scheduler keep retrying (docs/design.md, "Failure outcomes: pods").
STALLED_WAITING = frozenset({"Unschedulable", "SecretNotFound", "CreateContainerConfigError", "ErrImagePull",
                             "ImagePullBackOff", "InvalidImageName", "NameConflict",
                             "Forbidden", "QuotaExceeded"})  # a child create the apiserver forbids (403)
# The kubelet flips between ErrImagePull and ImagePullBackOff on every retry: one reason for both,
# so the status and Events do not flap (its own reason stays in the message).
IMAGE_PULL_REASONS = {"ErrImagePull": "ImagePullBackOff", "ImagePullBackOff": "ImagePullBackOff",
                      "InvalidImageName": "InvalidImageName"}


@dataclass(frozen=True)
class Blocker:
    """Why the trainer cannot start (yet): a CamelCase reason and a message that says what to fix."""

    reason: str
    message: str


@dataclass(frozen=True)
class Observed:
    """Everything status is derived from."""

    generation: int
    spec: FineTuneJobSpec
    job: dict | None            # the trainer Job, None if absent
    pods: list[dict]            # its pods, failed ones included
    previous: FineTuneJobStatus
    storage_uri: str | None     # the run's root, for artifact URIs
    now: datetime
    problems: list[str] = field(default_factory=list)  # spec problems that stop the job before a Job exists
    blocked: Blocker | None = None  # why reconcile did not create the Job (old pods, a foreign Job)
    kueue_wait: tuple[str, str] | None = None  # Kueue's (reason, message) while queued, read from its Workload


def _job_condition(job: dict, *types: str) -> dict | None:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") in types and cond.get("status") == "True":
            return cond
    return None


def _scheduling_blocker(pod: dict) -> Blocker | None:
    name = pod["metadata"]["name"]
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and cond.get("reason") == "Unschedulable":
            return Blocker("Unschedulable", (
                f"pod {name} cannot be scheduled: {cond.get('message') or 'no node fits'}; lower spec.resources "
                "(gpusPerNode, cpu, memory) or fix nodeSelector/tolerations and recreate the FineTuneJob, or add "
                "capacity (it is scheduled by itself once a node fits)"))
    return None


def _container_blocker(pod: dict) -> Blocker | None:
    name = pod["metadata"]["name"]
    st = pod.get("status") or {}
    for cs in (st.get("initContainerStatuses") or []) + (st.get("containerStatuses") or []):
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason, detail = waiting.get("reason"), (waiting.get("message") or "").strip()
        if reason == "CreateContainerConfigError" and "secret" in detail.lower():
            return Blocker("SecretNotFound", (
                f"pod {name} cannot start: {detail}; create that Secret (with that key) in namespace "
                f"{pod['metadata'].get('namespace', '')}, or fix spec.storage.credentialsSecret / "
                "spec.baseModel.tokenSecret and recreate the FineTuneJob (the pod starts by itself once the Secret exists)"))
        if reason == "CreateContainerConfigError":
            return Blocker(reason, f"pod {name} cannot start: {detail or reason}")
        if reason in IMAGE_PULL_REASONS:
            return Blocker(IMAGE_PULL_REASONS[reason], (
                f"pod {name} cannot pull image {cs.get('image') or ''}: {reason}: {detail or 'no detail'}; fix spec.images.trainer "
                "(or the operator's trainer image) or the registry's pull access and recreate the FineTuneJob "
                "(the kubelet keeps retrying, so a registry that comes back is picked up)"))
    return None


def pod_blocker(pods: list[dict]) -> Blocker | None:
    """The first trainer pod that cannot start, and why: scheduling, a missing Secret, an image pull."""
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        if pod["metadata"].get("deletionTimestamp") or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        found = _scheduling_blocker(pod) or _container_blocker(pod)
        if found is not None:
            return found
    return None


def _last_failed_pod(pods: list[dict]) -> dict | None:
    failed = [p for p in pods if (p.get("status") or {}).get("phase") == "Failed"]
    return max(failed, key=lambda p: ((terminated(p) or {}).get("finishedAt") or "", p["metadata"]["name"]),
               default=None)


def _created(pod: dict) -> datetime | None:
    stamp = pod["metadata"].get("creationTimestamp")
    return datetime.fromisoformat(stamp) if stamp else None


def count_attempts(pods: list[dict], indexed: bool, previous: int = 0,
                   counted_until: datetime | None = None) -> tuple[int, datetime | None]:
    """Trainer starts so far, and the creation time of the newest start counted.

    On several nodes each restart of the group counts once (rank 0's pods). A start is counted
    when its pod is first seen: an evicted pod is deleted before its replacement starts, so the
    pods that exist now undercount. Every pod created after the newest one counted is a new
    attempt (creation times have one-second resolution, which a replacement cannot beat: it
    starts only after its predecessor has stopped).
    """
    if indexed:
        pods = [p for p in pods if (p["metadata"].get("annotations") or {}).get(COMPLETION_INDEX_ANNOTATION) == "0"]
    times = [_created(p) for p in pods]
    known = [t for t in times if t is not None]
    newest = max(known + ([counted_until] if counted_until else []), default=None)
    if counted_until is None or len(known) < len(times):
        return max(previous, len(pods)), newest
    return previous + sum(t > counted_until for t in known), newest


def artifacts_for(storage_uri: str, spec: FineTuneJobSpec) -> Artifacts:
    """The trainer's conventional output layout under the run's storage root."""
    # Same names as kubetune_trainer.recipe; full fine-tuning writes whole weights to model/.
    if spec.method == "full":
        adapter, merged = None, f"{storage_uri}/model"
    else:
        adapter, merged = f"{storage_uri}/adapter", f"{storage_uri}/merged" if spec.output.merge_adapter else None
    return Artifacts(
        adapter_uri=adapter,
        merged_uri=merged,
        evaluation_report_uri=f"{storage_uri}/reports/evaluation.json",
        metrics_uri=f"{storage_uri}/metrics.jsonl",
    )


def _phase(obs: Observed, gang: GangOutcome | None) -> tuple[str, str, str]:
    """(phase, reason, message) for the current observation; `gang`: a failed multi-node attempt."""
    spec, job = obs.spec, obs.job
    if obs.problems:
        return "Failed", "InvalidSpec", "; ".join(obs.problems)
    if job is None:
        if obs.previous.phase in TERMINAL:
            return obs.previous.phase, obs.previous.phase, obs.previous.message or ""
        if obs.blocked is not None:
            return "Pending", obs.blocked.reason, obs.blocked.message
        return "Pending", "Creating", "creating the trainer Job"
    last_failure = _last_failed_pod(obs.pods)
    failure_text = describe_pod_failure(last_failure) if last_failure else ""
    if _job_condition(job, "Complete", "SuccessCriteriaMet") is not None:
        return "Succeeded", "Succeeded", "training finished; artifacts are under " + (obs.storage_uri or "storage")
    if gang is not None:  # the whole attempt failed: restarted as a gang, or the end
        return ("Pending" if gang.restart else "Failed"), gang.reason, gang.message
    if (cond := _job_condition(job, "Failed", "FailureTarget")) is not None:
        reason = cond.get("reason") or "JobFailed"
        message = f"{reason}: {cond.get('message') or 'the trainer Job failed'}"
        return "Failed", reason, f"{message}; last attempt: {failure_text}" if failure_text else message
    status = job.get("status") or {}
    retry_note = f" (retrying after: {failure_text})" if failure_text else ""
    if (job.get("spec") or {}).get("suspend"):
        if spec.suspend:
            return "Suspended", "Suspended", "suspended: pods stopped, checkpoints kept; set spec.suspend=false to continue"
        if spec.queue_name:
            return "Queued", *queued_reason_and_message(spec.queue_name, obs.kueue_wait)
        return "Pending", "Resuming", "resuming the trainer Job"
    if (blocker := pod_blocker(obs.pods)) is not None:  # before ready: one blocked rank stops them all
        return "Pending", blocker.reason, blocker.message + retry_note
    if status.get("ready", 0) > 0:
        if obs.previous.progress is not None or obs.previous.dataset is not None:
            return "Running", "Running", "training" + retry_note
        return "Validating", "Validating", "the trainer is validating the data and loading the model" + retry_note
    if status.get("active", 0) > 0:
        return "Pending", "PodsStarting", "waiting for trainer pods to be scheduled and start" + retry_note
    return "Pending", "PodsStarting", "waiting for the Job controller to create trainer pods" + retry_note


def conditions_for(phase: str, reason: str, message: str, generation: int, previous: list[Condition],
                   now: datetime) -> list[Condition]:
    """kstatus conditions: Reconciling while the job moves, Stalled once it failed or while it waits for
    a fix (it goes on by itself once fixed), Ready once it succeeded; no Ready while suspended.

    kstatus (Flux) reads the first true one of Reconciling and Stalled, and Ready=False as
    InProgress: so Reconciling is False while Stalled, and a suspended job (Current, as the user
    asked) carries no Ready (docs/gitops.md).
    """
    stalled = phase == "Failed" or (phase == "Pending" and reason in STALLED_WAITING)
    wanted = {
        "Ready": "True" if phase == "Succeeded" else "False",
        "Reconciling": "False" if stalled or phase in TERMINAL or phase == "Suspended" else "True",
        "Stalled": "True" if stalled else "False",
    }
    if phase == "Suspended":
        del wanted["Ready"]
    return kstatus_conditions(wanted, reason, message, generation, previous, now)


def observed_gang_outcome(obs: Observed) -> GangOutcome | None:
    """The outcome of a failed multi-node Job attempt (gang.py), None otherwise."""
    if obs.job is None or obs.problems or obs.spec.resources.nodes < 2:
        return None
    return gang_outcome(obs.job, obs.pods, obs.previous, obs.spec.backoff_limit, obs.spec.resources.nodes)


def _failures(obs: Observed, gang: GangOutcome | None) -> tuple[int | None, str | None]:
    """(failedAttempts, lastFailedJobUid): counted by the operator across a gang's Jobs, by the Job
    controller (its status.failed) on one node."""
    prev = obs.previous
    if gang is not None:
        return gang.failed_attempts or None, gang.job_uid
    if obs.job is not None and obs.spec.resources.nodes < 2:
        return ((obs.job.get("status") or {}).get("failed") or None), prev.last_failed_job_uid
    return prev.failed_attempts, prev.last_failed_job_uid


def derive_status(obs: Observed) -> FineTuneJobStatus:
    gang = observed_gang_outcome(obs)
    phase, reason, message = _phase(obs, gang)
    message = message[:MAX_MESSAGE]
    prev = obs.previous
    job_status = (obs.job or {}).get("status") or {}
    indexed = obs.spec.resources.nodes > 1
    attempts, attempt_start = count_attempts(obs.pods, indexed, prev.attempts or 0, prev.attempt_start_time)
    failed_attempts, last_failed_job_uid = _failures(obs, gang)
    completion = prev.completion_time
    if phase in TERMINAL and completion is None:
        completion = job_status.get("completionTime") or obs.now
    return FineTuneJobStatus(
        phase=phase,
        observed_generation=obs.generation,
        conditions=conditions_for(phase, reason, message, obs.generation, prev.conditions, obs.now),
        message=message,
        attempts=attempts or None,
        attempt_start_time=attempt_start,
        failed_attempts=failed_attempts,
        last_failed_job_uid=last_failed_job_uid,
        trainer_job=obs.job["metadata"]["name"] if obs.job is not None else prev.trainer_job,
        artifacts=artifacts_for(obs.storage_uri, obs.spec) if phase == "Succeeded" and obs.storage_uri else prev.artifacts,
        start_time=prev.start_time or job_status.get("startTime"),
        completion_time=completion,
    )


def status_patch(status: FineTuneJobStatus) -> dict:
    """A merge patch of the operator's fields only; None becomes null, which clears a stale value."""
    wire = status.to_wire()  # nested values without nulls
    names = {name: info.alias for name, info in FineTuneJobStatus.model_fields.items() if name in OPERATOR_FIELDS}
    return {"status": {alias: wire.get(alias) for alias in names.values()}}
