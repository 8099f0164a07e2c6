"""vLLM stand-ins as real processes, and their registration with the test Prometheus.

Each stand-in is its own process (tests/support/vllm_standin.py) so a test can run several
revisions side by side, change their faults over HTTP, and kill one, as it would a pod.
Registration writes the labels a Kubernetes pod-label relabelling would give the series
(namespace, revision, pod), so analysis queries written against these tests carry over.
`vllm_standins` is function-scoped: whatever a test starts or registers is gone afterwards,
so the session's Prometheus never keeps scraping a dead target.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from .procs import ManagedProcess, free_port, wait_for
from .tools import REPO
from .vllm_standin import REVISION_HEADER

DEFAULT_MODEL = "kubetune-model"
SCRAPE_JOB = "vllm"


def _session() -> requests.Session:
    s = requests.Session()
    s.trust_env = False  # loopback only: never through an HTTP(S)_PROXY from the environment
    return s


class StandIn:
    def __init__(self, revision: str, log_dir: Path, served_model_name: str = DEFAULT_MODEL,
                 error_rate: float = 0.0, latency_seconds: float = 0.0, ttft_seconds: float = 0.0):
        self.revision = revision
        self.served_model_name = served_model_name
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.address}"
        self.http = _session()
        self.process = ManagedProcess(f"vllm-standin-{revision}-{self.port}", [
            sys.executable, "-m", "tests.support.vllm_standin", "--host", "127.0.0.1", "--port", self.port,
            "--revision", revision, "--served-model-name", served_model_name, "--error-rate", error_rate,
            "--latency-seconds", latency_seconds, "--ttft-seconds", ttft_seconds,
        ], log_dir, cwd=REPO)

    def start(self, timeout: float = 20) -> "StandIn":
        self.process.start()

        def healthy() -> bool:
            self.process.check_alive()
            r = self.http.get(f"{self.url}/health", timeout=1)
            return r.status_code == 200 and r.headers.get(REVISION_HEADER) == self.revision

        wait_for(healthy, timeout, f"vLLM stand-in {self.revision} on {self.url}", on_timeout=self.process.describe)
        return self

    def set_faults(self, error_rate: float | None = None, latency_seconds: float | None = None,
                   ttft_seconds: float | None = None) -> dict[str, float]:
        """Change fault injection at run time; returns the faults now in force."""
        changes = {k: v for k, v in {"error_rate": error_rate, "latency_seconds": latency_seconds,
                                     "ttft_seconds": ttft_seconds}.items() if v is not None}
        r = self.http.post(f"{self.url}/control", json=changes, timeout=5)
        r.raise_for_status()
        return r.json()

    def stop(self) -> None:
        self.process.stop()
        self.http.close()

    def __repr__(self) -> str:
        return f"StandIn(revision={self.revision!r}, url={self.url!r})"


def register_with_prometheus(prometheus, standin: StandIn, namespace: str, revision: str, pod: str,
                             job: str = SCRAPE_JOB) -> str:
    """Scrape `standin` with the labels a pod-label relabelling would attach; returns the
    target-file key to pass to `prometheus.set_targets(key, [])` to stop scraping it.

    One file per pod (set_targets keys files by its first argument) while every pod keeps the
    same `job` label, as pods behind one PodMonitor do."""
    key = f"{job}-{namespace}-{pod}"
    prometheus.set_targets(key, [standin.address],
                           labels={"job": job, "namespace": namespace, "revision": revision, "pod": pod})
    return key


class StandIns:
    """The fixture's factory: `vllm_standins("aaa", latency_seconds=0.2)` starts one stand-in."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.started: list[StandIn] = []
        self.registered: list[tuple[object, str]] = []

    def __call__(self, revision: str, **options) -> StandIn:
        standin = StandIn(revision, self.log_dir, **options)
        self.started.append(standin)
        return standin.start()

    def register(self, prometheus, standin: StandIn, namespace: str, revision: str | None = None,
                 pod: str | None = None, job: str = SCRAPE_JOB) -> str:
        """register_with_prometheus, undone at teardown (revision defaults to the stand-in's)."""
        revision = revision or standin.revision
        key = register_with_prometheus(prometheus, standin, namespace, revision, pod or f"{revision}-{standin.port}",
                                       job)
        self.registered.append((prometheus, key))
        return key

    def describe(self) -> str:
        return "\n".join(s.process.describe() for s in self.started)

    def close(self) -> None:
        for prometheus, key in self.registered:
            prometheus.set_targets(key, [])
        for standin in self.started:
            standin.stop()


@pytest.fixture
def vllm_standins(tmp_path: Path) -> Iterator[StandIns]:
    standins = StandIns(tmp_path)
    try:
        yield standins
    finally:
        standins.close()
