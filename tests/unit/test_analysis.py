"""Canary analysis state machine: measurements, Argo-style limits, the samples gate, template escaping."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest

from kubetune.api.modeldeployment import AnalysisCounts, AnalysisSpec, MetricCheck
from kubetune.modeldeployment.analysis import Target, check_query, due, render, run_round, samples_query
from kubetune.modeldeployment.prometheus import QueryResult

pytestmark = pytest.mark.unit

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
TARGET = Target(namespace="team-a", canary="c1", stable="s1", model="bot")
Q = 'm{revision="{{revision}}"}'
CANARY, STABLE = 'm{revision="c1"}', 'm{revision="s1"}'
SAMPLES = 'sum(increase(http_requests_total{namespace="team-a",revision="c1",handler=~"/v1/.*"}[60s]))'
NAN, INF = float("nan"), float("inf")


class FakeProvider:
    """Answers rendered queries from a dict; anything else is an error the test will see."""

    def __init__(self, answers: dict[str, QueryResult | float | None]):
        self.answers = {q: a if isinstance(a, QueryResult) else QueryResult(a) for q, a in answers.items()}
        self.seen: list[str] = []

    def query(self, promql: str) -> QueryResult:
        self.seen.append(promql)
        return self.answers.get(promql, QueryResult(None, error=f"fake: no answer for {promql}"))


def err(message: str = "boom") -> QueryResult:
    return QueryResult(None, error=message)


def spec(metrics: list[dict] | None = None, min_samples: int = 0, **fields) -> AnalysisSpec:
    doc = {"intervalSeconds": 60, "noData": {"minSamples": min_samples, "timeoutSeconds": 900, "outcome": "Pause"},
           "metrics": [{"name": "m", "query": Q, "max": 0.1}] if metrics is None else metrics}
    doc.update(fields)
    return AnalysisSpec.model_validate(doc)


def one(answer, check: dict | None = None, counts: AnalysisCounts | None = None, target: Target = TARGET,
        min_samples: int = 0, **fields):
    check = {"name": "m", "query": Q, **(check or {"max": 0.1})}
    provider = FakeProvider(answer if isinstance(answer, dict) else {CANARY: answer})
    result = run_round(spec([check], min_samples, **fields), counts, target, provider, NOW)
    return result, provider


# --- one metric, one round -------------------------------------------------------------------

@pytest.mark.parametrize("answer, check, fields, phase, verdict, reason", [
    (0.05, {"max": 0.1}, {}, "Successful", "Continue", None),
    (0.1, {"max": 0.1}, {}, "Successful", "Continue", None),  # the bound itself passes
    (0.31, {"max": 0.1}, {"failureLimit": 1}, "Failed", "Continue", None),  # failed 1 == limit 1
    (0.31, {"max": 0.1}, {"failureLimit": 0}, "Failed", "Abort", "AnalysisFailed"),
    (INF, {"max": 0.1}, {"failureLimit": 0}, "Failed", "Abort", "AnalysisFailed"),
    (3.0, {"min": 5}, {"failureLimit": 0}, "Failed", "Abort", "AnalysisFailed"),
    (5.0, {"min": 5}, {"failureLimit": 0}, "Successful", "Continue", None),
    (None, {"max": 0.1}, {"inconclusiveLimit": 0}, "Inconclusive", "Pause", "AnalysisInconclusive"),
    (NAN, {"max": 0.1}, {"inconclusiveLimit": 0}, "Inconclusive", "Pause", "AnalysisInconclusive"),
    (None, {"max": 0.1}, {"inconclusiveLimit": 1}, "Inconclusive", "Continue", None),
    (err(), {"max": 0.1}, {"consecutiveErrorLimit": 0}, "Error", "Abort", "AnalysisError"),
    (err(), {"max": 0.1}, {"consecutiveErrorLimit": 0, "errorOutcome": "Pause"}, "Error", "Pause", "AnalysisError"),
    (err(), {"max": 0.1}, {"consecutiveErrorLimit": 1}, "Error", "Continue", None),
])
def test_single_measurement(answer, check, fields, phase, verdict, reason):
    result, provider = one(answer, check, **fields)
    assert provider.seen == [CANARY]
    [m] = result.measurements
    assert (m.metric, m.phase, m.revision, m.time) == ("m", phase, "c1", NOW)
    assert (result.verdict, result.reason) == (verdict, reason)
    counts = result.counts
    assert (counts.successful, counts.failed, counts.inconclusive, counts.errors) == tuple(
        int(phase == p) for p in ("Successful", "Failed", "Inconclusive", "Error"))
    assert counts.consecutive_errors == int(phase == "Error")
    assert counts.last_measured_at == NOW


def test_failure_message_names_metric_value_threshold_and_revision():
    counts = AnalysisCounts(failed=1)
    result, _ = one({'error_rate{revision="abc123"}': 0.31},
                    {"query": 'error_rate{revision="{{revision}}"}', "max": 0.05}, counts,
                    Target("team-a", "abc123", None, "bot"), failureLimit=1)
    assert result.verdict == "Abort"
    assert result.message == "m = 0.31 > max 0.05 for canary revision abc123 (failed 2 > failureLimit 1)"
    m = result.measurements[0]
    assert (m.value, m.threshold) == (0.31, "max 0.05")


def test_error_message_carries_provider_error():
    result, _ = one(err("connection refused"), consecutiveErrorLimit=0)
    assert "connection refused" in result.measurements[0].message
    assert "1 errors in a row > consecutiveErrorLimit 0" in result.message


# --- limits across rounds --------------------------------------------------------------------

def rounds(values: list, counts: AnalysisCounts | None = None, check: dict | None = None, **fields):
    """Run one round per value, feeding each round's counts into the next."""
    results = []
    for value in values:
        result, _ = one(value, check, counts, **fields)
        counts = result.counts
        results.append(result)
    return results


