"""One reconciliation of a FineTuneJob: build what is missing, map suspend, publish status.

Called for every trigger (a FineTuneJob created, resumed or edited, events of its trainer Job
and pods, a retry, the resync), so whatever woke the operator up, it converges on the same state.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timezone

from pydantic import ValidationError

from kubetune.api import API_VERSION, Condition, FineTuneJobSpec, FineTuneJobStatus
from kubetune.api.finetunejob import (
    BUILT_FROM_ANNOTATION,
    SPEC_DIGEST_ANNOTATION,
    changed_fields,
    job_spec_wire,
    spec_digest,
)
from kubetune.api.resources import FINETUNEJOB
from kubetune.builders.common import Owner
from kubetune.builders.trainer import (
    build_headless_service,
    build_job,
    build_trainer_config,
    cluster_spec_problems,
    effective_storage,
    run_storage_uri,
)
from kubetune.context import Context
from kubetune.k8s import Rejected
from kubetune.metrics import PHASE_BOOK
from kubetune.finetunejob.identity import ensure_trainer_identity
from kubetune.finetunejob.kueue import read_kueue_wait
from kubetune.finetunejob.gang import NOT_COUNTED, GangOutcome, all_ranks_stopped, deadline_left
from kubetune.finetunejob.status import TERMINAL, Blocker, Observed, derive_status, observed_gang_outcome, status_patch

# Re-reads of a FineTuneJob whose status changed under a gang decision before the decision gives up
# (the caller's retry, or the resync, takes it from there).
GANG_DECISION_TRIES = 3
GANG_DECISION_FIELDS = ("failedAttempts", "lastFailedJobUid")


def job_summary(job: dict) -> tuple:
    """The parts of a trainer Job that status depends on."""
    st = job.get("status") or {}
    true_conditions = sorted(c.get("type", "") for c in st.get("conditions") or [] if c.get("status") == "True")
    return (bool((job.get("spec") or {}).get("suspend")), *(st.get(k, 0) for k in
            ("active", "ready", "failed", "succeeded", "terminating")), tuple(true_conditions))


def _desired_suspend(spec: FineTuneJobSpec) -> bool | None:
    """Job.spec.suspend the operator wants; None: not the operator's call (Kueue admits queued jobs)."""
    if spec.suspend:
        return True
    return None if spec.queue_name else False


def _job_finished(job: dict) -> bool:
    conditions = (job.get("status") or {}).get("conditions") or []
    return any(c.get("type") in ("Complete", "Failed", "FailureTarget") and c.get("status") == "True" for c in conditions)


def not_ours(obj: dict, owner: Owner) -> Blocker | None:
    """Why a child with the expected name must not be used: another FineTuneJob incarnation's, or foreign."""
    ref = next((r for r in obj["metadata"].get("ownerReferences") or [] if r.get("controller")), None)
    if ref is not None and ref.get("uid") == owner.uid:
        return None
    what = f"{obj['kind']} {obj['metadata']['name']}"
    if ref is not None and ref.get("kind") == FINETUNEJOB.kind and ref.get("name") == owner.name:
        return Blocker("PreviousRunTerminating", f"waiting for {what} of the deleted FineTuneJob {owner.name} "
                       f"(uid {ref.get('uid')}) to be garbage-collected before creating this run's")
    return Blocker("NameConflict", f"{what} already exists and was not created for this FineTuneJob; the operator "
                   "does not adopt it: delete or rename it (or rename the FineTuneJob)")


