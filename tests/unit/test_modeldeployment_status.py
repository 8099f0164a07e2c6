"""ModelDeployment phase, kstatus conditions, message and the status patch, one row of docs/serving.md at a time.

Every status here comes from `rollout.advance()` on what the cluster shows and a
`Resolution`, then `finish()`; feeding it back as `previous` is the next pass.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from kubetune.api import ModelDeploymentSpec, ModelDeploymentStatus
from kubetune.api.modeldeployment import AnalysisCounts, Measurement
from kubetune.builders.serving import ServedRevision
from kubetune.modeldeployment.analysis import RoundResult
from kubetune.modeldeployment.rollout import Observed, advance
from kubetune.modeldeployment.source import Resolution
from kubetune.modeldeployment.status import finish, status_patch

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
GEN = 7
ENDPOINT = "http://bot.ns.svc/v1"
WAITING = Resolution(None, "FineTuneJobNotSucceeded", "waiting for FineTuneJob bot-train to succeed (phase Running)")
FAILED = Resolution(None, "FineTuneJobFailed", "FineTuneJob bot-train failed, nothing new to roll out: OOM", stalled=True)


def spec(**over) -> ModelDeploymentSpec:
    body = {
        "model": {"fineTuneJobRef": {"name": "bot-train"}},
        "serving": {"replicas": 4},
        "rollout": {"steps": [{"weight": 25, "pauseSeconds": 60}, {"weight": 50, "pauseSeconds": 60}]},
        "analysis": {"intervalSeconds": 10, "metrics": [{"name": "errors", "builtin": "error-rate", "max": 0.05}]},
    }
    body.update(over)
    return ModelDeploymentSpec.model_validate(body)


def resolved(name: str) -> Resolution:
    rev = ServedRevision(revision=name, mode="adapter", model_uri=f"s3://m/{name}", base_model_uri="s3://m/base",
                         lora_rank=16, storage=None, fine_tune_job="bot-train")
    return Resolution(rev, "Resolved", f"revision {name} serves s3://m/{name}")


def round_of(st: ModelDeploymentStatus, verdict: str, reason: str, message: str, at: float) -> RoundResult:
    counts = (st.analysis or AnalysisCounts()).model_copy(update={"last_measured_at": T0 + timedelta(seconds=at)})
    phase = {"Continue": "Successful", "Abort": "Failed"}.get(verdict, "Inconclusive")
    m = Measurement(metric="errors", phase=phase, revision=st.canary.revision, value=0.4, message=message)
    return RoundResult(counts=counts, measurements=[m], verdict=verdict, reason=reason, message=message)


def step(previous: ModelDeploymentStatus, res: Resolution, ready: dict[str, int] | None = None, at: float = 0,
         sp: ModelDeploymentSpec | None = None, result: RoundResult | None = None) -> ModelDeploymentStatus:
    obs = Observed(spec=sp or spec(), name="bot", namespace="ns", desired=res.revision,
                   previous=previous, ready=ready or {}, now=T0 + timedelta(seconds=at))
    return finish(advance(obs, result), obs, res, GEN, ENDPOINT, obs.now)


def healthy() -> ModelDeploymentStatus:
    return step(step(ModelDeploymentStatus(), resolved("aaa")), resolved("aaa"), {"aaa": 4}, at=5)


def with_canary(sp: ModelDeploymentSpec | None = None) -> ModelDeploymentStatus:
    return step(healthy(), resolved("bbb"), {"aaa": 4}, at=10, sp=sp)


def rolled_back() -> ModelDeploymentStatus:
    st = with_canary()
    bad = round_of(st, "Abort", "AnalysisFailed", "error-rate = 0.4 > max 0.05 for canary revision bbb", at=20)
    return step(st, resolved("bbb"), {"aaa": 3, "bbb": 1}, at=20, result=bad)


def conditions(st: ModelDeploymentStatus) -> dict[str, str]:
    return {c.type: c.status for c in st.conditions}


def transitions(st: ModelDeploymentStatus) -> dict[str, datetime]:
    return {c.type: c.last_transition_time for c in st.conditions}


def held_by_analysis():
    st = with_canary()
    pause = round_of(st, "Pause", "AnalysisInconclusive", "no data for errors", at=20)
    return step(st, resolved("bbb"), {"aaa": 3, "bbb": 1}, at=20, result=pause)


# (situation, build, phase, Ready, Reconciling, Stalled, reason, words in the message)
ROWS = [
    ("nothing served yet", lambda: step(ModelDeploymentStatus(), WAITING),
     "Progressing", "False", "True", "False", "FineTuneJobNotSucceeded", ["bot-train", "phase Running"]),
    ("stable replicas starting", lambda: step(ModelDeploymentStatus(), resolved("aaa")),
     "Progressing", "False", "True", "False", "Starting", ["waiting for revision aaa to load"]),
    ("canary stepping", lambda: step(with_canary(), resolved("bbb"), {"aaa": 3, "bbb": 1}, at=15),
     "Progressing", "False", "True", "False", "Canary", ["canary revision bbb", "step 1/2 (25%, 25% served)"]),
    ("canary held: spec.paused", lambda: step(with_canary(), resolved("bbb"), {"aaa": 3, "bbb": 1}, sp=spec(paused=True)),
     "Paused", "False", "True", "False", "Paused", ["spec.paused", "step 1/2"]),
    ("canary held: inconclusive", held_by_analysis,
     "Paused", "False", "True", "False", "AnalysisInconclusive", ["no data for errors", "spec.promote", "spec.abort"]),
    ("stable serving", healthy,
     "Healthy", "True", "False", "False", "Serving", ["serving revision aaa with 4/4 ready"]),
    ("wanted revision rolled back", lambda: step(rolled_back(), resolved("bbb"), {"aaa": 4}, at=30),
     "RolledBack", "False", "False", "True", "AnalysisFailed", ["revision bbb was rolled back", "0.4", "serving revision aaa"]),
    ("source cannot be served", lambda: step(healthy(), FAILED, {"aaa": 4}, at=30),
     "Degraded", "False", "False", "True", "FineTuneJobFailed", ["OOM", "still serving revision aaa"]),
    ("stable lost every ready replica", lambda: step(healthy(), resolved("aaa"), {"aaa": 0}, at=30),
     "Degraded", "False", "True", "False", "NoReadyReplicas", ["no ready replica of stable revision aaa"]),
]


@pytest.mark.parametrize("build, phase, ready, reconciling, stalled, reason, words", [r[1:] for r in ROWS],
                         ids=[r[0] for r in ROWS])
def test_phase_table_row(build, phase, ready, reconciling, stalled, reason, words):
    st = build()
    assert st.phase == phase
    assert conditions(st) == {"Ready": ready, "Reconciling": reconciling, "Stalled": stalled}
    assert {c.reason for c in st.conditions} == {reason}
    assert all(c.observed_generation == GEN and c.message == st.message for c in st.conditions)
    assert st.observed_generation == GEN
    for word in words:
        assert word in st.message


def test_rolled_back_message_names_the_revision_and_how_to_retry():
    st = step(rolled_back(), resolved("bbb"), {"aaa": 4}, at=30)
    assert "revision bbb was rolled back" in st.message
    assert "set spec.retry to a new value to try again" in st.message and "spec.model" in st.message
    # spec.retry is the way out: the revision rolls out again, and the phase follows.
    again = step(st, resolved("bbb"), {"aaa": 4}, at=40, sp=spec(retry="r1"))
    assert again.phase == "Progressing" and again.canary.revision == "bbb"


def test_stalled_source_without_a_stable_revision_says_nothing_is_served():
    st = step(ModelDeploymentStatus(), FAILED)
    assert st.phase == "Degraded" and conditions(st)["Stalled"] == "True"
    assert st.message == FAILED.message and "still serving" not in st.message and st.endpoint is None


def test_first_revision_ready_is_healthy_at_once_with_an_endpoint():
    st = step(ModelDeploymentStatus(), resolved("aaa"), {"aaa": 4})
    assert st.phase == "Healthy" and st.endpoint == ENDPOINT and st.stable.revision == "aaa"


def test_spec_abort_holding_a_new_revision_is_paused():
    st = step(healthy(), resolved("bbb"), {"aaa": 4}, at=30, sp=spec(abort=True))
    assert st.phase == "Paused" and conditions(st) == {"Ready": "False", "Reconciling": "True", "Stalled": "False"}
    assert "revision bbb waits" in st.message and "serving aaa" in st.message


def test_healthy_while_the_job_retrains_says_why_nothing_new_rolls_out():
    st = step(healthy(), WAITING, {"aaa": 4}, at=30)
    assert st.phase == "Healthy" and WAITING.message in st.message


def test_last_transition_time_moves_only_when_a_conditions_status_changes():
    st = step(ModelDeploymentStatus(), WAITING, at=0)
    assert set(transitions(st).values()) == {T0}
    st = step(st, resolved("aaa"), {"aaa": 4}, at=10)  # Healthy: Ready and Reconciling flip, Stalled does not
    t10 = T0 + timedelta(seconds=10)
    assert transitions(st) == {"Ready": t10, "Reconciling": t10, "Stalled": T0}
    st = step(st, resolved("aaa"), {"aaa": 4}, at=20)  # nothing changes
    assert transitions(st) == {"Ready": t10, "Reconciling": t10, "Stalled": T0}
    st = step(st, FAILED, {"aaa": 4}, at=30)            # Degraded, stalled: Ready and Stalled flip
    t30 = T0 + timedelta(seconds=30)
    assert transitions(st) == {"Ready": t30, "Reconciling": t10, "Stalled": t30}
    # A new reason or message with the same statuses is not a transition either.
    st = step(st, Resolution(None, "EvaluationRegressed", "regressed", stalled=True), {"aaa": 4}, at=40)
    assert transitions(st) == {"Ready": t30, "Reconciling": t10, "Stalled": t30}
    assert {c.reason for c in st.conditions} == {"EvaluationRegressed"}


def test_a_long_message_is_cut():
    st = step(healthy(), Resolution(None, "UnservableSource", "x" * 5000, stalled=True), {"aaa": 4})
    assert len(st.message) == 1024 and all(len(c.message) == 1024 for c in st.conditions)


def promoted() -> tuple[ModelDeploymentStatus, ModelDeploymentStatus]:
    """The status with a canary at promotion, and the one after the switch."""
    st = step(with_canary(), resolved("bbb"), {"aaa": 3, "bbb": 1}, at=15, sp=spec(promoteFull="now"))
    return st, step(st, resolved("bbb"), {"aaa": 4, "bbb": 4}, at=20, sp=spec(promoteFull="now"))


def test_status_patch_sends_null_for_cleared_fields():
    before, after = promoted()
    assert before.canary is not None and before.current_step == 2 and before.canary_weight == 100
    assert after.phase == "Healthy" and after.stable.revision == "bbb"
    patch = status_patch(after)["status"]
    for cleared in ("canary", "currentStep", "stepStartedAt", "canaryWeight", "achievedWeight", "held"):
        assert cleared in patch and patch[cleared] is None, cleared
    assert patch["stable"]["revision"] == "bbb" and patch["phase"] == "Healthy" and patch["observedGeneration"] == GEN
    assert set(patch) == {info.alias for info in ModelDeploymentStatus.model_fields.values()}
    assert status_patch(before)["status"]["canary"]["revision"] == "bbb"


def merge(target, patch):
    """RFC 7386 JSON merge patch, as the apiserver applies application/merge-patch+json to status."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge(out.get(key), value)
    return out