def test_flapping_aborts_on_second_failure_not_first():
    results = rounds([0.5, 0.01, 0.5], failureLimit=1)
    assert [r.verdict for r in results] == ["Continue", "Continue", "Abort"]
    assert [r.measurements[0].phase for r in results] == ["Failed", "Successful", "Failed"]
    assert (results[-1].counts.failed, results[-1].counts.successful) == (2, 1)
    assert "(failed 2 > failureLimit 1)" in results[-1].message


@pytest.mark.parametrize("limit_field, limit, answer, before_field", [
    ("failureLimit", 3, 0.5, "failed"),
    ("inconclusiveLimit", 2, None, "inconclusive"),
    ("consecutiveErrorLimit", 4, err(), "consecutive_errors"),
])
def test_each_limit_acts_only_above_it(limit_field, limit, answer, before_field):
    at_limit, _ = one(answer, counts=AnalysisCounts(**{before_field: limit - 1}), **{limit_field: limit})
    assert getattr(at_limit.counts, before_field) == limit
    assert at_limit.verdict == "Continue"
    above, _ = one(answer, counts=at_limit.counts, **{limit_field: limit})
    assert getattr(above.counts, before_field) == limit + 1
    assert above.verdict in ("Abort", "Pause")


def test_consecutive_errors_reset_by_clean_round():
    results = rounds([err(), err(), 0.01, err(), err(), err()], consecutiveErrorLimit=2)
    assert [r.counts.consecutive_errors for r in results] == [1, 2, 0, 1, 2, 3]
    assert [r.verdict for r in results] == ["Continue"] * 5 + ["Abort"]
    assert results[-1].counts.errors == 5
    assert results[-1].reason == "AnalysisError"


