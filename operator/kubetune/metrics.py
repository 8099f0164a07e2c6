"""Prometheus metrics of the operator, served on /metrics by `kubetune operator`."""

from __future__ import annotations

import threading
import time
from collections import Counter as Tally
from contextlib import contextmanager
from typing import Iterator

from prometheus_client import Counter, Gauge, Histogram

from kubetune.api.finetunejob import Phase

PHASES: tuple[str, ...] = Phase.__args__  # every phase is exported, zeros included

RECONCILES = Counter("kubetune_reconciles", "FineTuneJob reconciliations, by what triggered them.", ["trigger"])
ERRORS = Counter("kubetune_reconcile_errors", "Reconciliations that raised (kopf retries them).", ["trigger"])
LATENCY = Histogram(
    "kubetune_reconcile_duration_seconds", "Time one FineTuneJob reconciliation took.", ["trigger"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
JOBS_BY_PHASE = Gauge("kubetune_finetunejobs", "FineTuneJobs the operator sees, by status.phase.", ["phase"])


class PhaseBook:
    """Phases of the FineTuneJobs seen on the watch stream, recounted into the gauge on change."""

    def __init__(self) -> None:
        self._phases: dict[str, str] = {}
        self._lock = threading.Lock()  # sync handlers run in kopf's thread pool

    def record(self, key: str, phase: str | None) -> None:
        with self._lock:
            if phase is None:
                self._phases.pop(key, None)
            else:
                self._phases[key] = phase
            counts = Tally(self._phases.values())
        for name in PHASES:
            JOBS_BY_PHASE.labels(phase=name).set(counts.get(name, 0))


    def keys_except(self, phases: frozenset[str]) -> list[str]:
        """namespace/name of every FineTuneJob seen whose phase is not one of `phases`."""
        with self._lock:
            return [key for key, phase in self._phases.items() if phase not in phases]


PHASE_BOOK = PhaseBook()


@contextmanager
def observe_reconcile(trigger: str) -> Iterator[None]:
    start = time.perf_counter()
    RECONCILES.labels(trigger=trigger).inc()
    try:
        yield
    except Exception:
        ERRORS.labels(trigger=trigger).inc()
        raise
    finally:
        LATENCY.labels(trigger=trigger).observe(time.perf_counter() - start)
