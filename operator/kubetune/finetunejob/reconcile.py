"""One reconciliation of a FineTuneJob: build what is missing, map suspend, publish status.

Called by every handler (create, resume, spec update, and events of the
trainer Job), so whatever woke the operator up, it converges on the same state.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone

from pydantic import ValidationError

from kubetune.api import API_VERSION, FineTuneJobSpec, FineTuneJobStatus
from kubetune.builders.common import Owner
from kubetune.builders.trainer import (
    build_configmap,
    build_headless_service,
    build_job,
    build_trainer_config,
    build_trainer_rbac,
    cluster_spec_problems,
    effective_storage,
    run_storage_uri,
)
from kubetune.context import Context
from kubetune.metrics import PHASE_BOOK
from kubetune.finetunejob.status import TERMINAL, Observed, derive_status, status_patch


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
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True" for c in conditions)


def _ensure_children(ctx: Context, owner: Owner, spec: FineTuneJobSpec) -> dict:
    """Create whatever is missing, the Job last: a Job implies its config, Service and RBAC exist."""
    for obj in build_trainer_rbac(owner):
        ctx.kube.create_if_absent(obj)
    ctx.kube.create_if_absent(build_configmap(owner, build_trainer_config(owner, spec, ctx.settings)))
    if spec.resources.nodes > 1:
        ctx.kube.create_if_absent(build_headless_service(owner, ctx.settings))
    job, _ = ctx.kube.create_if_absent(build_job(owner, spec, effective_storage(spec, ctx.settings), ctx.settings))
    return job


def reconcile(ctx: Context, ftj: dict, logger: logging.Logger, job: dict | None = None, fresh: bool = False) -> None:
    """Converge one FineTuneJob. `job`: its trainer Job when the caller already has it;
    `fresh`: kopf's create handler, so unless a status shows it was handled before, its
    children are created straight away without looking the Job up first."""
    meta = ftj["metadata"]
    if meta.get("deletionTimestamp"):
        return  # being garbage-collected (children go first in foreground deletion): never recreate
    ctx.last_reconciled[f"{meta['namespace']}/{meta['name']}"] = time.monotonic()
    owner = Owner(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"])
    try:
        previous = FineTuneJobStatus.model_validate(ftj.get("status") or {})
    except ValidationError:
        previous = FineTuneJobStatus()  # unreadable status: rebuild it from the cluster
    spec = FineTuneJobSpec.model_validate(ftj["spec"])  # the CRD schema already enforced it
    problems = cluster_spec_problems(spec, ctx.settings)
    pods, storage_uri = [], None
    if problems:
        job = None
    else:
        storage_uri = run_storage_uri(effective_storage(spec, ctx.settings), owner)
        if job is None and not (fresh and previous.phase is None):
            job = ctx.kube.get("batch/v1", "Job", owner.namespace, owner.job_name)
        if job is None and previous.phase not in TERMINAL:
            job = _ensure_children(ctx, owner, spec)
            logger.info("created trainer Job %s", owner.job_name)
        if job is not None:
            want = _desired_suspend(spec)
            if want is not None and bool(job["spec"].get("suspend")) != want and not _job_finished(job):
                job = ctx.kube.merge_patch("batch/v1", "Job", owner.namespace, owner.job_name,
                                           {"spec": {"suspend": want}}) or job
            counts = job.get("status") or {}
            if any(counts.get(k) for k in ("active", "failed", "succeeded", "terminating")):  # else no pods yet
                pods = ctx.kube.list("v1", "Pod", owner.namespace,
                                     f"batch.kubernetes.io/controller-uid={job['metadata']['uid']}")
            ctx.handled_jobs[job["metadata"]["uid"]] = job_summary(job)
    status = derive_status(Observed(
        generation=meta.get("generation") or 1, spec=spec, job=job, pods=pods, previous=previous,
        storage_uri=storage_uri, now=datetime.now(timezone.utc), problems=problems,
    ))
    publish(ctx, ftj, previous, status)


def publish(ctx: Context, ftj: dict, previous: FineTuneJobStatus, status: FineTuneJobStatus) -> None:
    """Patch the status if it changed, with an Event for every phase transition."""
    patch = status_patch(status)
    if patch == status_patch(previous):
        return
    meta = ftj["metadata"]
    if ctx.kube.patch_status(API_VERSION, "FineTuneJob", meta["namespace"], meta["name"], patch) is None:
        return  # deleted meanwhile
    if status.phase != previous.phase:
        kind = "Warning" if status.phase == "Failed" else "Normal"
        ctx.kube.post_event(ftj, kind, status.phase, status.message or "")
        PHASE_BOOK.record(f"{meta['namespace']}/{meta['name']}", status.phase)
