"""Prometheus metrics of the operator, served on /metrics by `kubetune operator`."""

from __future__ import annotations

import threading
import time
from collections import Counter as Tally
from contextlib import contextmanager
from typing import Iterator

from prometheus_client import Counter, Gauge, Histogram

from kubetune.api.finetunejob import Phase
from kubetune.api.modeldeployment import DeploymentPhase

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
