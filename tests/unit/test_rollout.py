"""The rollout state machine, without a cluster: every command in every state, analysis verdicts, restarts.

Each test feeds `advance()` a status, the cluster's ready replicas and (maybe)
an analysis round, and checks the next status, replicas, weight and events.
Feeding the returned status back in is exactly what an operator restart does.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from kubetune.api import ModelDeploymentSpec, ModelDeploymentStatus
from kubetune.api.modeldeployment import AnalysisCounts, Measurement
from kubetune.builders.serving import ServedRevision
from kubetune.modeldeployment.analysis import RoundResult
from kubetune.modeldeployment.rollout import Observed, Plan, advance, wants_analysis

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
CHECK = {"name": "errors", "builtin": "error-rate", "max": 0.05}


def spec(**over) -> ModelDeploymentSpec:
    body = {
        "model": {"uri": "s3://m/adapter", "baseModel": "s3://m/base", "loraRank": 16},
        "serving": {"replicas": 4},
        "rollout": {"steps": [{"weight": 25, "pauseSeconds": 60}, {"weight": 50, "pauseSeconds": 60}]},
        "analysis": {"intervalSeconds": 10, "metrics": [CHECK]},
    }
    for key, value in over.items():
        body[key] = {**body.get(key, {}), **value} if isinstance(value, dict) and key != "model" else value
    return ModelDeploymentSpec.model_validate(body)


def rev(name: str) -> ServedRevision:
    return ServedRevision(revision=name, mode="adapter", model_uri=f"s3://m/{name}", base_model_uri="s3://m/base",
                          lora_rank=16, storage=None)


def obs(status: ModelDeploymentStatus, desired: str | None, ready: dict[str, int] | None = None,
        at: float = 0, sp: ModelDeploymentSpec | None = None) -> Observed:
    return Observed(spec=sp or spec(), name="bot", namespace="ns", desired=rev(desired) if desired else None,
                    previous=status, ready=ready or {}, now=T0 + timedelta(seconds=at))


def passed(status: ModelDeploymentStatus, verdict: str = "Continue", reason: str | None = None,
           message: str | None = None, at: float = 0) -> RoundResult:
    counts = (status.analysis or AnalysisCounts()).model_copy(update={"last_measured_at": T0 + timedelta(seconds=at)})
    phase = {"Continue": "Successful", "Abort": "Failed", "Pause": "Inconclusive"}.get(verdict, "Inconclusive")
    m = Measurement(metric="errors", phase=phase, revision=status.canary.revision if status.canary else None, value=0.0)
    return RoundResult(counts=counts, measurements=[m], verdict=verdict, reason=reason, message=message)


def serving_stable(name: str = "aaa") -> ModelDeploymentStatus:
    plan = advance(obs(ModelDeploymentStatus(), name, {name: 4}))
    return plan.status


def with_canary(name: str = "bbb", sp: ModelDeploymentSpec | None = None) -> ModelDeploymentStatus:
    return advance(obs(serving_stable(), name, {"aaa": 4}, sp=sp)).status


def test_first_revision_is_stable_at_once_without_a_canary():
    plan = advance(obs(ModelDeploymentStatus(), "aaa"))
    assert plan.status.stable.revision == "aaa" and plan.status.canary is None
    assert plan.replicas == {"aaa": 4}
    assert [e.reason for e in plan.events] == ["Deploying"]


def test_nothing_to_serve_keeps_serving_what_runs():
    st = serving_stable()
    plan = advance(obs(st, None, {"aaa": 4}))
    assert plan.status.stable.revision == "aaa" and plan.replicas == {"aaa": 4} and not plan.events


def test_new_revision_starts_a_canary_at_the_first_weight():
    plan = advance(obs(serving_stable(), "bbb", {"aaa": 4}))
    st = plan.status
    assert st.canary.revision == "bbb" and st.current_step == 0 and st.canary_weight == 25
    assert plan.replicas == {"aaa": 3, "bbb": 1}
    assert st.achieved_weight == 0  # no canary replica is ready yet: nothing served, and status says so
    assert [e.reason for e in plan.events] == ["CanaryStarted"]


@pytest.mark.parametrize("ready_canary, ready_stable, achieved", [(1, 3, 25), (1, 1, 50), (0, 3, 0), (2, 2, 50)])
def test_replica_ratio_reports_the_weight_the_ready_pods_give(ready_canary, ready_stable, achieved):
    st = with_canary()
    plan = advance(obs(st, "bbb", {"aaa": ready_stable, "bbb": ready_canary}))
    assert plan.status.canary_weight == 25 and plan.status.achieved_weight == achieved


def test_gateway_routes_the_asked_weight_and_keeps_stable_whole():
    sp = spec(rollout={"trafficRouting": {"gatewayParentRefs": [{"name": "gw"}]},
                       "steps": [{"weight": 10, "pauseSeconds": 60}]})
    st = with_canary(sp=sp)
    plan = advance(obs(st, "bbb", {"aaa": 4, "bbb": 1}, sp=sp))
    assert plan.weight == 10 and plan.status.achieved_weight == 10
    assert plan.replicas == {"aaa": 4, "bbb": 1}


def test_gateway_gives_no_weight_to_a_canary_without_a_ready_endpoint():
    """A router sends a backend its share even with no endpoint behind it (Traefik answers 503):
    the route carries the step's weight only once the canary's Service has a ready endpoint."""
    sp = spec(rollout={"trafficRouting": {"gatewayParentRefs": [{"name": "gw"}]},
                       "steps": [{"weight": 10, "pauseSeconds": 60}]})
    st = with_canary(sp=sp)
    plan = advance(obs(st, "bbb", {"aaa": 4}, sp=sp))
    assert plan.weight == 0 and plan.status.achieved_weight == 0 and plan.status.canary_weight == 10
    assert plan.replicas == {"aaa": 4, "bbb": 1}  # the canary's pods are still asked for
    assert advance(obs(plan.status, "bbb", {"aaa": 4, "bbb": 1}, sp=sp)).weight == 10


def test_a_step_needs_its_pause_and_one_passed_round():
    st = with_canary()
    ready = {"aaa": 3, "bbb": 1}
    # Time alone is not enough: no analysis round passed yet.
    assert advance(obs(st, "bbb", ready, at=120)).status.current_step == 0
    # A passed round before the pause is over is not enough either.
    st = advance(obs(st, "bbb", ready, at=10), passed(st, at=10)).status
    assert st.current_step == 0 and st.analysis.step_rounds == 1
    plan = advance(obs(st, "bbb", ready, at=61))
    assert plan.status.current_step == 1 and plan.status.canary_weight == 50
    assert plan.status.analysis.step_rounds == 0  # the next step needs its own evidence
    assert [e.reason for e in plan.events] == ["StepAdvanced"]


def test_without_checks_steps_advance_on_time_alone():
    sp = spec(analysis={"metrics": []})
    st = with_canary(sp=sp)
    assert advance(obs(st, "bbb", {"aaa": 3, "bbb": 1}, at=61, sp=sp)).status.current_step == 1


def test_waiting_for_samples_never_passes_a_step():
    st = with_canary()
    ready = {"aaa": 3, "bbb": 1}
    for t in (10, 20, 70, 200):
        st = advance(obs(st, "bbb", ready, at=t), passed(st, "Wait", at=t)).status
    assert st.current_step == 0 and st.canary.revision == "bbb"


def test_failed_analysis_rolls_back_at_once_and_remembers_why():
    st = with_canary()
    plan = advance(obs(st, "bbb", {"aaa": 3, "bbb": 1}, at=10),
                   passed(st, "Abort", "AnalysisFailed", "error-rate = 0.4 > max 0.05 for canary revision bbb", at=10))
    assert plan.status.canary is None and plan.status.stable.revision == "aaa"
    assert plan.replicas == {"aaa": 4} and plan.weight == 0
    assert plan.rollback_reason == "AnalysisFailed"
    aborted = plan.status.aborted[-1]
    assert aborted.revision == "bbb" and "0.4" in aborted.message and aborted.reason == "AnalysisFailed"
    assert [e.reason for e in plan.events] == ["RolledBack"]


def aborted_bbb() -> ModelDeploymentStatus:
    st = with_canary()
    return advance(obs(st, "bbb", {"aaa": 3, "bbb": 1}, at=10), passed(st, "Abort", "AnalysisFailed", "bad", at=10)).status


def test_an_aborted_revision_is_never_retried_by_itself():
    st = aborted_bbb()
    for t in (20, 100, 1000):
        plan = advance(obs(st, "bbb", {"aaa": 4}, at=t))
        st = plan.status
        assert st.canary is None and not plan.events


def test_retry_token_rolls_out_again_once_per_value():
    st = aborted_bbb()
    plan = advance(obs(st, "bbb", {"aaa": 4}, at=20, sp=spec(retry="r1")))
    assert plan.status.canary.revision == "bbb" and plan.status.current_step == 0
    assert [e.reason for e in plan.events] == ["Retry", "CanaryStarted"]
    st = plan.status
    st = advance(obs(st, "bbb", {"aaa": 3, "bbb": 1}, at=30, sp=spec(retry="r1")),
                 passed(st, "Abort", "AnalysisFailed", "bad again", at=30)).status
    # The same token (e.g. Argo CD re-syncing the manifest) does not retry a second time.
    plan = advance(obs(st, "bbb", {"aaa": 4}, at=40, sp=spec(retry="r1")))
    assert plan.status.canary is None
    assert advance(obs(st, "bbb", {"aaa": 4}, at=40, sp=spec(retry="r2"))).status.canary.revision == "bbb"


def test_a_new_revision_after_an_abort_rolls_out():
    plan = advance(obs(aborted_bbb(), "ccc", {"aaa": 4}, at=20))
    assert plan.status.canary.revision == "ccc"


def test_a_new_revision_mid_rollout_replaces_the_canary_with_fresh_counts():
    st = with_canary()
    st = advance(obs(st, "bbb", {"aaa": 3, "bbb": 1}, at=10), passed(st, at=10)).status
    plan = advance(obs(st, "ccc", {"aaa": 3, "bbb": 1}, at=20))
    assert plan.status.canary.revision == "ccc" and plan.status.current_step == 0
    assert plan.status.analysis == AnalysisCounts()
    assert set(plan.replicas) == {"aaa", "ccc"}  # bbb retires
    assert [e.reason for e in plan.events] == ["CanaryReplaced"]


def test_a_round_taken_for_a_replaced_canary_is_not_counted():
    st = with_canary()
    stale = passed(st, "Abort", "AnalysisFailed", "bad", at=10)
    plan = advance(obs(st, "ccc", {"aaa": 3, "bbb": 1}, at=10), stale)
    assert plan.status.canary.revision == "ccc" and not plan.status.aborted


def test_spec_back_at_stable_cancels_the_canary():
    plan = advance(obs(with_canary(), "aaa", {"aaa": 3, "bbb": 1}))
    assert plan.status.canary is None and plan.replicas == {"aaa": 4}
    assert [e.reason for e in plan.events] == ["CanaryCancelled"]


def test_abort_flag_rolls_back_and_holds_new_revisions():
    st = with_canary()
    plan = advance(obs(st, "bbb", {"aaa": 3, "bbb": 1}, sp=spec(abort=True)))
    assert plan.status.canary is None and plan.rollback_reason == "ManualAbort"
    assert advance(obs(plan.status, "ccc", {"aaa": 4}, sp=spec(abort=True))).status.canary is None


def test_paused_holds_the_step_but_analysis_can_still_roll_back():
    sp = spec(paused=True)
    st = with_canary(sp=sp)
    ready = {"aaa": 3, "bbb": 1}
    st = advance(obs(st, "bbb", ready, at=10, sp=sp), passed(st, at=10)).status
    assert advance(obs(st, "bbb", ready, at=500, sp=sp)).status.current_step == 0
    plan = advance(obs(st, "bbb", ready, at=510, sp=sp), passed(st, "Abort", "AnalysisFailed", "bad", at=510))
    assert plan.status.canary is None


def test_inconclusive_holds_until_promote():
    st = with_canary()
    ready = {"aaa": 3, "bbb": 1}
    plan = advance(obs(st, "bbb", ready, at=10), passed(st, "Pause", "AnalysisInconclusive", "no data for errors", at=10))
    st = plan.status
    assert st.held == "AnalysisInconclusive" and [e.reason for e in plan.events] == ["RolloutHeld"]
    assert advance(obs(st, "bbb", ready, at=300)).status.current_step == 0
    plan = advance(obs(st, "bbb", ready, at=310, sp=spec(promote="p1")))
    assert plan.status.current_step == 1 and plan.status.held is None


def test_promote_token_leaves_an_open_ended_step_once():
    sp = spec(rollout={"steps": [{"weight": 10}, {"weight": 30}, {"weight": 60}]}, promote="go")
    st = with_canary(sp=spec(rollout={"steps": [{"weight": 10}, {"weight": 30}, {"weight": 60}]}))
    st = advance(obs(st, "bbb", {"aaa": 3, "bbb": 1}, sp=sp)).status
    assert st.current_step == 1
    assert advance(obs(st, "bbb", {"aaa": 3, "bbb": 1}, at=999, sp=sp)).status.current_step == 1


def test_promote_full_switches_once_the_canary_is_full_size():
    st = with_canary()
    sp = spec(promoteFull="now")
    plan = advance(obs(st, "bbb", {"aaa": 3, "bbb": 1}, sp=sp))
    st = plan.status
    assert st.current_step == 2 and st.canary.revision == "bbb"
    assert plan.replicas == {"aaa": 4, "bbb": 4}
    plan = advance(obs(st, "bbb", {"aaa": 4, "bbb": 4}, sp=sp))
    assert plan.status.stable.revision == "bbb" and plan.status.canary is None
    assert plan.replicas == {"bbb": 4}
    assert [e.reason for e in plan.events] == ["Promoted"]


def test_full_walk_promotes_after_the_last_step():
    st = with_canary()
    t = 0
    for _step in range(2):
        ready = {"aaa": 3, "bbb": 2}
        t += 10
        st = advance(obs(st, "bbb", ready, at=t), passed(st, at=t)).status
        t += 60
        st = advance(obs(st, "bbb", ready, at=t)).status
    assert st.current_step == 2
    st = advance(obs(st, "bbb", {"aaa": 4, "bbb": 4}, at=t + 1)).status
    assert st.stable.revision == "bbb" and st.canary is None


def test_a_canary_that_never_gets_ready_is_rolled_back():
    st = with_canary()
    timeout = spec().serving.startup_timeout_seconds
    assert advance(obs(st, "bbb", {"aaa": 3}, at=timeout)).status.canary is not None
    plan = advance(obs(st, "bbb", {"aaa": 3}, at=timeout + 61))
    assert plan.status.canary is None and plan.rollback_reason == "CanaryNotReady"


@pytest.mark.parametrize("case", ["no-metrics", "not-ready", "not-due", "abort", "promoting"])
def test_no_analysis_when_it_cannot_mean_anything(case):
    sp = spec(analysis={"metrics": []}) if case == "no-metrics" else spec(abort=True) if case == "abort" else spec()
    st = with_canary()
    ready = {"aaa": 3, "bbb": 0 if case == "not-ready" else 1}
    if case == "not-due":
        st = st.model_copy(update={"analysis": AnalysisCounts(last_measured_at=T0)})
    if case == "promoting":
        st = st.model_copy(update={"current_step": 2})
    assert wants_analysis(obs(st, "bbb", ready, at=5, sp=sp)) is None
    assert wants_analysis(obs(with_canary(), "bbb", {"aaa": 3, "bbb": 1}, at=5)) is not None


def test_restart_replays_to_the_same_decision():
    """Status is the whole memory: the same inputs give the same plan, nothing counted twice."""
    st = with_canary()
    ready = {"aaa": 3, "bbb": 1}
    first = advance(obs(st, "bbb", ready, at=10), passed(st, at=10))
    again = advance(obs(first.status, "bbb", ready, at=11))
    assert again.status.analysis == first.status.analysis
    assert again.status.current_step == first.status.current_step and again.replicas == first.replicas
    assert isinstance(first, Plan) and not again.events


def test_a_tolerated_failure_is_not_evidence_for_the_step():
    st = with_canary()
    ready = {"aaa": 3, "bbb": 1}
    result = passed(st, "Continue", at=10)
    result = RoundResult(counts=result.counts.model_copy(update={"failed": 1}),
                         measurements=[Measurement(metric="errors", phase="Failed", revision="bbb", value=0.3)],
                         verdict="Continue")
    st = advance(obs(st, "bbb", ready, at=10), result).status
    assert st.analysis.step_rounds == 0
    assert advance(obs(st, "bbb", ready, at=200)).status.current_step == 0