def _live_pods_of_previous_job(ctx: Context, owner: Owner) -> Blocker | None:
    """A replacement Job starts only once the old one's pods stopped: two trainers must never share a run."""
    pods = ctx.kube.list("v1", "Pod", owner.namespace, f"batch.kubernetes.io/job-name={owner.job_name}")
    live = sorted(p["metadata"]["name"] for p in pods if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed"))
    if not live:
        return None
    return Blocker("PreviousPodsTerminating", f"waiting for pod(s) {', '.join(live)} of the previous trainer Job "
                   f"{owner.job_name} to stop before creating a new one")


def _ensure_children(ctx: Context, owner: Owner, spec: FineTuneJobSpec, previous: FineTuneJobStatus,
                     first: bool = False) -> tuple[dict | None, Blocker | None]:
    """Create whatever is missing, the Job last: a Job implies its Service and the namespace's
    trainer identity exist (the trainer config rides in the Job's pod template). Returns the Job, or why it was not created (a child of
    someone else holds a name, old pods still run)."""
    if (blocker := ensure_trainer_identity(ctx, owner.namespace)) is not None:
        return None, blocker
    children = []
    if spec.resources.nodes > 1:
        children.append(build_headless_service(owner, ctx.settings))
    for obj in children:
        stored, _ = ctx.kube.create_if_absent(obj)
        if (blocker := not_ours(stored, owner)) is not None:
            return None, blocker
    # A FineTuneJob's first Job needs no look for old pods (a list of the namespace's pods on every
    # create): pods of an earlier FineTuneJob of the same name write another run (its uid), unless
    # this one resumes that run.
    if (not first or spec.resume_from_run) and (blocker := _live_pods_of_previous_job(ctx, owner)) is not None:
        return None, blocker
    deadline = deadline_left(spec.active_deadline_seconds, previous, datetime.now(timezone.utc))
    job, _ = ctx.kube.create_if_absent(_with_spec_digest(
        build_job(owner, build_trainer_config(owner, spec, ctx.settings), ctx.settings, deadline), spec))
    blocker = not_ours(job, owner)
    return (None, blocker) if blocker else (job, None)


def _with_spec_digest(job: dict, spec: FineTuneJobSpec) -> dict:
    """The Job, annotated with what it was built from: later spec edits are compared with it."""
    annotations = job["metadata"].setdefault("annotations", {})
    annotations[SPEC_DIGEST_ANNOTATION] = spec_digest(spec)
    annotations[BUILT_FROM_ANNOTATION] = json.dumps(job_spec_wire(spec), sort_keys=True, separators=(",", ":"))
    return job


def ignored_fields(job: dict, spec: FineTuneJobSpec) -> list[str]:
    """The spec fields edited since the Job was built (empty if the Job predates the annotation)."""
    built_from = (job["metadata"].get("annotations") or {}).get(BUILT_FROM_ANNOTATION)
    try:
        before = json.loads(built_from) if built_from else None
    except ValueError:
        before = None
    return changed_fields(before, job_spec_wire(spec)) if isinstance(before, dict) else []


def _acted_generation(job: dict | None, spec: FineTuneJobSpec, previous: FineTuneJobStatus, generation: int,
                      problems: list[str]) -> int:
    """The generation the status may call acted on (observedGeneration): this one, unless the Job
    runs an earlier spec (a Job's pod template is immutable; only spec.suspend is applied to it) or
    the job had finished before the edit. A Job without the digest predates it: taken as current."""
    if job is not None:
        built_from = (job["metadata"].get("annotations") or {}).get(SPEC_DIGEST_ANNOTATION)
        if built_from is None or built_from == spec_digest(spec):
            return generation
        return previous.observed_generation or generation
    if previous.phase in TERMINAL and not problems:
        return previous.observed_generation or generation
    return generation


def _spec_not_applied(status: FineTuneJobStatus) -> Condition | None:
    return next((c for c in status.conditions if c.type == "SpecApplied" and c.status == "False"), None)


def _spec_applied_condition(acted: int, generation: int, previous: FineTuneJobStatus, now: datetime,
                            fields: list[str]) -> Condition:
    before = _spec_not_applied(previous)
    what = f" ({', '.join(fields)} changed)" if fields else ""
    return Condition(
        type="SpecApplied", status="False", reason="SpecChangeIgnored", observed_generation=generation,
        message=(f"generation {generation} is not applied{what}: the trainer Job runs (or ran) generation {acted}'s "
                 "spec, and only spec.suspend is applied after it was created; revert the change, or delete and "
                 "recreate the FineTuneJob to apply it"),
        last_transition_time=before.last_transition_time if before else now,
    )


def _failed_for_spec(previous: FineTuneJobStatus) -> bool:
    """Failed before any trainer Job ran because of its spec (schema-valid but unusable, or refused
    by the apiserver): a corrected spec (a new generation) is worth another try."""
    return previous.phase == "Failed" and _stalled_reason(previous) == "InvalidSpec"


def reconcile(ctx: Context, ftj: dict, logger: logging.Logger, job: dict | None = None,
              fresh: bool = False, tries_left: int = GANG_DECISION_TRIES) -> FineTuneJobStatus | None:
    """Converge one FineTuneJob and return the status it published (None: being deleted).
    `job`: its trainer Job when the caller already has it; `fresh`: the create trigger (no status yet), so
    unless a status shows it was handled before, its children are created straight away
    without looking the Job up first. A child creation the apiserver forbids (403) is raised
    again after the status says so, for the caller to retry with backoff. A failed multi-node
    attempt is restarted as a gang here (see _restart_gang)."""
    meta = ftj["metadata"]
    if meta.get("deletionTimestamp"):
        return None  # being garbage-collected (children go first in foreground deletion): never recreate
    ctx.last_reconciled[f"{meta['namespace']}/{meta['name']}"] = time.monotonic()
    owner = Owner(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"])
    try:
        previous = FineTuneJobStatus.model_validate(ftj.get("status") or {})
    except ValidationError:
        previous = FineTuneJobStatus()  # unreadable status: rebuild it from the cluster
    generation = meta.get("generation") or 1
    if _failed_for_spec(previous) and previous.observed_generation != generation:
        previous = previous.model_copy(update={"phase": None, "completion_time": None})  # fixed in place: retry
    spec = FineTuneJobSpec.model_validate(ftj["spec"])  # the CRD schema already enforced it
    problems = cluster_spec_problems(spec, ctx.settings)
    pods, storage_uri, blocked, refused, kueue_wait = [], None, None, None, None
    if problems:
        job = None
    else:
        storage_uri = run_storage_uri(effective_storage(spec, ctx.settings), owner, spec.resume_from_run)
        if job is None and not (fresh and previous.phase is None):
            job = ctx.kube.get("batch/v1", "Job", owner.namespace, owner.job_name)
        if job is not None and (blocked := not_ours(job, owner)) is not None:
            job = None  # only the Job the operator created for this FineTuneJob drives its status
        elif job is None and previous.phase not in TERMINAL:
            try:
                job, blocked = _ensure_children(ctx, owner, spec, previous, first=fresh and previous.phase is None)
            except Rejected as err:
                refused = err
                logger.warning("%s", err)
                if err.invalid:  # the same spec builds the same object: Failed until the spec changes
                    problems = [f"{err}; fix the spec (the next generation is tried again)"]
                else:  # RBAC, a quota or a policy: may be lifted without a spec change
                    blocked = Blocker(err.reason_word, f"{err}; retried with backoff until it is allowed")
            if job is not None:
                logger.info("created trainer Job %s", owner.job_name)
        if job is not None:
            want = _desired_suspend(spec)
            if want is not None and bool(job["spec"].get("suspend")) != want and not _job_finished(job):
                job = ctx.kube.merge_patch("batch/v1", "Job", owner.namespace, owner.job_name,
                                           {"spec": {"suspend": want}}) or job
            counts = job.get("status") or {}
            # Pods ended but not yet counted in failed/succeeded (a FailJob rule marks the Job failing
            # first) still hold the trainer's last words.
            uncounted = counts.get("uncountedTerminatedPods") or {}
            if any(counts.get(k) for k in ("active", "failed", "succeeded", "terminating")) or any(uncounted.values()):
                pods = ctx.kube.list("v1", "Pod", owner.namespace,
                                     f"batch.kubernetes.io/controller-uid={job['metadata']['uid']}")
            ctx.handled_jobs[job["metadata"]["uid"]] = job_summary(job)
            if spec.queue_name and not spec.suspend and job["spec"].get("suspend"):
                kueue_wait = read_kueue_wait(ctx.kube, owner.namespace, job["metadata"]["uid"])
                ctx.kueue_verdicts[job["metadata"]["uid"]] = (f"{owner.namespace}/{owner.name}", kueue_wait)
    now = datetime.now(timezone.utc)
    acted = _acted_generation(job, spec, previous, generation, problems)
    observed = Observed(generation=acted, spec=spec, job=job, pods=pods, previous=previous,
                        storage_uri=storage_uri, now=now, problems=problems, blocked=blocked,
                        kueue_wait=kueue_wait)
    status = derive_status(observed)
    if acted != generation:  # kstatus/Flux see observedGeneration < generation; this says why
        fields = ignored_fields(job, spec) if job is not None else []
        status.conditions.append(_spec_applied_condition(acted, generation, previous, now, fields))
    gang = observed_gang_outcome(observed)
    if gang is not None and gang.job_uid != previous.last_failed_job_uid:
        stored = _record_gang_failure(ctx, ftj, owner, previous, status, gang)
        if stored is None:
            return _decide_again(ctx, ftj, logger, tries_left)
    else:
        stored = publish(ctx, ftj, previous, status)
    if gang is not None and gang.restart and stored is not None and _restart_gang(ctx, owner, job, logger):
        return reconcile(ctx, stored, logger, tries_left=tries_left)  # create the next attempt's Job now
    if refused is not None and not refused.invalid:
        raise refused
    return status


def _restart_gang(ctx: Context, owner: Owner, job: dict, logger: logging.Logger) -> bool:
    """Delete a failed gang attempt's Job once all its ranks stopped (then the next one may start;
    the trainer resumes from the newest complete checkpoint). Only that Job (uid precondition): a
    newer attempt under the same name is never touched. True if it was deleted now."""
    if not all_ranks_stopped(job) or job["metadata"].get("deletionTimestamp"):
        return False  # FailureTarget: the Job controller is still stopping ranks; its next event comes back here
    ctx.kube.delete("batch/v1", "Job", owner.namespace, owner.job_name, uid=job["metadata"]["uid"])
    logger.info("restarting the gang: deleted failed trainer Job %s (uid %s)", owner.job_name, job["metadata"]["uid"])
    return True


def _record_gang_failure(ctx: Context, ftj: dict, owner: Owner, previous: FineTuneJobStatus,
                         status: FineTuneJobStatus, gang: GangOutcome) -> dict | None:
    """Write a newly failed gang attempt's count and uid, only onto the status the decision was made
    from and only while that Job is still the current one (an event can be late), so that no
    reconcile, concurrent or repeated after an operator restart, counts it twice. Returns the
    stored FineTuneJob, None if the decision must be made again on fresh reads."""
    current = ctx.kube.get("batch/v1", "Job", owner.namespace, owner.job_name)
    if current is None or current["metadata"]["uid"] != gang.job_uid:
        return None
    stored = publish(ctx, ftj, previous, status, guarded=True)
    if stored is not None and gang.restart:  # a failed job gets its Failed Event from publish()
        ctx.kube.post_event(ftj, "Normal" if gang.cause in NOT_COUNTED else "Warning", "GangRestart", gang.message)
    return stored


def _decide_again(ctx: Context, ftj: dict, logger: logging.Logger, tries_left: int) -> FineTuneJobStatus | None:
    """The FineTuneJob changed since it was read (the trainer's progress, another reconcile):
    decide again on what is stored now."""
    meta = ftj["metadata"]
    if tries_left <= 1:
        raise RuntimeError(f"FineTuneJob {meta['namespace']}/{meta['name']} kept changing while a failed gang "
                           "attempt was being handled; retried later")
    fresh = ctx.kube.get(FINETUNEJOB.api_version, FINETUNEJOB.kind, meta["namespace"], meta["name"])
    return None if fresh is None else reconcile(ctx, fresh, logger, tries_left=tries_left - 1)


def publish(ctx: Context, ftj: dict, previous: FineTuneJobStatus, status: FineTuneJobStatus,
            guarded: bool = False) -> dict | None:
    """Patch the status if it changed, with an Event for every phase transition. Returns the stored
    FineTuneJob (`ftj` itself if nothing changed), None if it is gone; `guarded`: only if nobody
    wrote it since it was read (None also when somebody did)."""
    patch, before = status_patch(status), status_patch(previous)
    if patch == before:
        return ftj
    if not guarded:
        # Written only with the gang decision they record (guarded): a reconcile that read an
        # older status must not take them back.
        for alias in GANG_DECISION_FIELDS:
            if patch["status"][alias] == before["status"][alias]:
                del patch["status"][alias]
    meta = ftj["metadata"]
    stored = ctx.kube.patch_status(API_VERSION, "FineTuneJob", meta["namespace"], meta["name"], patch,
                                   resource_version=meta.get("resourceVersion") if guarded else None)
    if stored is None:
        return None  # deleted meanwhile, or (guarded) changed meanwhile
    if status.phase != previous.phase:
        kind = "Warning" if status.phase == "Failed" else "Normal"
        ctx.kube.post_event(ftj, kind, status.phase, status.message or "")
        PHASE_BOOK.record(f"{meta['namespace']}/{meta['name']}", status.phase)
    stalled = _stalled_reason(status)
    if stalled is not None and status.phase != "Failed" and stalled != _stalled_reason(previous):
        # Waiting for a fix (Unschedulable, SecretNotFound, ...): the phase stays Pending, the Event says why.
        ctx.kube.post_event(ftj, "Warning", stalled, status.message or "")
    ignored, known = _spec_not_applied(status), _spec_not_applied(previous)
    if ignored is not None and (known is None or known.observed_generation != ignored.observed_generation):
        ctx.kube.post_event(ftj, "Warning", "SpecChangeIgnored", ignored.message or "")  # once per ignored generation
    return stored


def _stalled_reason(status: FineTuneJobStatus) -> str | None:
    return next((c.reason for c in status.conditions if c.type == "Stalled" and c.status == "True"), None)
