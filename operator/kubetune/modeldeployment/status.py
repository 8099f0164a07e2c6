"""ModelDeployment phase, kstatus conditions and message from a rollout plan: pure.

| situation | phase | Ready | Reconciling | Stalled |
|---|---|---|---|---|
| nothing served yet, or stable replicas starting | Progressing | False | True | False |
| canary stepping through weights | Progressing | False | True | False |
| canary held (spec.paused, or analysis inconclusive/erroring/no data) | Paused | False | True | False |
| stable serving, nothing to roll out | Healthy | True | False | False |
| the wanted revision was rolled back | RolledBack | False | False | True |
| the source cannot be served (failed or regressed job, GGUF, rank too high) | Degraded | False | False | True |
| the same, while a canary started earlier goes on | Degraded | False | True | False |
| stable was healthy and lost every ready replica | Degraded | False | True | False |
"""

from __future__ import annotations

from datetime import datetime

from kubetune.api import ModelDeploymentStatus
from kubetune.api.modeldeployment import ModelDeploymentSpec
from kubetune.conditions import kstatus_conditions
from kubetune.modeldeployment.rollout import Observed, Plan
from kubetune.modeldeployment.source import Resolution

MAX_MESSAGE = 1024
READY_WHEN = frozenset({"Healthy"})
RECONCILING_WHEN = frozenset({"Progressing", "Paused"})


def _phase(plan: Plan, obs: Observed, res: Resolution) -> tuple[str, str, str, bool]:
    """(phase, reason, message, stalled)."""
    st, spec = plan.status, obs.spec
    if res.stalled:
        serving = f"; still serving revision {st.stable.revision}" if st.stable else ""
        if st.canary is not None:  # the canary already started goes on: not stuck, but not what spec asks
            return "Degraded", res.reason, f"{res.message}{serving}; canary {st.canary.revision} at {_where(st, spec)}", False
        return "Degraded", res.reason, res.message + serving, True
    if st.stable is None:
        return "Progressing", res.reason, res.message, False
    if st.canary is not None:
        where = _where(st, spec)
        if st.held is not None:
            return "Paused", st.held, f"held at {where}: {_last_message(st)}; set spec.promote to go on or spec.abort to roll back", False
        if spec.paused:
            return "Paused", "Paused", f"paused at {where} (spec.paused)", False
        return "Progressing", "Canary", f"canary revision {st.canary.revision} at {where}", False
    aborted = next((a for a in reversed(st.aborted) if obs.desired and a.revision == obs.desired.revision), None)
    if aborted is not None:
        return ("RolledBack", aborted.reason, f"revision {aborted.revision} was rolled back: {aborted.message}; serving "
                f"revision {st.stable.revision}; set spec.retry to a new value to try again, or change spec.model", True)
    if obs.spec.abort and obs.desired and obs.desired.revision != st.stable.revision:
        return "Paused", "Aborted", f"spec.abort is true: revision {obs.desired.revision} waits; serving {st.stable.revision}", False
    ready = obs.ready.get(st.stable.revision, 0)
    if ready < 1:
        if obs.previous.phase in ("Healthy", "Degraded"):
            return "Degraded", "NoReadyReplicas", f"no ready replica of stable revision {st.stable.revision}", False
        return "Progressing", "Starting", f"waiting for revision {st.stable.revision} to load and become ready", False
    note = "" if obs.desired is not None else f" ({res.message})"
    return "Healthy", "Serving", f"serving revision {st.stable.revision} with {ready}/{spec.serving.replicas} ready{note}", False


def _where(st: ModelDeploymentStatus, spec: ModelDeploymentSpec) -> str:
    n = len(spec.rollout.steps)
    if st.current_step >= n:
        return "promotion (scaling to full size)"
    return f"step {st.current_step + 1}/{n} ({spec.rollout.steps[st.current_step].weight}%, {st.achieved_weight or 0}% served)"


def _last_message(st: ModelDeploymentStatus) -> str:
    return next((m.message or m.phase for m in reversed(st.measurements) if m.phase != "Successful"), st.held or "")


def finish(plan: Plan, obs: Observed, res: Resolution, generation: int, endpoint: str, now: datetime) -> ModelDeploymentStatus:
    phase, reason, message, stalled = _phase(plan, obs, res)
    message = message[:MAX_MESSAGE]
    wanted = {
        "Ready": "True" if phase in READY_WHEN else "False",
        "Reconciling": "True" if phase in RECONCILING_WHEN or (phase == "Degraded" and not stalled) else "False",
        "Stalled": "True" if stalled else "False",
    }
    return plan.status.model_copy(update={
        "phase": phase,
        "observed_generation": generation,
        "conditions": kstatus_conditions(wanted, reason, message, generation, obs.previous.conditions, now),
        "message": message,
        "endpoint": endpoint if plan.status.stable else None,
    })


def status_patch(status: ModelDeploymentStatus) -> dict:
    """The whole status as a merge patch (the operator is its only writer).

    A merge patch merges nested objects key by key, so every unset field is sent as
    null at every depth (a replaced revision must not keep its predecessor's base
    model, a new analysis not its predecessor's waitingSince). Lists are replaced
    whole, so their items carry only the fields that are set.
    """
    return {"status": _nulls_for_unset(status.model_dump(mode="json", by_alias=True))}


def _nulls_for_unset(value):
    if isinstance(value, dict):
        return {k: _nulls_for_unset(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _without_nulls(value):
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value
