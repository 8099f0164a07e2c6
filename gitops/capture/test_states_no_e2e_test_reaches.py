"""States the GitOps health checks must read right that no e2e test reaches yet, driven through the
same e2e harness so hack/capture-gitops-testdata.py captures them from a real operator and cluster.

Outside tests/ on purpose: it asserts only that the state is reached (the e2e tests own the
behaviour); it runs only when the capture script names it. Drop a case here once an e2e test
reaches its state (Queued: the Kueue e2e tests of issue 10).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.finetunejob_api import Api
from tests.e2e.operator_process import OperatorProcess
from tests.support.controlplane import ControlPlane

pytestmark = pytest.mark.e2e

NS = "gitops-capture"


@pytest.fixture(scope="module")
def operator(e2e_cluster: ControlPlane, kubetune_crds: list[str]) -> Iterator[OperatorProcess]:
    e2e_cluster.create_namespace(NS)
    op = OperatorProcess(e2e_cluster, env={"KUBETUNE_TRAINER_IMAGE": "kubetune-trainer:e2e",
                                           "KUBETUNE_RESYNC_SECONDS": "600"}).start()
    yield op
    op.stop()


def test_a_job_with_a_queue_and_no_admission_waits_queued(operator: OperatorProcess, e2e_cluster: ControlPlane):
    api = Api(e2e_cluster, NS)
    # No Kueue runs here, so nothing admits the Job: it stays suspended, as behind a full ClusterQueue.
    api.apply("queued", queueName="team-a")
    status = api.wait_phase("queued", "Queued")
    assert status["observedGeneration"] == api.ftj("queued")["metadata"]["generation"]