def test_counts_accumulate_and_inputs_are_not_mutated():
    start = AnalysisCounts(successful=4, failed=1, inconclusive=1, errors=2, consecutive_errors=1, step_rounds=2,
                           last_measured_at=NOW - timedelta(minutes=5))
    snapshot = start.model_copy(deep=True)
    s = spec([{"name": "a", "query": 'a{revision="{{revision}}"}', "max": 1},
              {"name": "b", "query": 'b{revision="{{revision}}"}', "max": 1},
              {"name": "c", "query": 'c{revision="{{revision}}"}', "max": 1}], failureLimit=5, inconclusiveLimit=5)
    provider = FakeProvider({'a{revision="c1"}': 0.5, 'b{revision="c1"}': 2.0, 'c{revision="c1"}': None})
    result = run_round(s, start, TARGET, provider, NOW)
    assert start == snapshot
    c = result.counts
    assert (c.successful, c.failed, c.inconclusive, c.errors, c.consecutive_errors) == (5, 2, 2, 2, 0)
    assert c.step_rounds == 2  # the rollout's own counter passes through untouched
    assert [m.phase for m in result.measurements] == ["Successful", "Failed", "Inconclusive"]
    assert result.verdict == "Continue"


def test_abort_wins_over_pause_and_error_outcome():
    s = spec([{"name": "a", "query": 'a{revision="{{revision}}"}', "max": 1},
              {"name": "b", "query": 'b{revision="{{revision}}"}', "max": 1},
              {"name": "c", "query": 'c{revision="{{revision}}"}', "max": 1}],
             failureLimit=0, inconclusiveLimit=0, consecutiveErrorLimit=0, errorOutcome="Pause")
    provider = FakeProvider({'a{revision="c1"}': err(), 'b{revision="c1"}': 2.0, 'c{revision="c1"}': None})
    result = run_round(s, None, TARGET, provider, NOW)
    assert (result.verdict, result.reason) == ("Abort", "AnalysisFailed")


def test_no_metrics_means_no_queries_and_continue():
    provider = FakeProvider({})
    result = run_round(spec([], min_samples=20), None, TARGET, provider, NOW)
    assert (provider.seen, result.measurements, result.verdict) == ([], [], "Continue")
    assert "time alone" in result.message


# --- baseline ---------------------------------------------------------------------------------

@pytest.mark.parametrize("canary, stable, baseline, phase, threshold", [
    (0.10, 0.05, {"maxDifference": 0.02}, "Failed", "difference <= 0.02 vs stable"),
    (0.06, 0.05, {"maxDifference": 0.02}, "Successful", "difference <= 0.02 vs stable"),
    (0.30, 0.10, {"maxRatio": 2}, "Failed", "ratio <= 2 vs stable"),
    (0.20, 0.10, {"maxRatio": 2}, "Successful", "ratio <= 2 vs stable"),  # ratio == max passes
    (0.30, 0.10, {"maxDifference": 1, "maxRatio": 2}, "Failed", "ratio <= 2 vs stable"),
    (5.00, 0.00, {"maxRatio": 2}, "Successful", "ratio <= 2 vs stable"),  # ratio undefined: not applied
])
def test_baseline(canary, stable, baseline, phase, threshold):
    result, provider = one({CANARY: canary, STABLE: stable}, {"baseline": baseline}, failureLimit=0)
    assert provider.seen == [CANARY, STABLE]
    [m] = result.measurements
    assert (m.phase, m.value, m.baseline, m.threshold) == (phase, canary, stable, threshold)
    assert result.verdict == ("Abort" if phase == "Failed" else "Continue")
    if phase == "Failed":
        assert "vs stable s1" in m.message and "c1" in m.message
    if stable == 0:
        assert "stable value is 0" in m.message and "not applied" in m.message


@pytest.mark.parametrize("stable, phase", [(None, "Inconclusive"), (NAN, "Inconclusive"), (err("down"), "Error")])
def test_baseline_without_stable_value(stable, phase):
    result, _ = one({CANARY: 0.05, STABLE: stable}, {"baseline": {"maxDifference": 0.01}})
    [m] = result.measurements
    assert (m.phase, m.value) == (phase, 0.05)
    assert "stable revision s1" in m.message


