"""One reconciliation of a ModelDeployment: resolve, analyse if due, decide, publish, then apply.

Called by every trigger (create, spec change, operator start, events of its
Deployments or of the referenced FineTuneJob, and the rollout tick), under a
per-object lock. The decision is persisted first, with a resourceVersion
precondition: a measurement counts only if the status that records it was
written, so a restart or a concurrent pass can neither lose nor double it.
The cluster (Deployments, Services, HTTPRoute) is then made to follow the
status, idempotently, so a crash between the two is repaired by the next pass.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

from pydantic import ValidationError

from kubetune.api import ModelDeploymentSpec, ModelDeploymentStatus
from kubetune.api.resources import FINETUNEJOB, MODELDEPLOYMENT
from kubetune.builders.common import Owner, fit
from kubetune.builders.serving import (
    REVISION_LABEL,
    MODEL_DEPLOYMENT_LABEL,
    ServedRevision,
    build_client_service,
    build_httproute,
    build_revision_service,
    build_serving_deployment,
    client_service_name,
    revision_service_name,
)
from kubetune.context import Context
from kubetune.metrics import DEPLOYMENT_BOOK, MEASUREMENTS, ROLLBACKS, ROLLOUTS
from kubetune.modeldeployment.analysis import run_round
from kubetune.modeldeployment.prometheus import MetricProvider, PrometheusProvider, UnconfiguredProvider
from kubetune.modeldeployment.rollout import Observed, Plan, advance, wants_analysis
from kubetune.modeldeployment.source import Resolution, resolve
from kubetune.modeldeployment.status import finish, status_patch

RETIRE_AT = "kubetune.io/retire-at"
TRACK = "kubetune.io/track"
APPS = "apps/v1"
DISCOVERY = "discovery.k8s.io/v1"
ROUTE_API = "gateway.networking.k8s.io/v1"


def owner_of(md: dict) -> Owner:
    meta = md["metadata"]
    return Owner(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"], kind=MODELDEPLOYMENT.kind)


def _deployments(ctx: Context, owner: Owner) -> dict[str, dict]:
    """This ModelDeployment's Deployments by revision (owner uid checked: a namesake's are not ours)."""
    found = ctx.kube.list(APPS, "Deployment", owner.namespace, f"{MODEL_DEPLOYMENT_LABEL}={fit(owner.name)}")
    mine = {}
    for dep in found:
        refs = dep["metadata"].get("ownerReferences") or []
        if any(r.get("uid") == owner.uid for r in refs):
            mine[dep["metadata"]["labels"][REVISION_LABEL]] = dep
    return mine


def _ready_endpoints(ctx: Context, owner: Owner) -> dict[str, int]:
    """Ready endpoints per revision, from the revision Services' EndpointSlices (which carry the
    Services' labels). Ready excludes terminating endpoints."""
    ready: dict[str, int] = {}
    for eps in ctx.kube.list(DISCOVERY, "EndpointSlice", owner.namespace,
                             f"{MODEL_DEPLOYMENT_LABEL}={fit(owner.name)},{REVISION_LABEL}"):
        revision = eps["metadata"]["labels"][REVISION_LABEL]
        ready[revision] = ready.get(revision, 0) + sum(
            len(e.get("addresses") or []) for e in eps.get("endpoints") or []
            if (e.get("conditions") or {}).get("ready"))
    return ready


def _provider(ctx: Context, spec: ModelDeploymentSpec) -> MetricProvider:
    address = spec.analysis.prometheus_address or ctx.settings.prometheus_address
    return PrometheusProvider(address) if address else UnconfiguredProvider()


def reconcile(ctx: Context, name: str, namespace: str, logger: logging.Logger) -> bool:
    """Converge one ModelDeployment; True while a canary or a retirement needs the rollout tick."""
    key = f"{namespace}/{name}"
    with ctx.rollout_locks[key]:
        md = ctx.kube.get(MODELDEPLOYMENT.api_version, MODELDEPLOYMENT.kind, namespace, name)
        if md is None or md["metadata"].get("deletionTimestamp"):
            return False
        return _reconcile_locked(ctx, md, logger)


