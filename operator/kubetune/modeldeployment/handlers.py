"""kopf handlers for ModelDeployments: they only pick which one to reconcile.

As for FineTuneJobs, no deletion handler, timer or daemon is registered, so
kopf adds no finalizer; children carry owner references for the garbage
collector. Time-driven work (step pauses, analysis intervals, retirements)
is a plain asyncio tick over the ModelDeployments with a rollout under way,
plus a slow pass over all of them (the resync interval) as a safety net for
lost events.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import kopf

from kubetune.api.resources import FINETUNEJOB, MODELDEPLOYMENT
from kubetune.builders.common import MANAGED_BY
from kubetune.builders.serving import MODEL_DEPLOYMENT_LABEL
from kubetune.context import Context
from kubetune.metrics import DEPLOYMENT_BOOK, DEPLOYMENT_GAUGES, observe_reconcile
from kubetune.modeldeployment.reconcile import reconcile

MDEP = MODELDEPLOYMENT.kopf_resource
KIND = MODELDEPLOYMENT.kind


def _run(ctx: Context, namespace: str, name: str, trigger: str, logger: logging.Logger) -> None:
    key = f"{namespace}/{name}"
    with observe_reconcile(trigger, KIND):
        busy = reconcile(ctx, name, namespace, logger)
    ctx.last_reconciled[f"{KIND}/{key}"] = time.monotonic()
    if busy:
        ctx.active_rollouts.add(key)
    else:
        ctx.active_rollouts.discard(key)


@kopf.on.create(*MDEP)
def on_create(body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    _run(memo.ctx, body.metadata.namespace, body.metadata.name, "create", logger)


@kopf.on.resume(*MDEP)
def on_resume(body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    """The operator (re)started: pick the rollout up where status says it is."""
    _run(memo.ctx, body.metadata.namespace, body.metadata.name, "resume", logger)


@kopf.on.update(*MDEP, field="spec")
def on_spec_change(body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    """A new model, a command token, pause or abort."""
    _run(memo.ctx, body.metadata.namespace, body.metadata.name, "update", logger)


@kopf.on.event(*MDEP)
def on_modeldeployment_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Track which ModelDeployments exist (for the tick and the phase gauge); weights for /metrics."""
    key = f"{body.metadata.namespace}/{body.metadata.name}"
    DEPLOYMENT_GAUGES.record(body.metadata.namespace, body.metadata.name,
                             None if type == "DELETED" else body.get("status") or {})
    if type == "DELETED":
        memo.ctx.known_deployments.pop(key, None)
        memo.ctx.active_rollouts.discard(key)
        DEPLOYMENT_BOOK.record(key, None)
        return
    ref = ((body.get("spec") or {}).get("model") or {}).get("fineTuneJobRef") or {}
    memo.ctx.known_deployments[key] = ref.get("name")
    # First sight counts as reconciled now: the slow pass starts a full resync interval later.
    memo.ctx.last_reconciled.setdefault(f"{KIND}/{key}", time.monotonic())


@kopf.on.event("apps", "v1", "deployments", labels={"app.kubernetes.io/managed-by": MANAGED_BY, MODEL_DEPLOYMENT_LABEL: kopf.PRESENT})
def on_serving_deployment(type: str | None, body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    """Replicas became ready (or were lost): the weight served and the next step may change."""
    owner = next((r for r in body.metadata.get("ownerReferences", [])
                  if r.get("controller") and r.get("kind") == KIND and r.get("apiVersion") == MODELDEPLOYMENT.api_version),
                 None)
    if owner is not None:
        _run(memo.ctx, body.metadata.namespace, owner["name"], "deployment", logger)


@kopf.on.event(*FINETUNEJOB.kopf_resource)
def on_finetunejob_for_serving(type: str | None, body: kopf.Body, memo: kopf.Memo, logger: logging.Logger,
                               **_: Any) -> None:
    """A FineTuneJob that succeeded (again) is the next revision of every ModelDeployment that refers to it."""
    phase = (body.get("status") or {}).get("phase")
    if type != "DELETED" and phase not in ("Succeeded", "Failed"):
        return
    namespace, name = body.metadata.namespace, body.metadata.name
    for key, ref in list(memo.ctx.known_deployments.items()):
        md_namespace, md_name = key.split("/", 1)
        if md_namespace == namespace and ref == name:
            _run(memo.ctx, md_namespace, md_name, "finetunejob", logger)


async def tick_loop(ctx: Context, logger: logging.Logger) -> None:
    """Every rollout tick: the active rollouts; every resync interval: every ModelDeployment."""
    started = time.monotonic()
    while True:
        # Sleep to the next tick boundary, so time spent reconciling does not stretch the period.
        elapsed = time.monotonic() - started
        await asyncio.sleep(ctx.settings.rollout_tick_seconds - elapsed % ctx.settings.rollout_tick_seconds)
        now = time.monotonic()
        for key in list(ctx.known_deployments):
            last = ctx.last_reconciled.get(f"{KIND}/{key}", 0.0)
            due = ctx.settings.rollout_tick_seconds if key in ctx.active_rollouts else ctx.settings.resync_seconds
            if now - last < due:
                continue
            namespace, name = key.split("/", 1)
            try:
                await asyncio.to_thread(_run, ctx, namespace, name, "tick", logger)
            except Exception:  # noqa: BLE001 - one failure must not end the loop; the next tick retries
                logger.exception("rollout tick of %s failed", key)
