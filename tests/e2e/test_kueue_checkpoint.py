"""A real trainer preempted by Kueue checkpoints, waits in the queue, and resumes from that checkpoint.

Real trainer pods (the pod runner plays the kubelet for the trainer image, as in
test_real_training.py), a real Kueue (tests/support/kueue_fixtures.py) and a
ClusterQueue with one CPU of quota. A higher-priority Job (a KWOK pod) arrives
mid-training: Kueue evicts the FineTuneJob's Workload and suspends its Job, the
Job controller deletes the trainer pod, the trainer saves a checkpoint on
SIGTERM and exits 75. Once the urgent Job is gone Kueue readmits it and the new
trainer pod resumes from exactly that checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s

from tests.e2e.operator_process import OperatorProcess
from tests.e2e.test_kueue import (HIGH_PRIORITY, QUEUE_LABEL, SuspendHistory, assert_only_kueue_flipped, condition,
                                  holder_job, queue_objects)
from tests.e2e.test_real_training import (NS, SECRET, STEPS, Cluster, losses, manifest, stage, trainer_exit)
from tests.support.controlplane import ControlPlane
from tests.support.kueue_fixtures import GROUP as KUEUE_GROUP, VERSION as KUEUE_VERSION, Kueue
from tests.support.pod_runner import TRAINER_IMAGE, PodRunner
from tests.support.procs import wait_for
from tests.support.s3_fixtures import CREDENTIALS, S3Server
from tests.trainer.tiny import build_tiny_model

pytestmark = pytest.mark.e2e

QUEUE = "cpus"
CLUSTER_QUEUE = "kubetune-e2e-cpus"


def cpu_queue_objects() -> list[dict]:
    """The shared flavor and priority class, and a ClusterQueue where only one trainer (1 CPU) fits."""
    flavor, *_, priority = queue_objects()
    flavor_name = flavor["metadata"]["name"]
    kv = f"{KUEUE_GROUP}/{KUEUE_VERSION}"
    return [
        flavor, priority,
        {"apiVersion": kv, "kind": "ClusterQueue", "metadata": {"name": CLUSTER_QUEUE}, "spec": {
            "namespaceSelector": {}, "preemption": {"withinClusterQueue": "LowerPriority"},
            "resourceGroups": [{"coveredResources": ["cpu", "memory"], "flavors": [{
                "name": flavor_name, "resources": [{"name": "cpu", "nominalQuota": "1"},
                                                   {"name": "memory", "nominalQuota": "8Gi"}]}]}]}},
        {"apiVersion": kv, "kind": "LocalQueue", "metadata": {"name": QUEUE, "namespace": NS},
         "spec": {"clusterQueue": CLUSTER_QUEUE}},
    ]


def urgent_job(name: str) -> dict:
    """A higher-priority Job in the CPU queue needing the trainer's whole CPU (a KWOK pod: runs until deleted)."""
    job = holder_job(name, HIGH_PRIORITY)
    job["metadata"]["namespace"] = NS
    job["metadata"]["labels"][QUEUE_LABEL] = QUEUE
    job["spec"]["template"]["spec"]["containers"][0]["resources"] = {
        "requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}}
    return job


@pytest.fixture(scope="module")
def operator(e2e_cluster: ControlPlane, kubetune_crds: list[str], pod_runner: PodRunner,
             kueue: Kueue) -> Iterator[OperatorProcess]:
    if e2e_cluster.kubectl("get", "namespace", NS, check=False).returncode != 0:
        e2e_cluster.create_namespace(NS)
    core = k8s.CoreV1Api(e2e_cluster.api_client())
    if not [s for s in core.list_namespaced_secret(NS).items if s.metadata.name == SECRET]:
        core.create_namespaced_secret(NS, k8s.V1Secret(metadata=k8s.V1ObjectMeta(name=SECRET), string_data={
            "AWS_ACCESS_KEY_ID": CREDENTIALS["AWS_ACCESS_KEY_ID"], "AWS_SECRET_ACCESS_KEY": "kueue-real-secret"}))
    kueue.apply(*cpu_queue_objects())
    op = OperatorProcess(e2e_cluster, env={"KUBETUNE_TRAINER_IMAGE": TRAINER_IMAGE,
                                           "KUBETUNE_RESYNC_SECONDS": "3"}).start()
    yield op
    op.stop()


@pytest.fixture(scope="module")
def bucket(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> str:
    name = s3_server.ensure_bucket("kueue-checkpoint")
    stage(s3_server, name, build_tiny_model(tmp_path_factory.mktemp("tiny-model"), hidden=64, layers=2))
    return name


@pytest.fixture
def cluster(e2e_cluster: ControlPlane, pod_runner: PodRunner, operator: OperatorProcess, tmp_path: Path) -> Cluster:
    return Cluster(e2e_cluster, pod_runner, tmp_path)


def test_preempted_trainer_checkpoints_requeues_and_resumes_from_it(cluster: Cluster, bucket: str,
                                                                    s3_server: S3Server, kueue: Kueue):
    history = SuspendHistory(cluster.batch, "preempted-train", NS)
    # Only the final step is a scheduled checkpoint: the one it resumes from is the preemption's.
    body = manifest("preempted", bucket, s3_server.endpoint_url, queueName=QUEUE,
                    storage={"checkpointIntervalSteps": STEPS})
    cluster.apply(body)
    cluster.wait_status("preempted", lambda s: (s.get("progress") or {}).get("step"), "training started")
    (first,) = [p for p in cluster.pods("preempted") if p.status.phase == "Running"]

    cluster.batch.create_namespaced_job(NS, urgent_job("urgent"))
    wait_for(lambda: trainer_exit(cluster.runner, first.metadata.name) is not None, 120,
             "the preempted trainer's exit", on_timeout=lambda: kueue.process.describe() + cluster.runner.describe())
    run = cluster.runner.run_of(NS, first.metadata.name)
    assert run.containers[0].exit_code == 75, cluster.runner.logs(NS, first.metadata.name)[-3000:]
    message = run.containers[0].message
    assert message.startswith("preempted: complete checkpoint at step "), message
    saved = int(message.split("step ")[1].split()[0])
    assert 0 < saved < STEPS
    job_uid = cluster.batch.read_namespaced_job("preempted-train", NS).metadata.uid
    (wl,) = kueue.workloads_of(NS, job_uid)
    assert condition(wl, "Evicted").get("reason") == "Preempted", wl.get("status")
    status = cluster.wait_phase("preempted", "Queued", timeout=60)
    assert (status.get("lastCheckpoint") or {}).get("step") == saved, status

    cluster.batch.delete_namespaced_job("urgent", NS, propagation_policy="Background")
    status = cluster.wait_phase("preempted", "Succeeded", timeout=300)
    assert status["attempts"] == 2, status
    (second,) = [p for p in cluster.pods("preempted") if p.metadata.name != first.metadata.name]
    log = cluster.runner.logs(NS, second.metadata.name)
    assert f"resuming from the complete checkpoint at step {saved}" in log, log[-3000:]
    assert [s for s, _ in losses(s3_server, bucket, status)] == list(range(1, STEPS + 1))
    assert_only_kueue_flipped(history.stop(), flips=3)