def test_the_patch_over_the_stored_status_gives_the_new_status_top_level():
    before, after = promoted()
    stored = merge(before.to_wire(), status_patch(after)["status"])
    assert {k: v for k, v in stored.items() if k != "analysis"} == \
        {k: v for k, v in after.to_wire().items() if k != "analysis"}


def test_the_patch_over_the_stored_status_gives_the_new_status_nested():
    st = with_canary()
    waiting = round_of(st, "Wait", None, "3 requests to canary revision bbb, need 20", at=20)
    waiting = RoundResult(counts=waiting.counts.model_copy(update={"waiting_since": T0 + timedelta(seconds=20)}),
                          measurements=waiting.measurements, verdict="Wait")
    before = step(st, resolved("bbb"), {"aaa": 3, "bbb": 1}, at=20, result=waiting)
    assert before.analysis.waiting_since is not None
    after = step(before, resolved("ccc"), {"aaa": 3, "bbb": 1}, at=30)  # a new canary: fresh counts
    assert after.canary.revision == "ccc" and after.analysis.waiting_since is None
    assert merge(before.to_wire(), status_patch(after)["status"]) == after.to_wire()


def test_an_unservable_source_during_a_canary_is_degraded_but_not_stalled():
    st = step(with_canary(), FAILED, {"aaa": 3, "bbb": 1})
    assert st.phase == "Degraded" and st.canary.revision == "bbb"
    assert conditions(st) == {"Ready": "False", "Reconciling": "True", "Stalled": "False"}
    assert "canary bbb" in st.message and "still serving revision aaa" in st.message
