"""kopf handlers: they only pick the FineTuneJob to reconcile and call reconcile().

Only event handlers, no create/update/resume handlers: those would make kopf diff every event
of every FineTuneJob against a copy of its spec kept in an annotation, and patch that annotation
once per FineTuneJob (a write per create, most of the operator's CPU in a burst). What they
decided is read from the object instead (reconcile_trigger): `metadata.generation` against the
generation the status says was acted on. Failed reconciles are retried by retries.RetryQueue.

No deletion handlers (and no kopf timers or daemons, which would also need one)
are registered, so kopf adds no finalizer: deleting a FineTuneJob never waits
for the operator, and owner references let the garbage collector remove its
children. The periodic resync is a plain task started with the operator.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

import kopf

from kubetune.api import FineTuneJobStatus
from kubetune.api.resources import FINETUNEJOB
from kubetune.builders.common import MANAGED_BY, Owner
from kubetune.metrics import JOB_GAUGES, PHASE_BOOK, observe_reconcile
from kubetune.context import Context
from kubetune.k8s import Rejected, is_transient
from kubetune.finetunejob.kueue import GROUP as KUEUE_GROUP, JOB_UID_LABEL, kueue_wait
from kubetune.finetunejob.reconcile import job_summary, reconcile
from kubetune.finetunejob.status import TERMINAL, pod_blocker

FTJ = FINETUNEJOB.kopf_resource
TRAINER_POD_SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY},app.kubernetes.io/component=trainer"


def handled_generation(status: dict) -> int | None:
    """The newest generation the status says the operator handled: acted on (observedGeneration),
    or knowingly left unapplied (a SpecApplied=False condition's own observedGeneration)."""
    ignored = next((c.get("observedGeneration") for c in status.get("conditions") or []
                    if c.get("type") == "SpecApplied" and c.get("status") == "False"), None)
    return ignored or status.get("observedGeneration")


def reconcile_trigger(event_type: str | None, ftj: dict, acted: int | None) -> str | None:
    """Why a FineTuneJob's watch event calls for a reconcile ("create", "update", "resume",
    "progress"), or None. `acted`: the generation this process last reconciled it at (None: not
    since it started); an event whose body predates that reconcile's own status write is not a
    reason to do it again."""
    meta = ftj["metadata"]
    if event_type == "DELETED" or meta.get("deletionTimestamp"):
        return None
    status = ftj.get("status") or {}
    generation = meta.get("generation") or 1
    if acted != generation:
        if not status.get("phase"):
            return "create"
        if handled_generation(status) != generation:
            return "update"
        if acted is None and status["phase"] not in TERMINAL:
            return "resume"  # the operator (re)started: converge what it has not seen yet
    if status.get("phase") == "Validating" and (status.get("progress") or status.get("dataset")):
        return "progress"  # the trainer's first report turns Validating into Running
    return None


def reconcile_or_retry(ctx: Context, ftj: dict, logger: logging.Logger, trigger: str,
                       **kwargs: Any) -> FineTuneJobStatus | None:
    """reconcile(); if it raises, a retry is scheduled (what may pass: an overloaded apiserver,
    a forbidden child create whose status already says which permission or quota) and the
    error is logged, not raised: kopf does not retry event handlers."""
    meta = ftj["metadata"]
    key = f"{meta['namespace']}/{meta['name']}"
    # Taken as handled even if it fails: from here on a failure is the retry queue's business, not
    # a reason for the next event (say, this reconcile's own status write) to try again at once.
    ctx.acted_generations[meta["uid"]] = meta.get("generation") or 1
    try:
        with observe_reconcile(trigger):
            status = reconcile(ctx, ftj, logger, **kwargs)
    except Exception as err:  # noqa: BLE001 - every failure is retried, then left to the resync
        delay = ctx.retries.failed(key, err)
        then = f"retried in {delay:.0f} s" if delay is not None else "no retries left, the periodic resync takes it"
        if isinstance(err, Rejected):  # reconcile() has logged what was refused
            logger.warning("reconcile of %s did not finish; %s", key, then)
        elif is_transient(err):
            logger.warning("reconcile of %s: apiserver busy (%s %s); %s", key, err.status, err.reason, then)
        else:
            logger.exception("reconcile of %s failed; %s", key, then)
        return None
    ctx.retries.done(key)
    return status


def reconcile_stored(ctx: Context, key: str, logger: logging.Logger, trigger: str) -> None:
    """Read a FineTuneJob again and reconcile it (a retry, the resync)."""
    namespace, name = key.split("/", 1)
    try:
        ftj = ctx.kube.get(FINETUNEJOB.api_version, FINETUNEJOB.kind, namespace, name)
    except Exception as err:  # noqa: BLE001 - the read is retried like the reconcile
        ctx.retries.failed(key, err)
        logger.warning("reading %s for a %s failed: %s", key, trigger, err)
        return
    if ftj is None:
        ctx.retries.done(key)  # deleted; the watch's DELETED event drops it from the book
        return
    reconcile_or_retry(ctx, ftj, logger, trigger)


@kopf.on.event("batch", "v1", "jobs", labels={"app.kubernetes.io/managed-by": MANAGED_BY})
def on_trainer_job(type: str | None, body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    """The trainer Job changed (pods started, failed, finished): refresh its owner's status."""
    ctx: Context = memo.ctx
    uid = body.metadata.uid
    if type == "DELETED":
        ctx.handled_jobs.pop(uid, None)
        ctx.kueue_verdicts.pop(uid, None)
    elif ctx.handled_jobs.get(uid) == job_summary(body):
        return  # e.g. the Job controller's bookkeeping: nothing the status depends on moved
    owner = next((ref for ref in body.metadata.get("ownerReferences", [])
                  if ref.get("controller") and ref.get("apiVersion") == FINETUNEJOB.api_version and ref.get("kind") == FINETUNEJOB.kind),
                 None)
    if owner is None:
        return
    ftj = ctx.kube.get(FINETUNEJOB.api_version, FINETUNEJOB.kind, body.metadata.namespace, owner["name"])
    if ftj is None:
        return  # the owner is gone: garbage collection handles this Job
    expected = _owner(ftj).job_name
    if ftj["metadata"]["uid"] != owner["uid"]:
        # A deleted incarnation's Job: once it is gone, the recreated FineTuneJob may create its own.
        if type == "DELETED" and body.metadata.name == expected:
            reconcile_or_retry(ctx, ftj, logger, "job")
        return
    if body.metadata.name != expected:
        return  # not the Job the operator created for it, whatever its labels and owner say
    # A deleted Job is looked up again (and recreated unless the FineTuneJob is finished).
    reconcile_or_retry(ctx, ftj, logger, "job", job=None if type == "DELETED" else dict(body))


@kopf.on.startup()
def watch_only_trainer_pods(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Server-side filtering: the operator never receives other pods (kopf's `labels=` filters client-side).
    settings.watching.label_selectors["v1", "pods"] = TRAINER_POD_SELECTOR


@kopf.on.event("", "v1", "pods", labels={"app.kubernetes.io/managed-by": MANAGED_BY,
                                         "app.kubernetes.io/component": "trainer"})
def on_trainer_pod(type: str | None, body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    """A trainer pod got stuck or unstuck (unschedulable, waiting for a Secret or an image), or went away.

    The Job's counters do not change for these, so its events would not show them. Other pod
    changes are left to the Job's events: only a changed blocker or a deletion (a replacement
    Job waits for the old pods to go) reconciles, which keeps the pod stream cheap.
    """
    ctx: Context = memo.ctx
    uid = body.metadata.uid
    if type == "DELETED":
        ctx.pod_blockers.pop(uid, None)
    else:
        blocker = pod_blocker([dict(body)])
        reason = blocker.reason if blocker else None
        if ctx.pod_blockers.get(uid) == reason:
            return
        ctx.pod_blockers[uid] = reason
    ftj = _finetunejob_of_pod(ctx, dict(body))
    if ftj is None or (type == "DELETED" and (ftj.get("status") or {}).get("phase") in TERMINAL):
        return
    reconcile_or_retry(ctx, ftj, logger, "pod")


@kopf.on.event(KUEUE_GROUP, "workloads", labels={JOB_UID_LABEL: kopf.PRESENT})
def on_kueue_workload(type: str | None, body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    """Kueue gave a queued trainer Job's Workload a new verdict (quota, preemption, admission).

    Kueue writes it on the Workload, often after the Job's last event (a preempted job is
    requeued once its pods are gone), so without this the status would keep the old reason until
    the resync. Only Workloads of Jobs a reconcile found queued are looked at, and only a verdict
    other than the one that reconcile read leads to another. A deleted Workload is no reason to
    forget its Job: Kueue recreates the Workload of a queued Job whose pod template changed, and
    the new one's verdict counts too (the Job's own deletion forgets it). Without Kueue's CRD at
    startup kopf watches nothing here (it logs that the resource is unresolved).
    """
    ctx: Context = memo.ctx
    known = ctx.kueue_verdicts.get(body.metadata.labels.get(JOB_UID_LABEL))
    if known is None:
        return  # not a trainer Job, or one never queued while this process ran
    key, verdict = known
    if kueue_wait([dict(body)]) != verdict:
        reconcile_stored(ctx, key, logger, "kueue")


def _owner(ftj: dict) -> Owner:
    meta = ftj["metadata"]
    return Owner(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"])


def _finetunejob_of_pod(ctx: Context, pod: dict) -> dict | None:
    """The FineTuneJob whose Job name the pod carries: by the pod's instance label (the FineTuneJob's
    name unless it was shortened), else through its Job's owner (the Job of a deleted pod may be gone)."""
    meta = pod["metadata"]
    labels = meta.get("labels") or {}

    def matching(name: str | None) -> dict | None:
        ftj = ctx.kube.get(FINETUNEJOB.api_version, FINETUNEJOB.kind, meta["namespace"], name) if name else None
        return ftj if ftj is not None and _owner(ftj).job_name == labels.get("batch.kubernetes.io/job-name") else None

    if (ftj := matching(labels.get("app.kubernetes.io/instance"))) is not None:
        return ftj
    job_ref = next((r for r in meta.get("ownerReferences") or [] if r.get("controller") and r.get("kind") == "Job"), None)
    job = ctx.kube.get("batch/v1", "Job", meta["namespace"], job_ref["name"]) if job_ref else None
    owner = next((r for r in (job or {}).get("metadata", {}).get("ownerReferences") or []
                  if r.get("controller") and r.get("kind") == FINETUNEJOB.kind), None)
    return matching(owner["name"]) if owner else None


@kopf.on.event(*FTJ)
def on_finetunejob_event(type: str | None, body: kopf.Body, memo: kopf.Memo, logger: logging.Logger,
                         **_: Any) -> None:
    """Every change of a FineTuneJob: count phases for /metrics, and reconcile when reconcile_trigger
    says so (most events, the trainer's progress patches among them, need nothing)."""
    ctx: Context = memo.ctx
    status = body.get("status", {})
    key = f"{body.metadata.namespace}/{body.metadata.name}"
    PHASE_BOOK.record(key, None if type == "DELETED" else status.get("phase") or "Pending")
    JOB_GAUGES.record(body.metadata.namespace, body.metadata.name, None if type == "DELETED" else status)
    if type == "DELETED":
        ctx.last_reconciled.pop(key, None)
        ctx.acted_generations.pop(body.metadata.uid, None)
        ctx.retries.done(key)
        return
    trigger = reconcile_trigger(type, body, ctx.acted_generations.get(body.metadata.uid))
    if trigger is not None:
        reconcile_or_retry(ctx, dict(body), logger, trigger, fresh=trigger == "create")


async def resync_loop(ctx: Context, logger: logging.Logger) -> None:
    """Re-reconcile every unfinished FineTuneJob now and then: the safety net for lost events."""
    while True:
        # Jittered, so operators started together (or many jobs) do not hit the apiserver in step.
        await asyncio.sleep(ctx.settings.resync_seconds * random.uniform(0.9, 1.1))
        for key in PHASE_BOOK.keys_except(TERMINAL):
            if time.monotonic() - ctx.last_reconciled.get(key, 0.0) < ctx.settings.resync_seconds:
                continue  # an event reconciled it recently; a resync would only repeat that work
            await asyncio.to_thread(reconcile_stored, ctx, key, logger, "resync")


def start_retries(ctx: Context) -> None:
    logger = logging.getLogger("kubetune.finetunejob.retries")
    ctx.retries.start(asyncio.get_running_loop(), lambda key: reconcile_stored(ctx, key, logger, "retry"))
