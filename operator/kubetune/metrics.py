"""Prometheus metrics of the operator, served on /metrics by `kubetune operator`."""

from __future__ import annotations

import threading
import time
from collections import Counter as Tally
from contextlib import contextmanager
from datetime import datetime
from typing import Callable, Iterator

from prometheus_client import Counter, Gauge, Histogram

from kubetune.api.finetunejob import Phase
from kubetune.api.modeldeployment import DeploymentPhase
from kubetune.settings import _VERSION

RECONCILES = Counter("kubetune_reconciles", "Reconciliations, by resource kind and what triggered them.",
                     ["kind", "trigger"])
ERRORS = Counter("kubetune_reconcile_errors", "Reconciliations that raised (kopf or the next tick retries them).",
                 ["kind", "trigger"])
LATENCY = Histogram(
    "kubetune_reconcile_duration_seconds", "Time one reconciliation took.", ["kind", "trigger"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
JOBS_BY_PHASE = Gauge("kubetune_finetunejobs", "FineTuneJobs the operator sees, by status.phase.", ["phase"])
DEPLOYMENTS_BY_PHASE = Gauge("kubetune_modeldeployments", "ModelDeployments the operator sees, by status.phase.", ["phase"])
ROLLBACKS = Counter("kubetune_rollbacks", "Canary revisions rolled back, by reason (AnalysisFailed, ManualAbort, ...).",
                    ["reason"])
ROLLOUTS = Counter("kubetune_rollouts", "Canary rollouts that ended, by outcome (Promoted, RolledBack, CanaryReplaced).",
                   ["outcome"])
MEASUREMENTS = Counter("kubetune_analysis_measurements", "Canary analysis measurements, by metric and phase.",
                       ["metric", "phase"])
# Exported from the first scrape on, whatever the cluster holds, so alerts can use absent() for "operator down".
OPERATOR_INFO = Gauge("kubetune_operator_info", "Always 1, labelled with the operator's version.", ["version"])
OPERATOR_INFO.labels(version=_VERSION).set(1)

# Per-object gauges, read from each object's status on the watch stream (the trainer's progress
# patches included). Labelled by namespace and name; a deleted object's series are removed, so the
# series count follows the objects that exist.
_OBJECT = ["namespace", "name"]
JOB_PHASE = Gauge("kubetune_finetunejob_phase", "1 for the FineTuneJob's current status.phase (no series for the others).",
                  _OBJECT + ["phase"])
JOB_PROGRESS = Gauge("kubetune_finetunejob_progress_ratio", "Optimizer steps done / planned (0 to 1).", _OBJECT)
JOB_STEP = Gauge("kubetune_finetunejob_step", "Optimizer steps done (status.progress.step).", _OBJECT)
JOB_TOTAL_STEPS = Gauge("kubetune_finetunejob_total_steps", "Optimizer steps planned (status.progress.totalSteps).", _OBJECT)
JOB_TRAIN_LOSS = Gauge("kubetune_finetunejob_train_loss", "Latest training loss (status.progress.trainLoss).", _OBJECT)
JOB_EVAL_LOSS = Gauge("kubetune_finetunejob_eval_loss", "Latest evaluation loss (status.progress.evalLoss).", _OBJECT)
JOB_TOKENS_PER_SECOND = Gauge("kubetune_finetunejob_tokens_per_second",
                              "Training throughput over the trainer's last interval (status.progress.tokensPerSecond).",
                              _OBJECT)
DEPLOYMENT_CANARY_WEIGHT = Gauge("kubetune_modeldeployment_canary_weight_percent",
                                 "Canary share of traffic asked for, in percent (0 without a canary).", _OBJECT)
DEPLOYMENT_ACHIEVED_WEIGHT = Gauge("kubetune_modeldeployment_canary_achieved_weight_percent",
                                   "Canary share of traffic actually served, in percent (0 without a canary).", _OBJECT)
DEPLOYMENT_LAST_ROLLBACK = Gauge("kubetune_modeldeployment_last_rollback_timestamp_seconds",
                                 "When the newest revision in status.aborted was rolled back (Unix time).", _OBJECT)


class PhaseBook:
    """Phases of one kind's objects seen on the watch stream, recounted into its gauge on change."""

    def __init__(self, gauge: Gauge, phases: tuple[str, ...]) -> None:
        self._gauge = gauge
        self._all = phases  # every phase is exported, zeros included
        self._phases: dict[str, str] = {}
        self._lock = threading.Lock()  # sync handlers run in kopf's thread pool

    def record(self, key: str, phase: str | None) -> None:
        with self._lock:
            if phase is None:
                self._phases.pop(key, None)
            else:
                self._phases[key] = phase
            counts = Tally(self._phases.values())
        for name in self._all:
            self._gauge.labels(phase=name).set(counts.get(name, 0))


    def keys_except(self, phases: frozenset[str]) -> list[str]:
        """namespace/name of every FineTuneJob seen whose phase is not one of `phases`."""
        with self._lock:
            return [key for key, phase in self._phases.items() if phase not in phases]


PHASE_BOOK = PhaseBook(JOBS_BY_PHASE, Phase.__args__)
DEPLOYMENT_BOOK = PhaseBook(DEPLOYMENTS_BY_PHASE, DeploymentPhase.__args__)

Reader = Callable[[dict], "float | None"]


class StatusGauges:
    """One kind's per-object gauges, set from a status dict (the API's camelCase keys).

    A reader returning None removes that object's series rather than leaving a stale value.
    """

    def __init__(self, readers: dict[Gauge, Reader], phase_gauge: Gauge | None = None,
                 default_phase: str | None = None) -> None:
        self._readers = readers
        self._phase_gauge = phase_gauge
        self._default_phase = default_phase
        self._phases: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()  # sync handlers run in kopf's thread pool

    def record(self, namespace: str, name: str, status: dict | None) -> None:
        """The object's latest status; None when it was deleted."""
        with self._lock:
            for gauge, read in self._readers.items():
                value = None if status is None else read(status)
                if value is None:
                    gauge.remove(namespace, name)
                else:
                    gauge.labels(namespace=namespace, name=name).set(value)
            if self._phase_gauge is not None:
                self._record_phase(namespace, name, None if status is None else status.get("phase") or self._default_phase)

    def _record_phase(self, namespace: str, name: str, phase: str | None) -> None:
        old = self._phases.pop((namespace, name), None)
        if old is not None and old != phase:
            self._phase_gauge.remove(namespace, name, old)
        if phase is not None:
            self._phases[(namespace, name)] = phase
            self._phase_gauge.labels(namespace=namespace, name=name, phase=phase).set(1)


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _progress(field: str) -> Reader:
    return lambda status: _number((status.get("progress") or {}).get(field))


def _progress_ratio(status: dict) -> float | None:
    progress = status.get("progress") or {}
    step, total = _number(progress.get("step")), _number(progress.get("totalSteps"))
    if step is not None and total:
        return min(step / total, 1.0)
    percent = _number(progress.get("percent"))
    return None if percent is None else percent / 100


def _weight(field: str) -> Reader:
    """Percent from status; 0 once a stable revision serves everything and no canary is under way."""
    def read(status: dict) -> float | None:
        weight = _number(status.get(field))
        if weight is None and status.get("canary") is None and status.get("stable") is not None:
            return 0.0
        return weight
    return read


def _last_rollback(status: dict) -> float | None:
    aborted = status.get("aborted") or []
    when = aborted[-1].get("time") if aborted else None
    if not isinstance(when, str):
        return None
    try:
        return datetime.fromisoformat(when.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None  # not a timestamp: the series is left out rather than the handler failing


JOB_GAUGES = StatusGauges({
    JOB_PROGRESS: _progress_ratio,
    JOB_STEP: _progress("step"),
    JOB_TOTAL_STEPS: _progress("totalSteps"),
    JOB_TRAIN_LOSS: _progress("trainLoss"),
    JOB_EVAL_LOSS: _progress("evalLoss"),
    JOB_TOKENS_PER_SECOND: _progress("tokensPerSecond"),
}, phase_gauge=JOB_PHASE, default_phase="Pending")  # as PHASE_BOOK counts a job without a phase yet
DEPLOYMENT_GAUGES = StatusGauges({
    DEPLOYMENT_CANARY_WEIGHT: _weight("canaryWeight"),
    DEPLOYMENT_ACHIEVED_WEIGHT: _weight("achievedWeight"),
    DEPLOYMENT_LAST_ROLLBACK: _last_rollback,
})


@contextmanager
def observe_reconcile(trigger: str, kind: str = "FineTuneJob") -> Iterator[None]:
    start = time.perf_counter()
    RECONCILES.labels(kind=kind, trigger=trigger).inc()
    try:
        yield
    except Exception:
        ERRORS.labels(kind=kind, trigger=trigger).inc()
        raise
    finally:
        LATENCY.labels(kind=kind, trigger=trigger).observe(time.perf_counter() - start)
