"""The canary rollout as a pure state machine over status: one call, one transition.

Everything the rollout remembers lives in ModelDeploymentStatus (stable and
canary revisions, step, when it began, analysis counts, aborted revisions,
command tokens already acted on), so an operator restart resumes at the same
step and weight. `advance()` reads the previous status, what the cluster shows
(ready replicas per revision) and, when `wants_analysis()` said so, one round
of analysis; it returns the next status plus the replicas and traffic split to
apply and the Events to post. It never talks to the apiserver or Prometheus.

Stages of a canary: steps 0..n-1 (weight of step i, analysed), then
"promoting" (current_step == n: the canary scales to full size), then the
switch: the canary becomes stable by relabelling and repointing traffic, and
the old stable retires after rollout.scaleDownDelaySeconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from kubetune.api import ModelDeploymentSpec, ModelDeploymentStatus
from kubetune.api.modeldeployment import AbortedRevision, AnalysisCounts, Commands, Revision
from kubetune.builders.serving import ServedRevision, replica_split, served_model_name
from kubetune.modeldeployment.analysis import RoundResult, Target, due

MAX_MEASUREMENTS = 20
MAX_ABORTED = 10
# Seconds beyond the startup timeout before a canary that never got ready is rolled back.
NOT_READY_GRACE = 60


@dataclass(frozen=True)
class Observed:
    spec: ModelDeploymentSpec
    name: str
    namespace: str
    desired: ServedRevision | None      # what spec.model resolves to now; None while there is nothing to serve
    previous: ModelDeploymentStatus
    # revision -> ready endpoints of its Service: what a Gateway or kube-proxy can route to now
    # (a Deployment's readyReplicas can run ahead of the EndpointSlices routers read).
    ready: dict[str, int]
    now: datetime


@dataclass(frozen=True)
class Event:
    type: str      # Normal or Warning
    reason: str
    message: str


@dataclass
class Plan:
    status: ModelDeploymentStatus
    replicas: dict[str, int] = field(default_factory=dict)   # revision -> replicas to run (others retire)
    weight: int = 0                                           # canary traffic weight to route (gateway mode)
    events: list[Event] = field(default_factory=list)
    rollback_reason: str | None = None


def _revision(rev: ServedRevision) -> Revision:
    return Revision(revision=rev.revision, model_uri=rev.model_uri, base_model_uri=rev.base_model_uri,
                    fine_tune_job=rev.fine_tune_job, lora_rank=rev.lora_rank)


def _aborted(status: ModelDeploymentStatus, revision: str) -> AbortedRevision | None:
    return next((a for a in reversed(status.aborted) if a.revision == revision), None)


def _in_step(status: ModelDeploymentStatus, spec: ModelDeploymentSpec) -> bool:
    return status.canary is not None and status.current_step is not None and status.current_step < len(spec.rollout.steps)


def wants_analysis(obs: Observed) -> Target | None:
    """The target to measure now, or None: only a ready canary in a step, with checks, when due."""
    st, spec = obs.previous, obs.spec
    if not spec.analysis.metrics or not _in_step(st, spec) or spec.abort:
        return None
    if obs.ready.get(st.canary.revision, 0) < 1 or not due(spec.analysis, st.analysis, obs.now):
        return None
    return Target(namespace=obs.namespace, canary=st.canary.revision,
                  stable=st.stable.revision if st.stable else None,
                  model=served_model_name(spec, obs.name))


def _enter_step(st: ModelDeploymentStatus, step: int, now: datetime, keep_counts: bool = True) -> ModelDeploymentStatus:
    counts = (st.analysis or AnalysisCounts()).model_copy(update={"step_rounds": 0, "waiting_since": None})
    return st.model_copy(update={"current_step": step, "step_started_at": now, "held": None,
                                 "analysis": counts if keep_counts else AnalysisCounts()})


def _start_canary(st: ModelDeploymentStatus, rev: ServedRevision, now: datetime) -> ModelDeploymentStatus:
    st = st.model_copy(update={"canary": _revision(rev)})
    return _enter_step(st, 0, now, keep_counts=False)


def _abort(plan: Plan, reason: str, message: str, now: datetime) -> None:
    st = plan.status
    revision = st.canary.revision
    record = AbortedRevision(revision=revision, reason=reason, message=message, time=now)
    aborted = [a for a in st.aborted if a.revision != revision] + [record]
    plan.status = st.model_copy(update={"canary": None, "current_step": None, "step_started_at": None, "held": None,
                                        "aborted": aborted[-MAX_ABORTED:]})
    plan.events.append(Event("Warning", "RolledBack", f"canary revision {revision} rolled back ({reason}): {message}"))
    plan.rollback_reason = reason


def _commands(plan: Plan, obs: Observed) -> None:
    """Act on each command token once, the first time its value is seen."""
    spec, st = obs.spec, plan.status
    done = st.commands or Commands()
    if spec.retry is not None and spec.retry != done.retry:
        if obs.desired is not None and _aborted(st, obs.desired.revision):
            plan.status = st = st.model_copy(update={"aborted": [a for a in st.aborted if a.revision != obs.desired.revision]})
            plan.events.append(Event("Normal", "Retry", f"retrying revision {obs.desired.revision} from step 1"))
    if spec.promote_full is not None and spec.promote_full != done.promote_full and st.canary is not None:
        plan.status = st = _enter_step(st, len(spec.rollout.steps), obs.now)
        plan.events.append(Event("Normal", "PromoteFull", f"promoting canary revision {st.canary.revision} to 100% now"))
    if spec.promote is not None and spec.promote != done.promote and _in_step(st, spec):
        plan.status = st = _enter_step(st, st.current_step + 1, obs.now)
        plan.events.append(Event("Normal", "Promote", f"canary revision {st.canary.revision} moved on to step {st.current_step + 1}"))
    plan.status = plan.status.model_copy(update={"commands": Commands(
        promote=spec.promote, promote_full=spec.promote_full, retry=spec.retry)})


def _follow_desired(plan: Plan, obs: Observed) -> None:
    """Start, replace or drop the canary according to the revision spec.model resolves to."""
    st, desired = plan.status, obs.desired
    if desired is None:
        return  # nothing (new) to serve: keep what runs
    if st.stable is None:
        plan.status = st.model_copy(update={"stable": _revision(desired)})
        plan.events.append(Event("Normal", "Deploying", f"serving revision {desired.revision} ({desired.model_uri})"))
        return
    if desired.revision == st.stable.revision:
        if st.canary is not None:
            plan.events.append(Event("Normal", "CanaryCancelled",
                                     f"spec.model is back at the stable revision; canary {st.canary.revision} removed"))
            plan.status = st.model_copy(update={"canary": None, "current_step": None, "step_started_at": None, "held": None})
        return
    if st.canary is not None and st.canary.revision == desired.revision:
        return
    if _aborted(st, desired.revision) is not None or obs.spec.abort:
        return  # never re-attempted by itself: spec.retry or a new revision moves on
    if st.canary is not None:
        plan.events.append(Event("Normal", "CanaryReplaced",
                                 f"canary revision {st.canary.revision} replaced by new revision {desired.revision}"))
    else:
        plan.events.append(Event("Normal", "CanaryStarted", f"rolling out revision {desired.revision} as a canary"))
    plan.status = _start_canary(st, desired, obs.now)


def _analyse(plan: Plan, obs: Observed, result: RoundResult | None) -> None:
    if result is None:
        return
    st = plan.status
    counts = result.counts
    # Only a clean round is evidence for this step: a failure within failureLimit is tolerated,
    # not taken as proof of health, so flapping values keep the canary at its weight.
    clean = all(m.phase == "Successful" for m in result.measurements if m.metric != "samples")
    if result.verdict == "ContinueWithoutEvidence" or (result.verdict == "Continue" and clean):
        counts = counts.model_copy(update={"step_rounds": counts.step_rounds + 1})
    measurements = (st.measurements + list(result.measurements))[-MAX_MEASUREMENTS:]
    plan.status = st = st.model_copy(update={"analysis": counts, "measurements": measurements})
    if result.verdict == "Abort":
        _abort(plan, result.reason, result.message, obs.now)
    elif result.verdict == "Pause" and st.held is None:
        plan.status = st.model_copy(update={"held": result.reason})
        plan.events.append(Event("Warning", "RolloutHeld", f"{result.message}; set spec.promote to go on or spec.abort to roll back"))
    elif result.verdict == "ContinueWithoutEvidence" and counts.step_rounds == 1:
        plan.events.append(Event("Warning", "NoDataContinue", result.message))


def _step_done(st: ModelDeploymentStatus, obs: Observed) -> bool:
    spec = obs.spec
    step = spec.rollout.steps[st.current_step]
    if spec.paused or st.held is not None or step.pause_seconds is None:
        return False  # a step without pauseSeconds waits for spec.promote
    if obs.ready.get(st.canary.revision, 0) < 1:
        return False
    if spec.analysis.metrics and (st.analysis is None or st.analysis.step_rounds < 1):
        return False  # never pass a step without evidence (or a declared no-data outcome)
    return (obs.now - st.step_started_at).total_seconds() >= step.pause_seconds


def _progress(plan: Plan, obs: Observed) -> None:
    st, spec = plan.status, obs.spec
    if st.canary is None:
        return
    n = len(spec.rollout.steps)
    never_ready = obs.ready.get(st.canary.revision, 0) < 1 and st.step_started_at is not None and \
        (obs.now - st.step_started_at).total_seconds() > spec.serving.startup_timeout_seconds + NOT_READY_GRACE
    if _in_step(st, spec) and never_ready:
        _abort(plan, "CanaryNotReady", f"no replica of canary revision {st.canary.revision} became ready within "
               f"serving.startupTimeoutSeconds ({spec.serving.startup_timeout_seconds}s)", obs.now)
        return
    if _in_step(st, spec) and _step_done(st, obs):
        plan.status = st = _enter_step(st, st.current_step + 1, obs.now)
        if st.current_step < n:
            plan.events.append(Event("Normal", "StepAdvanced", f"canary revision {st.canary.revision} at step "
                                     f"{st.current_step + 1}/{n}: {spec.rollout.steps[st.current_step].weight}%"))
    if st.current_step is not None and st.current_step >= n and not spec.paused:
        if obs.ready.get(st.canary.revision, 0) >= spec.serving.replicas:
            old = st.stable.revision
            plan.status = st.model_copy(update={"stable": st.canary, "canary": None, "current_step": None,
                                                "step_started_at": None, "held": None})
            plan.events.append(Event("Normal", "Promoted", f"revision {st.canary.revision} is now stable (was {old})"))


def _placement(plan: Plan, obs: Observed) -> None:
    """Replicas per revision, routed weight and the weight actually served."""
    st, spec = plan.status, obs.spec
    total = spec.serving.replicas
    if st.stable is None:
        plan.status = st.model_copy(update={"canary_weight": None, "achieved_weight": None})
        return
    if st.canary is None:
        plan.replicas = {st.stable.revision: total}
        plan.status = st.model_copy(update={"canary_weight": None, "achieved_weight": None})
        return
    n = len(spec.rollout.steps)
    promoting = st.current_step >= n
    asked = 100 if promoting else spec.rollout.steps[st.current_step].weight
    stable_n, canary_n, _ = replica_split(total, asked, spec.gateway)
    if promoting:
        stable_n, canary_n = total, total  # keep stable whole until the switch, then it retires
    plan.replicas = {st.stable.revision: stable_n, st.canary.revision: canary_n}
    ready_canary = obs.ready.get(st.canary.revision, 0)
    ready_stable = obs.ready.get(st.stable.revision, 0)
    if spec.gateway:
        # Until the switch the route keeps the last step's weight: the canary is not yet full size.
        # No weight before the canary has a ready endpoint: a router sends a backend's share even
        # when it has no endpoint, and those requests fail (503 from Traefik).
        plan.weight = (spec.rollout.steps[n - 1].weight if promoting and n else asked) if ready_canary else 0
        achieved = plan.weight
    else:
        served = ready_canary + ready_stable
        achieved = round(100 * ready_canary / served) if served else 0
    plan.status = st.model_copy(update={"canary_weight": asked, "achieved_weight": achieved})


def advance(obs: Observed, result: RoundResult | None = None) -> Plan:
    """One transition. `result`: the analysis round taken for wants_analysis(obs), if any."""
    plan = Plan(status=obs.previous.model_copy())
    _commands(plan, obs)
    if obs.spec.abort and plan.status.canary is not None:
        _abort(plan, "ManualAbort", "spec.abort is true", obs.now)
    _follow_desired(plan, obs)
    st = plan.status
    if result is not None and _in_step(st, obs.spec) and obs.previous.canary is not None \
            and obs.previous.canary.revision == st.canary.revision:
        _analyse(plan, obs, result)  # only for the canary it measured, and not after promoteFull
    _progress(plan, obs)
    _placement(plan, obs)
    return plan
