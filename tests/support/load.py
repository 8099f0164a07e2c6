"""A bounded, loopback-only load generator for rollout tests.

Rollout analysis needs traffic whose split follows the canary weight as it changes, so the
target list is re-read before every request. It must never become a stray load test: it only
talks to loopback addresses (checked for every target, every time), stops by itself after
`max_requests` or `max_seconds`, and never has more than `concurrency` requests in flight,
so a slow or hung backend delays it instead of piling up work.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import requests

from .vllm_standin import REVISION_HEADER

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
Targets = Callable[[], list[tuple[str, float]]]


def check_loopback(url: str) -> str:
    host = urlsplit(url).hostname
    if urlsplit(url).scheme not in ("http", "https") or host not in LOOPBACK_HOSTS:
        raise ValueError(f"load generator refuses {url!r}: only http(s) to {sorted(LOOPBACK_HOSTS)}")
    return url


class LoadGenerator:
    """POST /v1/completions at `rate` requests/s to targets picked by weight.

    `counts()` maps (x-kubetune-revision header or None, HTTP status or 0 for no answer) to
    how many requests ended that way. A non-loopback target stops the run; `wait()`/`stop()`
    then raise the ValueError."""

    def __init__(self, targets: Targets, rate: float, max_requests: int, max_seconds: float,
                 timeout: float = 2.0, concurrency: int = 4, model: str | None = None, seed: int = 0):
        if rate <= 0 or max_requests < 1 or max_seconds <= 0:
            raise ValueError("rate, max_requests and max_seconds must be positive")
        self.targets, self.rate, self.timeout = targets, rate, timeout
        self.max_requests, self.max_seconds, self.concurrency = max_requests, max_seconds, concurrency
        self.payload: dict = {"prompt": "Say hello.", "max_tokens": 8, **({"model": model} if model else {})}
        self.rng = random.Random(seed)
        self.sent = 0
        self.error: BaseException | None = None
        self._counts: Counter[tuple[str | None, int]] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._slots = threading.Semaphore(concurrency)
        self._local = threading.local()
        self._thread: threading.Thread | None = None
        self.started_at = self.finished_at = 0.0

    def _pick(self) -> str | None:
        choices = [(check_loopback(url), float(w)) for url, w in self.targets()]
        choices = [(url, w) for url, w in choices if w > 0]
        if not choices:
            return None
        return self.rng.choices([u for u, _ in choices], weights=[w for _, w in choices])[0]

    def start(self) -> "LoadGenerator":
        self._pick()  # refuse a non-loopback target here, in the caller's thread
        self.started_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="load-generator", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        deadline = self.started_at + self.max_seconds
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="load")
        try:
            due = self.started_at
            while self.sent < self.max_requests and not self._stop.is_set():
                if due >= deadline or self._stop.wait(max(0.0, due - time.monotonic())):
                    break
                # After a stall (all slots busy) carry on at `rate` instead of bursting to catch up.
                now, period = time.monotonic(), 1 / self.rate
                due = (due if now - due < period else now) + period
                url = self._pick()
                if url is None:  # every weight is 0: nothing to send this tick
                    continue
                # Wait for a free slot, but never past the deadline.
                if not self._slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
                    break
                if time.monotonic() >= deadline or self._stop.is_set():
                    self._slots.release()
                    break
                self.sent += 1
                pool.submit(self._one, url)
        except BaseException as err:  # noqa: BLE001 - surfaced by wait()/stop()
            self.error = err
        finally:
            pool.shutdown(wait=True)
            self.finished_at = time.monotonic()

    def _one(self, url: str) -> None:
        http = getattr(self._local, "http", None)
        if http is None:
            http = self._local.http = requests.Session()
            http.trust_env = False  # no proxy from the environment between us and loopback
        key: tuple[str | None, int]
        try:
            r = http.post(f"{url.rstrip('/')}/v1/completions", json=self.payload, timeout=self.timeout)
            key = (r.headers.get(REVISION_HEADER), r.status_code)
        except Exception:  # noqa: BLE001 - timeouts, refused connections, garbage answers
            key = (None, 0)
        finally:
            self._slots.release()
        with self._lock:
            self._counts[key] += 1

    @property
    def done(self) -> bool:
        return self._thread is not None and not self._thread.is_alive()

    @property
    def elapsed(self) -> float:
        return (self.finished_at or time.monotonic()) - self.started_at

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the run to end by itself; True if it did. Raises what stopped it early."""
        if self._thread is not None:
            self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        return self.done

    def stop(self) -> None:
        self._stop.set()
        self.wait(self.timeout + 5)

    def counts(self) -> dict[tuple[str | None, int], int]:
        with self._lock:
            return dict(self._counts)

    def __enter__(self) -> "LoadGenerator":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