def test_baseline_skipped_without_stable_revision():
    result, provider = one({CANARY: 0.05}, {"baseline": {"maxDifference": 0.01}},
                           target=Target("team-a", "c1", None, "bot"))
    assert provider.seen == [CANARY]
    assert result.measurements[0].phase == "Successful"
    assert "baseline skipped" in result.measurements[0].message


def test_absolute_failure_does_not_need_the_stable_query():
    result, provider = one({CANARY: 0.5}, {"max": 0.1, "baseline": {"maxRatio": 2}})
    assert provider.seen == [CANARY]
    assert result.measurements[0].phase == "Failed"


# --- samples gate -------------------------------------------------------------------------------

@pytest.mark.parametrize("samples, shown", [(5.0, "5 requests"), (None, "0 requests"), (NAN, "0 requests")])
def test_too_few_samples_waits_without_counting(samples, shown):
    result, provider = one({SAMPLES: samples, CANARY: 0.01}, min_samples=20, inconclusiveLimit=0)
    assert provider.seen == [SAMPLES]  # no metric measured on too little traffic
    [m] = result.measurements
    assert (m.metric, m.phase, m.revision) == ("samples", "Inconclusive", "c1")
    assert shown in m.message and "need 20" in m.message and "waited 0s of 900s" in m.message
    assert result.verdict == "Wait" and result.reason is None
    c = result.counts
    assert (c.inconclusive, c.failed, c.errors, c.successful) == (0, 0, 0, 0)
    assert (c.waiting_since, c.last_measured_at) == (NOW, NOW)


def test_waiting_keeps_earliest_start_and_says_how_long():
    since = NOW - timedelta(seconds=300)
    result, _ = one({SAMPLES: 3.0}, counts=AnalysisCounts(waiting_since=since), min_samples=20)
    assert result.counts.waiting_since == since
    assert "waited 300s of 900s" in result.measurements[0].message
    assert result.verdict == "Wait"


@pytest.mark.parametrize("outcome, verdict", [("Pause", "Pause"), ("Abort", "Abort"),
                                              ("Continue", "ContinueWithoutEvidence")])
@pytest.mark.parametrize("waited, timed_out", [(899, False), (900, True), (5000, True)])
def test_no_data_timeout_outcome(outcome, verdict, waited, timed_out):
    counts = AnalysisCounts(waiting_since=NOW - timedelta(seconds=waited))
    provider = FakeProvider({SAMPLES: 2.0})
    s = spec(min_samples=20, noData={"minSamples": 20, "timeoutSeconds": 900, "outcome": outcome})
    result = run_round(s, counts, TARGET, provider, NOW)
    if timed_out:
        assert (result.verdict, result.reason) == (verdict, "NoData")
        assert "2 requests" in result.message and outcome in result.message
    else:
        assert (result.verdict, result.reason) == ("Wait", None)


def test_enough_samples_measures_and_stops_waiting():
    counts = AnalysisCounts(waiting_since=NOW - timedelta(seconds=600))
    result, provider = one({SAMPLES: 20.0, CANARY: 0.01}, counts=counts, min_samples=20)
    assert provider.seen == [SAMPLES, CANARY]
    assert [m.metric for m in result.measurements] == ["m"]
    assert result.counts.waiting_since is None
    assert result.verdict == "Continue"


def test_samples_query_error_counts_as_error():
    since = NOW - timedelta(seconds=60)
    result, provider = one({SAMPLES: err("timed out")}, counts=AnalysisCounts(waiting_since=since),
                           min_samples=20, consecutiveErrorLimit=1)
    assert provider.seen == [SAMPLES]
    [m] = result.measurements
    assert (m.metric, m.phase) == ("samples", "Error") and "timed out" in m.message
    assert (result.counts.errors, result.counts.consecutive_errors, result.counts.waiting_since) == (1, 1, since)
    assert result.verdict == "Wait"
    again, _ = one({SAMPLES: err()}, counts=result.counts, min_samples=20, consecutiveErrorLimit=1)
    assert (again.verdict, again.reason) == ("Abort", "AnalysisError")


