"""kopf handlers: they only pick the FineTuneJob to reconcile and call reconcile().

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

from kubetune.api.resources import FINETUNEJOB
from kubetune.builders.common import MANAGED_BY, Owner
from kubetune.metrics import JOB_GAUGES, PHASE_BOOK, observe_reconcile
from kubetune.context import Context
from kubetune.k8s import HANDLER_RETRIES, Rejected, is_transient, retry_delay
from kubetune.finetunejob.reconcile import job_summary, reconcile
from kubetune.finetunejob.status import TERMINAL, pod_blocker

FTJ = FINETUNEJOB.kopf_resource
TRAINER_POD_SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY},app.kubernetes.io/component=trainer"
# Fields whose change after the Job exists is applied; the Job's pod template is immutable.
APPLIED_ON_UPDATE = {("suspend",)}


def _reconcile_with_backoff(what: str, retry: int, memo: kopf.Memo, body: kopf.Body, logger: logging.Logger,
                            **kwargs: Any):
    """reconcile(), with kopf retrying (at most HANDLER_RETRIES times, exponential backoff with jitter,
    at least the apiserver's Retry-After) what may pass: an overloaded apiserver (429, 5xx) or a
    forbidden child create (the status already says which permission or quota)."""
    with observe_reconcile(what):
        try:
            return reconcile(memo.ctx, dict(body), logger, **kwargs)
        except Rejected as err:
            raise kopf.TemporaryError(str(err), delay=retry_delay(retry, err)) from err
        except Exception as err:
            if is_transient(err):
                raise kopf.TemporaryError(f"apiserver busy ({err.status}): {err.reason}",
                                          delay=retry_delay(retry, err)) from err
            raise  # anything else: kopf's own backoff, still bounded by HANDLER_RETRIES


@kopf.on.create(*FTJ, retries=HANDLER_RETRIES)
def on_create(body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, retry: int, **_: Any) -> None:
    _reconcile_with_backoff("create", retry, memo, body, logger, fresh=True)


@kopf.on.resume(*FTJ, retries=HANDLER_RETRIES)
def on_resume(body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, retry: int, **_: Any) -> None:
    """The operator (re)started and finds an existing FineTuneJob: converge it."""
    _reconcile_with_backoff("resume", retry, memo, body, logger)


@kopf.on.update(*FTJ, field="spec", retries=HANDLER_RETRIES)
def on_spec_change(body: kopf.Body, diff: kopf.Diff, memo: kopf.Memo, logger: logging.Logger, retry: int,
                   **_: Any) -> None:
    status = _reconcile_with_backoff("update", retry, memo, body, logger)
    ignored = sorted(".".join(map(str, d.field)) for d in diff if tuple(d.field[:1]) not in APPLIED_ON_UPDATE)
    not_applied = status is not None and any(c.type == "SpecApplied" and c.status == "False" for c in status.conditions)
    if ignored and not_applied and retry == 0:
        memo.ctx.kube.post_event(dict(body), "Warning", "SpecChangeIgnored",
                                 f"spec.{', spec.'.join(ignored)} changed after the trainer Job was created and is not "
                                 "applied (only spec.suspend is); delete and recreate the FineTuneJob to change it")


@kopf.on.event("batch", "v1", "jobs", labels={"app.kubernetes.io/managed-by": MANAGED_BY})
def on_trainer_job(type: str | None, body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    """The trainer Job changed (pods started, failed, finished): refresh its owner's status."""
    ctx: Context = memo.ctx
    uid = body.metadata.uid
    if type == "DELETED":
        ctx.handled_jobs.pop(uid, None)
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
            with observe_reconcile("job"):
                reconcile(ctx, ftj, logger)
        return
    if body.metadata.name != expected:
        return  # not the Job the operator created for it, whatever its labels and owner say
    with observe_reconcile("job"):
        # A deleted Job is looked up again (and recreated unless the FineTuneJob is finished).
        reconcile(ctx, ftj, logger, job=None if type == "DELETED" else dict(body))


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
    with observe_reconcile("pod"):
        reconcile(ctx, ftj, logger)


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
    """Count phases for /metrics; and a first progress report turns Validating into Running.

    The trainer's status patches change no spec, so no other handler sees them.
    """
    status = body.get("status", {})
    key = f"{body.metadata.namespace}/{body.metadata.name}"
    PHASE_BOOK.record(key, None if type == "DELETED" else status.get("phase") or "Pending")
    JOB_GAUGES.record(body.metadata.namespace, body.metadata.name, None if type == "DELETED" else status)
    if type == "DELETED":
        memo.ctx.last_reconciled.pop(key, None)
    if type != "DELETED" and status.get("phase") == "Validating" and (status.get("progress") or status.get("dataset")):
        with observe_reconcile("progress"):
            reconcile(memo.ctx, dict(body), logger)


async def resync_loop(ctx: Context, logger: logging.Logger) -> None:
    """Re-reconcile every unfinished FineTuneJob now and then: the safety net for lost events."""
    while True:
        # Jittered, so operators started together (or many jobs) do not hit the apiserver in step.
        await asyncio.sleep(ctx.settings.resync_seconds * random.uniform(0.9, 1.1))
        for key in PHASE_BOOK.keys_except(TERMINAL):
            if time.monotonic() - ctx.last_reconciled.get(key, 0.0) < ctx.settings.resync_seconds:
                continue  # an event reconciled it recently; a resync would only repeat that work
            namespace, name = key.split("/", 1)
            try:
                await asyncio.to_thread(_resync_one, ctx, namespace, name, logger)
            except Exception:  # noqa: BLE001 - one failure must not end the loop; the next round retries
                logger.exception("resync of %s failed", key)


def _resync_one(ctx: Context, namespace: str, name: str, logger: logging.Logger) -> None:
    ftj = ctx.kube.get(FINETUNEJOB.api_version, FINETUNEJOB.kind, namespace, name)
    if ftj is None:
        return  # deleted; the watch's DELETED event drops it from the book
    with observe_reconcile("resync"):
        reconcile(ctx, ftj, logger)
