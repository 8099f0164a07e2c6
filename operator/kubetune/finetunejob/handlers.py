"""kopf handlers: they only pick the FineTuneJob to reconcile and call reconcile().

No deletion handlers (and no kopf timers or daemons, which would also need one)
are registered, so kopf adds no finalizer: deleting a FineTuneJob never waits
for the operator, and owner references let the garbage collector remove its
children. The periodic resync is a plain task started with the operator.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import kopf

from kubetune.api.resources import FINETUNEJOB
from kubetune.builders.common import MANAGED_BY
from kubetune.metrics import PHASE_BOOK, observe_reconcile
from kubetune.context import Context
from kubetune.finetunejob.reconcile import job_summary, reconcile
from kubetune.finetunejob.status import TERMINAL

FTJ = FINETUNEJOB.kopf_resource
# Fields whose change after the Job exists is applied; the Job's pod template is immutable.
APPLIED_ON_UPDATE = {("suspend",)}


@kopf.on.create(*FTJ)
def on_create(body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    with observe_reconcile("create"):
        reconcile(memo.ctx, dict(body), logger, fresh=True)


@kopf.on.resume(*FTJ)
def on_resume(body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    """The operator (re)started and finds an existing FineTuneJob: converge it."""
    with observe_reconcile("resume"):
        reconcile(memo.ctx, dict(body), logger)


@kopf.on.update(*FTJ, field="spec")
def on_spec_change(body: kopf.Body, diff: kopf.Diff, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    ignored = sorted(".".join(map(str, d.field)) for d in diff if tuple(d.field[:1]) not in APPLIED_ON_UPDATE)
    if ignored and body.get("status", {}).get("phase"):
        memo.ctx.kube.post_event(dict(body), "Warning", "SpecChangeIgnored",
                                 f"spec.{', spec.'.join(ignored)} changed after the trainer Job was created and is not "
                                 "applied (only spec.suspend is); delete and recreate the FineTuneJob to change it")
    with observe_reconcile("update"):
        reconcile(memo.ctx, dict(body), logger)


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
    if ftj is None or ftj["metadata"]["uid"] != owner["uid"]:
        return  # the owner is gone (or was recreated): garbage collection handles this Job
    with observe_reconcile("job"):
        # A deleted Job is looked up again (and recreated unless the FineTuneJob is finished).
        reconcile(ctx, ftj, logger, job=None if type == "DELETED" else dict(body))


@kopf.on.event(*FTJ)
def on_finetunejob_event(type: str | None, body: kopf.Body, memo: kopf.Memo, logger: logging.Logger,
                         **_: Any) -> None:
    """Count phases for /metrics; and a first progress report turns Validating into Running.

    The trainer's status patches change no spec, so no other handler sees them.
    """
    status = body.get("status", {})
    key = f"{body.metadata.namespace}/{body.metadata.name}"
    PHASE_BOOK.record(key, None if type == "DELETED" else status.get("phase") or "Pending")
    if type == "DELETED":
        memo.ctx.last_reconciled.pop(key, None)
    if type != "DELETED" and status.get("phase") == "Validating" and (status.get("progress") or status.get("dataset")):
        with observe_reconcile("progress"):
            reconcile(memo.ctx, dict(body), logger)


async def resync_loop(ctx: Context, logger: logging.Logger) -> None:
    """Re-reconcile every unfinished FineTuneJob now and then: the safety net for lost events."""
    while True:
        await asyncio.sleep(ctx.settings.resync_seconds)
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