def test_low_traffic_round_is_not_an_error_round():
    result, _ = one({SAMPLES: 1.0}, counts=AnalysisCounts(consecutive_errors=3, errors=3), min_samples=20)
    assert (result.counts.consecutive_errors, result.counts.errors) == (0, 3)


def test_no_data_continue_does_not_override_an_inconclusive_pause():
    counts = AnalysisCounts(inconclusive=1, waiting_since=NOW - timedelta(hours=1))
    s = spec(min_samples=20, noData={"minSamples": 20, "timeoutSeconds": 900, "outcome": "Continue"})
    result = run_round(s, counts, TARGET, FakeProvider({SAMPLES: 0.0}), NOW)
    assert (result.verdict, result.reason) == ("Pause", "AnalysisInconclusive")


# --- templates ------------------------------------------------------------------------------------

VALUES = {"revision": "c1", "namespace": "team-a", "model": "bot", "interval": "60s"}


def outside_strings(q: str) -> str:
    """The query with every double-quoted literal's content removed: its structure."""
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', q, flags=re.S)


@pytest.mark.parametrize("evil", ['"} or vector(1) #', '\\"} or vector(1) #', "a\nb", "\\", 'x" or on() vector(1) or "'])
@pytest.mark.parametrize("field", ["namespace", "model", "revision"])
def test_values_cannot_change_query_structure(field, evil):
    template = ('sum(rate(x{namespace="{{namespace}}",model_name=~"{{model}}",revision="{{revision}}"}'
                "[{{interval}}]))")
    rendered = render(template, {**VALUES, field: evil})
    assert outside_strings(rendered) == outside_strings(template).replace("{{interval}}", "60s")
    assert "\n" not in rendered


def test_escaping_exact():
    assert render('x{n="{{namespace}}"}', {**VALUES, "namespace": '"} or vector(1) #'}) == \
        'x{n="\\"} or vector(1) #"}'
    assert render('x{m=~"{{model}}"}', {**VALUES, "model": "org/m.v1"}) == 'x{m=~"org/m\\\\.v1"}'


@pytest.mark.parametrize("template, name", [
    ("x{revision={{revision}}}", "revision"),
    ("x{revision='{{revision}}'}", "revision"),
    ("x{revision=`{{revision}}`}", "revision"),
    ('x{revision="r"} / {{model}}', "model"),
])
def test_placeholder_outside_double_quotes_is_rejected(template, name):
    with pytest.raises(ValueError, match=re.escape(f"placeholder {{{{{name}}}}} must be inside a quoted label value")):
        render(template, VALUES)


def test_placeholder_outside_quotes_is_an_error_measurement():
    result, provider = one({}, {"query": "x{revision={{revision}}}", "max": 1}, consecutiveErrorLimit=0)
    assert provider.seen == []
    [m] = result.measurements
    assert m.phase == "Error"
    assert "placeholder {{revision}} must be inside a quoted label value" in m.message
    assert result.verdict == "Abort"


def test_template_details():
    assert render('x[{{interval}}] # {{revision}} "{{bogus}}"\n', VALUES) == 'x[60s] # {{revision}} "{{bogus}}"\n'
    assert render('x{a="\\"{{ revision }}"}', VALUES) == 'x{a="\\"c1"}'
    with pytest.raises(ValueError, match="unknown placeholder"):
        render('x{a="{{revison}}"}', VALUES)
    with pytest.raises(ValueError, match="duration"):
        render("x[{{interval}}]", {**VALUES, "interval": "1m) or vector(1"})


