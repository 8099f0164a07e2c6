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
from kubetune.api.trainer_config import EXIT_BAD_INPUT, EXIT_PREEMPTED
from kubetune.conditions import kstatus_conditions
from kubetune.builders.trainer.job import COMPLETION_INDEX_ANNOTATION, CONTAINER

OPERATOR_FIELDS = frozenset(
    {"phase", "observed_generation", "conditions", "message", "attempts", "artifacts", "start_time", "completion_time"}
)
TERMINAL = frozenset({"Succeeded", "Failed"})
MAX_MESSAGE = 1024


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


def _job_condition(job: dict, *types: str) -> dict | None:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") in types and cond.get("status") == "True":
            return cond
    return None


def _terminated(pod: dict) -> dict | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == CONTAINER:
            return (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated")
    return None


def _disrupted(pod: dict) -> dict | None:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "DisruptionTarget" and cond.get("status") == "True":
            return cond
    return None


def describe_pod_failure(pod: dict) -> str:
    """One line on why a trainer pod stopped, with the trainer's own last words."""
    name = pod["metadata"]["name"]
    disruption = _disrupted(pod)
    term = _terminated(pod) or {}
    code = term.get("exitCode")
    if code == EXIT_PREEMPTED:
        text = f"pod {name} was preempted and saved a checkpoint (exit {code}); not counted against backoffLimit"
    elif disruption is not None:
        text = (f"pod {name} was disrupted ({disruption.get('reason') or 'DisruptionTarget'}); "
                "not counted against backoffLimit")
    elif code == EXIT_BAD_INPUT:
        text = f"pod {name}: the trainer rejected its input (exit {code}); fix the dataset or spec and recreate the job"
    elif code is not None:
        text = f"pod {name}: trainer exited {code}" + (f" ({term['reason']})" if term.get("reason") else "")
    else:
        text = f"pod {name} failed: {(pod.get('status') or {}).get('reason') or 'unknown reason'}"
    last_words = (term.get("message") or "").strip()
    if last_words:
        text += f": {last_words.splitlines()[-1]}"
    return text


def _last_failed_pod(pods: list[dict]) -> dict | None:
    failed = [p for p in pods if (p.get("status") or {}).get("phase") == "Failed"]
    return max(failed, key=lambda p: ((_terminated(p) or {}).get("finishedAt") or "", p["metadata"]["name"]),
               default=None)


def count_attempts(pods: list[dict], indexed: bool) -> int:
    """Trainer starts so far; on several nodes each restart of the group counts once (rank 0's pods)."""
    if indexed:
        pods = [p for p in pods if (p["metadata"].get("annotations") or {}).get(COMPLETION_INDEX_ANNOTATION) == "0"]
    return len(pods)


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


def _phase(obs: Observed) -> tuple[str, str, str]:
    """(phase, reason, message) for the current observation."""
    spec, job = obs.spec, obs.job
    if obs.problems:
        return "Failed", "InvalidSpec", "; ".join(obs.problems)
    if job is None:
        if obs.previous.phase in TERMINAL:
            return obs.previous.phase, obs.previous.phase, obs.previous.message or ""
        return "Pending", "Creating", "creating the trainer Job"
    last_failure = _last_failed_pod(obs.pods)
    failure_text = describe_pod_failure(last_failure) if last_failure else ""
    if _job_condition(job, "Complete", "SuccessCriteriaMet") is not None:
        return "Succeeded", "Succeeded", "training finished; artifacts are under " + (obs.storage_uri or "storage")
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
            return "Queued", "Queued", f"waiting for Kueue to admit it from queue {spec.queue_name}"
        return "Pending", "Resuming", "resuming the trainer Job"
    if status.get("ready", 0) > 0:
        if obs.previous.progress is not None or obs.previous.dataset is not None:
            return "Running", "Running", "training" + retry_note
        return "Validating", "Validating", "the trainer is validating the data and loading the model" + retry_note
    if status.get("active", 0) > 0:
        return "Pending", "PodsStarting", "waiting for trainer pods to be scheduled and start" + retry_note
    return "Pending", "PodsStarting", "waiting for the Job controller to create trainer pods" + retry_note


def conditions_for(phase: str, reason: str, message: str, generation: int, previous: list[Condition],
                   now: datetime) -> list[Condition]:
    """kstatus conditions: Reconciling while the job moves, Stalled once it failed, Ready once it succeeded."""
    wanted = {
        "Ready": "True" if phase == "Succeeded" else "False",
        "Reconciling": "False" if phase in TERMINAL or phase == "Suspended" else "True",
        "Stalled": "True" if phase == "Failed" else "False",
    }
    return kstatus_conditions(wanted, reason, message, generation, previous, now)


def derive_status(obs: Observed) -> FineTuneJobStatus:
    phase, reason, message = _phase(obs)
    message = message[:MAX_MESSAGE]
    prev = obs.previous
    job_status = (obs.job or {}).get("status") or {}
    indexed = obs.spec.resources.nodes > 1
    attempts = max(prev.attempts or 0, count_attempts(obs.pods, indexed))
    completion = prev.completion_time
    if phase in TERMINAL and completion is None:
        completion = job_status.get("completionTime") or obs.now
    return FineTuneJobStatus(
        phase=phase,
        observed_generation=obs.generation,
        conditions=conditions_for(phase, reason, message, obs.generation, prev.conditions, obs.now),
        message=message,
        attempts=attempts or None,
        artifacts=artifacts_for(obs.storage_uri, obs.spec) if phase == "Succeeded" and obs.storage_uri else prev.artifacts,
        start_time=prev.start_time or job_status.get("startTime"),
        completion_time=completion,
    )


def status_patch(status: FineTuneJobStatus) -> dict:
    """A merge patch of the operator's fields only; None becomes null, which clears a stale value."""
    wire = status.to_wire()  # nested values without nulls
    names = {name: info.alias for name, info in FineTuneJobStatus.model_fields.items() if name in OPERATOR_FIELDS}
    return {"status": {alias: wire.get(alias) for alias in names.values()}}
