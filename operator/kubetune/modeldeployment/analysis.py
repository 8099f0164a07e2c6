"""Canary analysis as a pure state machine: counts in, one round of measurements, counts and a verdict out.

Limits follow Argo Rollouts (act when a count is *above* its limit), and its
users' main complaint is fixed: too little canary traffic is not evidence. A
samples gate waits for `noData.minSamples` requests per interval and, after
`noData.timeoutSeconds`, applies the declared outcome instead of counting the
silence as inconclusive or failed. The counts live in status, so the caller
feeds back what it stored and an operator restart neither loses nor doubles
them. All I/O goes through the `MetricProvider`; `now` is always passed in.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from kubetune.api.modeldeployment import AnalysisCounts, AnalysisSpec, Measurement, MetricCheck

from .prometheus import MetricProvider, QueryResult

# Continue: healthy so far (steps advance on time). Wait: not enough canary traffic yet,
# hold the step. ContinueWithoutEvidence: the no-data timeout passed with outcome Continue.
Verdict = Literal["Continue", "Wait", "Abort", "Pause", "ContinueWithoutEvidence"]
PLACEHOLDERS = ("revision", "namespace", "model", "interval")
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_DURATION = re.compile(r"[0-9]+[smhdwy]")
_RE2_SPECIAL = set(r"\.+*?()|[]{}^$")
_OPENAI = 'handler=~"/v1/.*"'
# The instrumentator vLLM uses groups statuses as "5xx"; other exporters say "500": "5.." misses "5xx".
_SERVER_ERROR = 'status=~"5.*"'
_BUILTIN = {
    # `or vector(0)`: no 5xx series at all is a 0% error rate, not missing data.
    "error-rate": ("(sum(increase(http_requests_total{SEL," + _OPENAI + "," + _SERVER_ERROR + "}[{{interval}}]))"
                   " or vector(0)) / sum(increase(http_requests_total{SEL," + _OPENAI + "}[{{interval}}]))"),
    "ttft-p95": ("histogram_quantile(0.95, sum by (le) "
                 "(rate(vllm:time_to_first_token_seconds_bucket{SEL}[{{interval}}])))"),
    "latency-p95": ("histogram_quantile(0.95, sum by (le) "
                    "(rate(vllm:e2e_request_latency_seconds_bucket{SEL}[{{interval}}])))"),
}
_SAMPLES = "sum(increase(http_requests_total{SEL," + _OPENAI + "}[{{interval}}]))"
# When several conditions hold, the most drastic wins (a paused rollout is not resumed by a no-data Continue).
_SEVERITY = {"Continue": 0, "Wait": 1, "ContinueWithoutEvidence": 2, "Pause": 3, "Abort": 4}


@dataclass(frozen=True)
class Target:
    namespace: str
    canary: str  # canary revision
    stable: str | None  # stable revision; None skips baseline comparisons
    model: str  # served model name


@dataclass(frozen=True)
class RoundResult:
    counts: AnalysisCounts
    measurements: list[Measurement]
    verdict: Verdict
    reason: str | None = None  # AnalysisFailed, AnalysisError, AnalysisInconclusive or NoData
    message: str | None = None


def render(query: str, values: dict[str, str]) -> str:
    """Substitute placeholders, escaped so that a name can never change the query's structure.

    Raises ValueError for an unknown placeholder or one outside a double-quoted string
    ({{interval}} excepted: it goes in a range selector and is checked to be a duration).
    """
    if not _DURATION.fullmatch(values.get("interval", "0s")):
        raise ValueError(f"interval {values['interval']!r} is not a PromQL duration")
    out: list[str] = []
    i, quote, opened_at = 0, "", 0
    while i < len(query):
        c = query[i]
        if quote and c == "\\" and quote != "`":
            out.append(query[i:i + 2])
            i += 2
            continue
        if quote:
            quote = "" if c == quote else quote
        elif c in "\"'`":
            quote, opened_at = c, i
        elif c == "#":  # a comment runs to the end of the line; placeholders there stay as written
            end = query.find("\n", i)
            end = len(query) if end < 0 else end
            out.append(query[i:end])
            i = end
            continue
        m = _PLACEHOLDER.match(query, i) if c == "{" else None
        if m is None:
            out.append(c)
            i += 1
            continue
        name = m.group(1)
        if name not in PLACEHOLDERS:
            raise ValueError(f"unknown placeholder {{{{{name}}}}}; known: " + ", ".join(PLACEHOLDERS))
        if name not in values:
            raise ValueError(f"no value for placeholder {{{{{name}}}}}")
        value = values[name]
        if quote == '"':
            if query[:opened_at].rstrip().endswith(("=~", "!~")):  # a regex matcher: a "." must match only "."
                value = "".join("\\" + ch if ch in _RE2_SPECIAL else ch for ch in value)
            value = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
        elif name != "interval":
            raise ValueError(f"placeholder {{{{{name}}}}} must be inside a quoted label value (double quotes)")
        out.append(value)
        i = m.end()
    return "".join(out)


def _selector(spec: AnalysisSpec) -> str:
    for label in (spec.namespace_label, spec.revision_label):
        if not _LABEL_NAME.fullmatch(label):  # the API checks this too; builtins paste it unquoted
            raise ValueError(f"{label!r} is not a Prometheus label name")
    return f'{spec.namespace_label}="{{{{namespace}}}}",{spec.revision_label}="{{{{revision}}}}"'


def check_query(check: MetricCheck, spec: AnalysisSpec) -> str:
    """The query of a check before rendering: the user's, or a builtin's with the configured labels."""
    if check.builtin is not None:
        return _BUILTIN[check.builtin].replace("SEL", _selector(spec))
    assert check.query is not None
    return check.query


def samples_query(spec: AnalysisSpec) -> str:
    return _SAMPLES.replace("SEL", _selector(spec))


def due(spec: AnalysisSpec, counts: AnalysisCounts | None, now: datetime) -> bool:
    if counts is None or counts.last_measured_at is None:
        return True
    return (now - counts.last_measured_at).total_seconds() >= spec.interval_seconds


def _slot(spec: AnalysisSpec, before: AnalysisCounts, now: datetime) -> datetime:
    """The time a round is recorded at: its slot on the interval schedule while it keeps up.

    Rounds run on the operator's tick, a little after they are due; recording `now`
    would let that lateness add up round after round (5 s intervals became 5.5 s),
    so detection would take longer than its intervals say. After a longer gap
    (the operator was down) the schedule restarts at `now`.
    """
    last = before.last_measured_at
    if last is None:
        return now
    scheduled = last + timedelta(seconds=spec.interval_seconds)
    return scheduled if timedelta(0) <= now - scheduled < timedelta(seconds=spec.interval_seconds) else now


def run_round(spec: AnalysisSpec, counts: AnalysisCounts | None, target: Target, provider: MetricProvider,
              now: datetime) -> RoundResult:
    before = counts or AnalysisCounts()
    if not spec.metrics:
        return RoundResult(before.model_copy(update={"last_measured_at": _slot(spec, before, now)}), [], "Continue",
                           message="no metrics configured: steps advance on time alone")
    gate = _samples(spec, before, target, provider, now) if spec.no_data.min_samples > 0 else None
    if gate is None:  # enough traffic (or no gate): measure, and stop waiting
        measurements, waiting_since = [_measure(check, spec, target, provider, now) for check in spec.metrics], None
    elif gate.phase == "Error":  # says nothing about traffic: keep waiting as before
        measurements, waiting_since = [gate], before.waiting_since
    else:
        measurements, waiting_since = [gate], before.waiting_since or now
    # Low traffic is not evidence: the gate's Inconclusive is not counted, its Error is.
    metric = [m for m in measurements if m.metric != "samples" or m.phase == "Error"]
    phases = [m.phase for m in metric]
    after = before.model_copy(update={
        "successful": before.successful + phases.count("Successful"),
        "failed": before.failed + phases.count("Failed"),
        "inconclusive": before.inconclusive + phases.count("Inconclusive"),
        "errors": before.errors + phases.count("Error"),
        "consecutive_errors": before.consecutive_errors + 1 if "Error" in phases else 0,
        "last_measured_at": _slot(spec, before, now),
        "waiting_since": waiting_since,
    })
    verdict, reason, message = _verdict(spec, after, metric, measurements, target, now)
    return RoundResult(after, measurements, verdict, reason, message)


def _verdict(spec: AnalysisSpec, c: AnalysisCounts, metric: list[Measurement], taken: list[Measurement],
             target: Target, now: datetime) -> tuple[Verdict, str | None, str | None]:
    def first(phase: str) -> str:
        found = next((m.message for m in metric if m.phase == phase), None)
        return f"{found} " if found else ""

    candidates: list[tuple[Verdict, str | None, str | None]] = []
    if c.failed > spec.failure_limit:
        candidates.append(("Abort", "AnalysisFailed",
                           f"{first('Failed')}(failed {c.failed} > failureLimit {spec.failure_limit})"))
    if c.consecutive_errors > spec.consecutive_error_limit:
        candidates.append((spec.error_outcome, "AnalysisError",
                           f"{first('Error')}({c.consecutive_errors} errors in a row > consecutiveErrorLimit "
                           f"{spec.consecutive_error_limit})"))
    if c.inconclusive > spec.inconclusive_limit:
        candidates.append(("Pause", "AnalysisInconclusive",
                           f"{first('Inconclusive')}(inconclusive {c.inconclusive} > inconclusiveLimit "
                           f"{spec.inconclusive_limit})"))
    gate = next((m for m in taken if m.metric == "samples"), None)
    if gate is not None and gate.phase == "Inconclusive" and c.waiting_since is not None:
        policy = spec.no_data
        if (now - c.waiting_since).total_seconds() >= policy.timeout_seconds:
            outcome: Verdict = "ContinueWithoutEvidence" if policy.outcome == "Continue" else policy.outcome
            candidates.append((outcome, "NoData", f"{gate.message}; timed out: {policy.outcome}"))
        else:
            candidates.append(("Wait", None, gate.message))
    elif gate is not None:  # the samples query errored: no evidence either way
        candidates.append(("Wait", None, gate.message))
    if not candidates:
        passed = sum(m.phase == "Successful" for m in metric)
        candidates.append(("Continue", None, f"{passed}/{len(metric)} checks passed for canary revision {target.canary}"))
    return max(candidates, key=lambda v: _SEVERITY[v[0]])  # max keeps the first of equals: listed by priority


def _values(spec: AnalysisSpec, target: Target, revision: str) -> dict[str, str]:
    return {"revision": revision, "namespace": target.namespace, "model": target.model,
            "interval": f"{spec.interval_seconds}s"}


def _ask(provider: MetricProvider, spec: AnalysisSpec, check: MetricCheck | None, target: Target,
         revision: str) -> QueryResult:
    """Query a check (None: the samples gate) for a revision; a bad template is an error result, not an exception."""
    try:
        promql = render(samples_query(spec) if check is None else check_query(check, spec),
                        _values(spec, target, revision))
    except ValueError as e:
        return QueryResult(None, error=str(e))
    try:
        return provider.query(promql)
    except Exception as e:  # noqa: BLE001 - a broken provider is a measurement error, not a crashed handler
        return QueryResult(None, error=f"{type(e).__name__}: {e}")


def _empty(r: QueryResult) -> bool:
    return r.value is None or math.isnan(r.value)


def _samples(spec: AnalysisSpec, before: AnalysisCounts, target: Target, provider: MetricProvider,
             now: datetime) -> Measurement | None:
    """None when the canary had enough traffic; else the measurement that says why not."""
    policy, rev = spec.no_data, target.canary
    r = _ask(provider, spec, None, target, rev)
    base = {"metric": "samples", "revision": rev, "threshold": f"min {policy.min_samples} requests", "time": now}
    if r.error is not None:
        return Measurement(phase="Error", message=f"samples query failed: {r.error}", **base)
    if not _empty(r) and r.value >= policy.min_samples:
        return None
    count = 0.0 if _empty(r) else r.value
    waited = int((now - (before.waiting_since or now)).total_seconds())
    return Measurement(phase="Inconclusive", value=None if _empty(r) else r.value, **base, message=(
        f"{count:g} requests to canary revision {rev} in the last {spec.interval_seconds}s, need "
        f"{policy.min_samples}; waited {waited}s of {policy.timeout_seconds}s"))


def _measure(check: MetricCheck, spec: AnalysisSpec, target: Target, provider: MetricProvider,
             now: datetime) -> Measurement:
    rev, name = target.canary, check.name
    bounds = [f"max {check.max:g}"] if check.max is not None else []
    bounds += [f"min {check.min:g}"] if check.min is not None else []
    m = Measurement(metric=name, phase="Successful", revision=rev, time=now, threshold=", ".join(bounds) or None)

    def out(phase: str, message: str | None, threshold: str | None = None, **extra: float | None) -> Measurement:
        return m.model_copy(update={"phase": phase, "message": message, "threshold": threshold or m.threshold, **extra})

    r = _ask(provider, spec, check, target, rev)
    if r.error is not None:
        return out("Error", f"{name}: query for canary revision {rev} failed: {r.error}")
    if _empty(r):
        return out("Inconclusive", f"{name}: no data for canary revision {rev}")
    v = r.value
    if check.max is not None and v > check.max:
        return out("Failed", f"{name} = {v:g} > max {check.max:g} for canary revision {rev}", f"max {check.max:g}", value=v)
    if check.min is not None and v < check.min:
        return out("Failed", f"{name} = {v:g} < min {check.min:g} for canary revision {rev}", f"min {check.min:g}", value=v)
    if check.baseline is None or target.stable is None:
        note = f"{name}: no stable revision, baseline skipped" if check.baseline is not None else None
        return out("Successful", note, value=v)
    b, stable = check.baseline, target.stable
    s_r = _ask(provider, spec, check, target, stable)
    if s_r.error is not None:
        return out("Error", f"{name}: query for stable revision {stable} failed: {s_r.error}", value=v)
    if _empty(s_r):
        return out("Inconclusive", f"{name}: no data for stable revision {stable} (canary {v:g})", value=v)
    s = s_r.value
    vs = f"for canary revision {rev} vs stable {stable}"
    bounds += [f"difference <= {b.max_difference:g} vs stable"] if b.max_difference is not None else []
    bounds += [f"ratio <= {b.max_ratio:g} vs stable"] if b.max_ratio is not None else []
    if b.max_difference is not None and v - s > b.max_difference:
        return out("Failed", f"{name} = {v:g} exceeds stable {s:g} by {v - s:g} > max difference "
                   f"{b.max_difference:g} {vs}", f"difference <= {b.max_difference:g} vs stable", value=v, baseline=s)
    note = None
    if b.max_ratio is not None:
        if s == 0:
            note = f"{name}: stable value is 0, ratio <= {b.max_ratio:g} not applied"
        elif v / s > b.max_ratio:
            return out("Failed", f"{name} = {v:g} is {v / s:.3g}x stable {s:g} > max ratio {b.max_ratio:g} {vs}",
                       f"ratio <= {b.max_ratio:g} vs stable", value=v, baseline=s)
    return out("Successful", note, ", ".join(bounds), value=v, baseline=s)