@pytest.mark.parametrize("builtin, must", [
    ("error-rate", ["http_requests_total", 'handler=~"/v1/.*"', 'status=~"5.*"', "or vector(0)"]),
    ("ttft-p95", ["histogram_quantile(0.95", "vllm:time_to_first_token_seconds_bucket", "by (le)"]),
    ("latency-p95", ["histogram_quantile(0.95", "vllm:e2e_request_latency_seconds_bucket", "by (le)"]),
])
def test_builtin_queries_use_configured_labels(builtin, must):
    s = spec(revisionLabel="rev_hash", namespaceLabel="kube_ns")
    rendered = render(check_query(MetricCheck(name="x", builtin=builtin, max=1), s), VALUES)
    for text in must + ['kube_ns="team-a"', 'rev_hash="c1"', "[60s]"]:
        assert text in rendered
    assert "revision=" not in rendered and "namespace=" not in rendered
    assert rendered.count('rev_hash="c1"') == rendered.count("http_requests_total") + rendered.count("_bucket")
    samples = render(samples_query(s), VALUES)
    assert samples == 'sum(increase(http_requests_total{kube_ns="team-a",rev_hash="c1",handler=~"/v1/.*"}[60s]))'


def test_builtin_check_end_to_end():
    s = spec([{"name": "errors", "builtin": "error-rate", "max": 0.05}], failureLimit=0)
    rendered = render(check_query(s.metrics[0], s), VALUES)
    result = run_round(s, None, TARGET, FakeProvider({rendered: 0.2}), NOW)
    assert result.verdict == "Abort"
    assert result.message.startswith("errors = 0.2 > max 0.05 for canary revision c1")


def test_nothing_raises_out_of_a_round():
    class Broken:
        def query(self, promql):
            raise RuntimeError("provider bug")

    result = run_round(spec(consecutiveErrorLimit=0), None, TARGET, Broken(), NOW)
    assert result.measurements[0].phase == "Error" and "provider bug" in result.measurements[0].message
    # Label names are validated by the API; a spec that skipped validation still cannot inject through them.
    unchecked = spec([{"name": "e", "builtin": "error-rate", "max": 1}]).model_copy(update={"revision_label": 'x="1"} or'})
    provider = FakeProvider({})
    result = run_round(unchecked, None, TARGET, provider, NOW)
    assert provider.seen == [] and result.measurements[0].phase == "Error"
    assert "not a Prometheus label name" in result.measurements[0].message


# --- due ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("counts, expected", [
    (None, True),
    (AnalysisCounts(), True),
    (AnalysisCounts(last_measured_at=NOW - timedelta(seconds=59)), False),
    (AnalysisCounts(last_measured_at=NOW - timedelta(seconds=60)), True),
    (AnalysisCounts(last_measured_at=NOW - timedelta(hours=1)), True),
])
def test_due(counts, expected):
    assert due(spec(), counts, NOW) is expected



def test_rounds_keep_to_the_interval_schedule_when_they_run_late():
    """Late ticks must not stretch the interval: a round 0.9 s late is recorded at its slot."""
    spec = AnalysisSpec(interval_seconds=5, metrics=[])
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    counts = None
    recorded = []
    for late in (0.0, 5.9, 10.8, 15.7):
        now = t0 + timedelta(seconds=late)
        assert due(spec, counts, now)
        counts = run_round(spec, counts, Target("ns", "c", None, "m"), None, now).counts
        recorded.append((counts.last_measured_at - t0).total_seconds())
    assert recorded == [0.0, 5.0, 10.0, 15.0]
    # After a long gap (operator down) the schedule restarts at the round's own time.
    later = t0 + timedelta(seconds=60.3)
    assert (run_round(spec, counts, Target("ns", "c", None, "m"), None, later).counts.last_measured_at - t0).total_seconds() == 60.3


def test_without_a_prometheus_address_every_check_is_an_error_that_says_how_to_fix_it():
    from kubetune.modeldeployment.prometheus import UnconfiguredProvider
    spec = AnalysisSpec(metrics=[MetricCheck(name="errors", builtin="error-rate", max=0.1)],
                        consecutive_error_limit=0, error_outcome="Pause")
    result = run_round(spec, None, Target("ns", "c", "s", "m"), UnconfiguredProvider(),
                       datetime(2026, 1, 1, tzinfo=timezone.utc))
    assert [m.phase for m in result.measurements] == ["Error"]
    assert "prometheusAddress" in result.measurements[0].message
    assert result.verdict == "Pause" and result.reason == "AnalysisError"