def _reconcile_locked(ctx: Context, md: dict, logger: logging.Logger) -> bool:
    meta = md["metadata"]
    owner = owner_of(md)
    now = datetime.now(timezone.utc)
    spec = ModelDeploymentSpec.model_validate(md["spec"])  # the CRD schema already enforced it
    try:
        previous = ModelDeploymentStatus.model_validate(md.get("status") or {})
    except ValidationError:
        previous = ModelDeploymentStatus()
    ftj = None
    if spec.model.fine_tune_job_ref is not None:
        ftj = ctx.kube.get(FINETUNEJOB.api_version, FINETUNEJOB.kind, owner.namespace, spec.model.fine_tune_job_ref.name)
    res = resolve(spec, ftj, ctx.settings)
    deployments = _deployments(ctx, owner)
    ready = _ready_endpoints(ctx, owner)
    obs = Observed(spec=spec, name=owner.name, namespace=owner.namespace, desired=res.revision,
                   previous=previous, ready=ready, now=now)
    target = wants_analysis(obs)
    result = None
    if target is not None:
        result = run_round(spec.analysis, previous.analysis, target, _provider(ctx, spec), now)
    plan = advance(obs, result)
    endpoint = f"http://{client_service_name(owner)}.{owner.namespace}.svc/v1"
    status = finish(plan, obs, res, meta.get("generation") or 1, endpoint, now)
    patch = status_patch(status)
    if patch != status_patch(previous):
        written = ctx.kube.patch_status(MODELDEPLOYMENT.api_version, MODELDEPLOYMENT.kind, owner.namespace, owner.name,
                                        patch, resource_version=meta["resourceVersion"])
        if written is None:
            return True  # changed meanwhile (or deleted): decide again from the fresh object
        _announce(ctx, md, previous, status, plan, result)
    _apply(ctx, owner, spec, status, plan, res, deployments, now)
    DEPLOYMENT_BOOK.record(f"{owner.namespace}/{owner.name}", status.phase)
    # Only time-driven work needs the tick (steps, analysis, retirements); everything else
    # waits for an event: a spec change, a Deployment's replicas, the FineTuneJob.
    retiring = any(rev not in plan.replicas for rev in deployments)
    return status.canary is not None or retiring


def _announce(ctx: Context, md: dict, previous: ModelDeploymentStatus, status: ModelDeploymentStatus, plan: Plan, result) -> None:
    """Events and counters, only once the status that records them was written."""
    for event in plan.events:
        ctx.kube.post_event(md, event.type, event.reason, event.message)
        if event.reason in ("Promoted", "CanaryReplaced", "RolledBack"):
            ROLLOUTS.labels(outcome=event.reason).inc()
    if plan.rollback_reason is not None:
        ROLLBACKS.labels(reason=plan.rollback_reason).inc()
    if result is not None:
        for m in result.measurements:
            MEASUREMENTS.labels(metric=m.metric, phase=m.phase).inc()
    if status.phase != previous.phase and not plan.events:
        kind = "Warning" if status.phase in ("Degraded", "RolledBack") else "Normal"
        ctx.kube.post_event(md, kind, status.phase, status.message or "")


def _served(status: ModelDeploymentStatus, res: Resolution, revision: str) -> ServedRevision | None:
    """What a revision's Deployment needs; rebuilt from status when it is not the desired one."""
    if res.revision is not None and res.revision.revision == revision:
        return res.revision
    for rev in (status.stable, status.canary):
        if rev is not None and rev.revision == revision:
            storage = res.revision.storage if res.revision else None
            return ServedRevision(revision=rev.revision, mode="adapter" if rev.base_model_uri else "merged",
                                  model_uri=rev.model_uri, base_model_uri=rev.base_model_uri, lora_rank=rev.lora_rank,
                                  storage=storage, fine_tune_job=rev.fine_tune_job)
    return None


