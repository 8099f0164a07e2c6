"""pytest fixture for the pod runner (a plugin loaded by tests/conftest.py).

- `pod_runner` (session): a PodRunner on the e2e cluster's fake nodes that runs
  pods of the trainer image (`pod_runner_images.TRAINER_IMAGE`) with the
  project's venv. Pod directories live under the cluster's workdir (removed
  with it); processes are stopped at teardown. When a test that uses it fails,
  the runner's log and the pods' log tails are attached to the report.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .controlplane import ControlPlane
from .pod_runner import TRAINER_IMAGE, PodRunner, trainer_image


@pytest.fixture(scope="session")
def pod_runner(e2e_cluster: ControlPlane) -> Iterator[PodRunner]:
    nodes = {n for names in e2e_cluster.nodes.values() for n in names}
    runner = PodRunner(e2e_cluster.api_client(), e2e_cluster.port, e2e_cluster.workdir / "pod-runner",
                       {TRAINER_IMAGE: trainer_image(Path(sys.prefix))}, nodes).start()
    yield runner
    runner.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    report = yield
    runner = getattr(item, "funcargs", {}).get("pod_runner") if isinstance(getattr(item, "funcargs", None), dict) else None
    if report.failed and isinstance(runner, PodRunner):
        report.sections.append(("pod runner", runner.describe()))
    return report
