"""The real Prometheus (Debian's build, via hack/tools.sh) for analysis tests.

`prometheus` (session) runs it on a free loopback port with its own config and
TSDB in a temp dir. Scrape targets are file-based service discovery:
`prometheus.set_targets(job, ["127.0.0.1:8000"], labels)` writes the file
Prometheus watches, so tests can add their metric stand-ins at any time.
The scrape and evaluation interval is 1 s so tests see data quickly.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from .procs import ManagedProcess, free_port, wait_for
from .tools import tool

SCRAPE_INTERVAL = "1s"


class Prometheus:
    """wrap(argv) -> argv starts it elsewhere, e.g. in a network namespace (NetNamespace.command);
    then `port` must be reachable from here on loopback (tests/support/dataplane.py forwards it)."""

    def __init__(self, workdir: Path, wrap=None, port: int | None = None):
        self.workdir = workdir
        self.targets_dir = workdir / "targets"
        self.targets_dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
            "scrape_configs": [
                # Prometheus scraping itself gives `up` a value from the start.
                {"job_name": "prometheus", "static_configs": [{"targets": [f"127.0.0.1:{self.port}"]}]},
                {"job_name": "file_sd",
                 "file_sd_configs": [{"files": [str(self.targets_dir / "*.json")], "refresh_interval": "1s"}]},
            ],
        }
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        argv = [tool("prometheus"), f"--config.file={self.config_path}",
                f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle", "--log.level=warn"]
        self.process = ManagedProcess("prometheus", wrap(argv) if wrap else argv, workdir)

    def start(self, timeout: float = 60) -> "Prometheus":
        self.process.start()

        def ready() -> bool:
            self.process.check_alive()
            return requests.get(f"{self.url}/-/ready", timeout=2).status_code == 200

        wait_for(ready, timeout, "prometheus /-/ready", on_timeout=self.process.describe)
        return self

    def stop(self) -> None:
        self.process.stop()

    def set_targets(self, job: str, targets: list[str], labels: dict[str, str] | None = None) -> Path:
        """Scrape `targets` (host:port) as job `job`; an empty list removes them.
        Written atomically so Prometheus never reads half a file."""
        path = self.targets_dir / f"{job}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps([{"targets": targets, "labels": {"job": job, **(labels or {})}}]))
        tmp.rename(path)
        return path

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Instant query; returns the result vector (raises on an API error)."""
        r = requests.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10)
        body = r.json()
        if body.get("status") != "success":
            raise RuntimeError(f"query {promql!r} failed: {body}")
        return body["data"]["result"]

    def wait_for_series(self, promql: str, timeout: float = 30) -> list[dict[str, Any]]:
        return wait_for(lambda: self.query(promql), timeout, f"a result for {promql!r}", interval=0.5)

    def wait_for_target(self, job: str, timeout: float = 30) -> None:
        """Wait until every target of `job` was scraped successfully at least once."""
        def up() -> bool:
            result = self.query(f'up{{job="{job}"}}')
            return bool(result) and all(float(s["value"][1]) == 1 for s in result)
        wait_for(up, timeout, f"targets of job {job} up")


@pytest.fixture(scope="session")
def prometheus() -> Iterator[Prometheus]:
    workdir = Path(tempfile.mkdtemp(prefix="kubetune-prometheus-"))
    t0 = time.monotonic()
    prom = Prometheus(workdir).start()
    print(f"\n[prometheus] ready on {prom.url} in {time.monotonic() - t0:.1f}s")
    yield prom
    prom.stop()
    shutil.rmtree(workdir, ignore_errors=True)