def _apply(ctx: Context, owner: Owner, spec: ModelDeploymentSpec, status: ModelDeploymentStatus, plan: Plan,
           res: Resolution, deployments: dict[str, dict], now: datetime) -> None:
    kube = ctx.kube
    # One list instead of a create attempt per Service per pass (the tick runs this often).
    services = {svc["metadata"]["name"]: svc for svc in kube.list(
        "v1", "Service", owner.namespace, f"{MODEL_DEPLOYMENT_LABEL}={fit(owner.name)}")}
    for revision, replicas in plan.replicas.items():
        track = "stable" if status.stable and status.stable.revision == revision else "canary"
        service = build_revision_service(owner, spec, revision)
        if service["metadata"]["name"] not in services:
            kube.create_if_absent(service)
        dep = deployments.get(revision)
        if dep is None:
            served = _served(status, res, revision)
            if served is None:
                continue
            manifest = build_serving_deployment(owner, spec, served, replicas, ctx.settings)
            manifest["metadata"]["labels"][TRACK] = track
            dep, _ = kube.create_if_absent(manifest)
        meta = dep["metadata"]
        changes: dict = {}
        if (dep.get("spec") or {}).get("replicas") != replicas:
            changes["spec"] = {"replicas": replicas}
        if (meta.get("labels") or {}).get(TRACK) != track or RETIRE_AT in (meta.get("annotations") or {}):
            # Relabelling the Deployment object (not its pod template) restarts no pod.
            changes["metadata"] = {"labels": {TRACK: track}, "annotations": {RETIRE_AT: None}}
        if changes:
            kube.merge_patch(APPS, "Deployment", owner.namespace, meta["name"], changes)
    if status.stable is not None:
        client = build_client_service(owner, spec, status.stable.revision)
        _converge(kube, client, services.get(client["metadata"]["name"]), _selector)
        if spec.gateway:
            canary = status.canary.revision if status.canary else None
            route = build_httproute(owner, spec, status.stable.revision, canary, plan.weight if canary else 0)
            found = kube.get(ROUTE_API, "HTTPRoute", owner.namespace, route["metadata"]["name"])
            _converge(kube, route, found, _route_shape)
    for revision, dep in deployments.items():
        if revision not in plan.replicas:
            _retire(ctx, owner, spec, revision, dep, now)


def _route_shape(route: dict) -> tuple:
    """What the controller decides in an HTTPRoute (the apiserver adds defaults around it)."""
    spec = route.get("spec") or {}
    parents = tuple((p.get("name"), p.get("namespace"), p.get("sectionName")) for p in spec.get("parentRefs") or [])
    backends = tuple((b.get("name"), b.get("weight")) for rule in spec.get("rules") or []
                     for b in rule.get("backendRefs") or [])
    return parents, tuple(spec.get("hostnames") or ()), backends


def _selector(service: dict) -> dict:
    return (service.get("spec") or {}).get("selector") or {}


def _converge(kube, manifest: dict, found: dict | None, shape) -> None:
    """Create when absent; when the part the controller decides (`shape`) differs, patch the spec to the built one."""
    if found is None:
        found, created = kube.create_if_absent(manifest)
        if created:
            return
    if shape(found) != shape(manifest):
        meta, spec = manifest["metadata"], dict(manifest["spec"])
        if "selector" in spec:  # a merge patch keeps map keys it does not name: null the stale ones
            spec["selector"] = {**{k: None for k in _selector(found)}, **spec["selector"]}
        kube.merge_patch(manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"], {"spec": spec})


def _retire(ctx: Context, owner: Owner, spec: ModelDeploymentSpec, revision: str, dep: dict, now: datetime) -> None:
    """A revision no longer wanted: out of traffic now, deleted after rollout.scaleDownDelaySeconds."""
    meta = dep["metadata"]
    retire_at = (meta.get("annotations") or {}).get(RETIRE_AT)
    if retire_at is None:
        when = now + timedelta(seconds=spec.rollout.scale_down_delay_seconds)
        patch: dict = {"metadata": {"annotations": {RETIRE_AT: when.isoformat()}, "labels": {TRACK: "retired"}}}
        if not spec.gateway:
            # Without a router the client Service reaches every pod: traffic leaves only with the pods.
            patch["spec"] = {"replicas": 0}
        ctx.kube.merge_patch(APPS, "Deployment", owner.namespace, meta["name"], patch)
    elif now >= datetime.fromisoformat(retire_at):
        ctx.kube.delete(APPS, "Deployment", owner.namespace, meta["name"])
        ctx.kube.delete("v1", "Service", owner.namespace, revision_service_name(owner, revision))
