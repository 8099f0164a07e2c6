"""Failed reconciles of a FineTuneJob, tried again later on the event loop.

kopf retries only its create/update/resume handlers, and those cost a handler-state annotation
patch per FineTuneJob plus a diff of every event; the FineTuneJob controller uses plain event
handlers instead (handlers.py), so it retries itself: a timer per FineTuneJob on the event loop,
not a sleeping thread, at most HANDLER_RETRIES times with jittered exponential backoff (at least
the apiserver's Retry-After). After that the periodic resync is what is left.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Callable

from kubetune.k8s import HANDLER_RETRIES, retry_delay


class RetryQueue:
    """Keys (namespace/name) whose last reconcile failed, each with one pending timer at most.

    `failed` and `succeeded` may be called from any thread (kopf runs sync handlers in its
    executor); timers live on the loop given to `start`, and `run(key)` is called in a thread.
    """

    def __init__(self, limit: int = HANDLER_RETRIES, delay: Callable[[int, Exception], float] = retry_delay):
        self.limit, self._delay = limit, delay
        self._lock = threading.Lock()
        self._attempts: dict[str, int] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._run: Callable[[str], None] | None = None

    def start(self, loop: asyncio.AbstractEventLoop, run: Callable[[str], None]) -> None:
        self._loop, self._run = loop, run

    def failed(self, key: str, err: Exception) -> float | None:
        """Schedule another reconcile of `key`; the delay, or None once the retries are used up."""
        with self._lock:
            attempt = self._attempts.get(key, 0)
            if attempt >= self.limit or self._loop is None:
                self._attempts.pop(key, None)
                return None
            self._attempts[key] = attempt + 1
            delay = self._delay(attempt, err)
            # Under the lock: the loop sees arm/disarm in the order the outcomes happened.
            self._loop.call_soon_threadsafe(self._arm, key, delay)
        return delay

    def done(self, key: str) -> None:
        """No retry is owed: a reconcile of `key` went through (whichever path ran it), or it is gone."""
        with self._lock:
            if self._attempts.pop(key, None) is None:
                return  # the common case: nothing pending, nothing to tell the loop
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._disarm, key)

    def pending(self) -> dict[str, int]:
        with self._lock:
            return dict(self._attempts)

    def _arm(self, key: str, delay: float) -> None:
        self._disarm(key)
        assert self._loop is not None
        self._timers[key] = self._loop.call_later(delay, lambda: self._loop.create_task(self._fire(key)))

    def _disarm(self, key: str) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    async def _fire(self, key: str) -> None:
        self._timers.pop(key, None)
        assert self._run is not None
        await asyncio.to_thread(self._run, key)
