"""SIGTERM as a flag every long phase checks: download, scoring, training, export, upload.

A signal is process-wide, so the flag is too (one per process). The handler only
sets it; the phase that sees it raises `Preempted` at a point where stopping leaves
nothing half-taken-for-complete (between files, between generation batches, at a
step boundary where the recipe saves one checkpoint). Several ranks agree on the
stop through `ranks.Ranks.agree` before acting on it.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

log = logging.getLogger(__name__)

_requested = threading.Event()
_held: set[str] = set()

# A test seam that makes a phase observable without sleeping in the test: with
# KUBETUNE_HOLD_PHASE=<phase>, the phase's first check prints "holding in <phase>" and waits (at
# most HOLD_MAX_S) for SIGTERM, as a slow download or a long scoring run would; the check then
# stops the phase exactly as it would stop a real one.
HOLD_ENV = "KUBETUNE_HOLD_PHASE"
HOLD_MAX_S = 120.0


class Preempted(Exception):
    """SIGTERM arrived; the phase named stopped cleanly (exit 75 once every rank agrees)."""

    def __init__(self, phase: str):
        super().__init__(f"stopped by SIGTERM during {phase}")
        self.phase = phase


def install() -> None:
    """SIGTERM sets the flag (and nothing else: the phases decide where to stop)."""
    signal.signal(signal.SIGTERM, lambda *_: _requested.set())


def requested() -> bool:
    return _requested.is_set()


def request() -> None:
    """Ask for a stop as SIGTERM would (another rank's SIGTERM, agreed on at a step)."""
    _requested.set()


def check(phase: str) -> None:
    """Raise Preempted if a stop was requested; call it between units of work of a long phase."""
    if os.environ.get(HOLD_ENV) == phase and phase not in _held:
        _held.add(phase)
        print(f"holding in {phase} until SIGTERM", flush=True)
        _requested.wait(HOLD_MAX_S)
    if _requested.is_set():
        raise Preempted(phase)


def sleep(seconds: float, phase: str) -> None:
    """A wait (a retry's backoff) that a SIGTERM cuts short."""
    if _requested.wait(seconds):
        raise Preempted(phase)


def reset() -> None:
    """For tests that run the recipe more than once in one process."""
    _requested.clear()
    _held.clear()
