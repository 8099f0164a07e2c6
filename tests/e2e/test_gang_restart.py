"""Multi-node jobs restart as a gang: one failed rank replaces every rank, counted, bounded.

KWOK runs the ranks (RUN_FOREVER on the first attempt's pod template, so they wait for the
test); the test plays the kubelet of rank 1 and reports it failed with the exit code under test.
The Job controller of the real kube-controller-manager applies the podFailurePolicy, and the
operator replaces the Job (docs/design.md, "Several GPUs and several nodes"). The next attempt's
Job is built from the FineTuneJob alone, without the test's annotations, so KWOK completes its
pods after 1 s: a job that restarted ends Succeeded. The operator resyncs only every 10 minutes,
so what these tests see comes from the watch on Jobs and pods.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s

from kubetune.api import GROUP, VERSION
from tests.e2e.finetunejob_api import CREDENTIALS_SECRET, PLURAL, Api, create_tenant_namespace
from tests.e2e.operator_process import OperatorProcess
from tests.support import kwok
from tests.support.controlplane import ControlPlane
from tests.support.pod_runner import TRAINER_IMAGE, PodRunner
from tests.support.procs import free_port, wait_for
from tests.support.s3_fixtures import S3Server
from tests.trainer.tiny import build_tiny_model, task_examples

pytestmark = pytest.mark.e2e

NS = "ftj-gang"
RUN_FOREVER = {kwok.RUN_DURATION: "87600h"}
TWO_NODES = {"nodes": 2, "gpusPerNode": 1, "cpu": "1", "memory": "2Gi"}
INDEX = "batch.kubernetes.io/job-completion-index"


@pytest.fixture(scope="module")
def operator(e2e_cluster: ControlPlane, kubetune_crds: list[str]) -> Iterator[OperatorProcess]:
    create_tenant_namespace(e2e_cluster, NS, "e2e-gang")
    # For the real ranks: a short grace period (a rank whose peer died may hang in a collective until
    # SIGKILL), and a rendezvous port of their own (they share this machine's loopback with other tests).
    op = OperatorProcess(e2e_cluster, env={"KUBETUNE_TRAINER_IMAGE": "kubetune-trainer:e2e",
                                           "KUBETUNE_RESYNC_SECONDS": "600",
                                           "KUBETUNE_TERMINATION_GRACE_SECONDS": "20",
                                           "KUBETUNE_MASTER_PORT": str(free_port())}).start()
    yield op
    op.stop()


@pytest.fixture(scope="module")
def api(e2e_cluster: ControlPlane) -> Api:
    return Api(e2e_cluster, NS)


def running_ranks(api: Api, name: str) -> dict[str, k8s.V1Pod]:
    """Both ranks of the current attempt, running: completion index -> pod."""
    def probe():
        pods = {p.metadata.annotations[INDEX]: p for p in api.pods_of(name)
                if p.status.phase == "Running" and not p.metadata.deletion_timestamp}
        return pods if len(pods) == 2 else None

    return wait_for(probe, 60, f"{name}: two running ranks")


def fail_rank(api: Api, pod: k8s.V1Pod, exit_code: int) -> None:
    """Rank `pod` ends with `exit_code`, as its kubelet would report it."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    api.core.patch_namespaced_pod_status(pod.metadata.name, NS, {"status": {
        "phase": "Failed",
        "conditions": [{"type": "Ready", "status": "False", "reason": "PodFailed", "lastTransitionTime": now}],
        "containerStatuses": [{"name": "trainer", "image": "kubetune-trainer:e2e", "imageID": "", "ready": False,
                               "restartCount": 0, "state": {"terminated": {
                                   "exitCode": exit_code, "reason": "Error", "startedAt": now, "finishedAt": now,
                                   "message": f"rank 1 says goodbye with {exit_code}"}}}],
    }})


def gang_restart_events(api: Api, name: str) -> list[k8s.CoreV1Event]:
    events = api.core.list_namespaced_event(NS, field_selector=f"involvedObject.name={name}").items
    return [e for e in events if e.reason == "GangRestart"]


def test_a_crashed_rank_restarts_every_rank_and_is_counted(operator: OperatorProcess, api: Api):
    api.start_with_pod_annotations("crash", RUN_FOREVER, resources=TWO_NODES, backoffLimit=1)
    first_job = api.job("crash").metadata.uid
    first = running_ranks(api, "crash")
    fail_rank(api, first["1"], 1)

    status = api.wait_phase("crash", "Succeeded", timeout=90)
    assert status["attempts"] == 2, status
    assert status["failedAttempts"] == 1 and status["lastFailedJobUid"] == first_job, status
    (job,) = api.jobs_of("crash")
    assert job.metadata.uid != first_job
    assert job.spec.backoff_limit == 0  # the operator, not the Job controller, retries a gang
    # Both ranks were replaced, rank 0 included: the new attempt's pods are new; the old ones go.
    new = {p.metadata.annotations[INDEX]: p for p in api.pods_of("crash")
           if p.metadata.labels["batch.kubernetes.io/controller-uid"] == job.metadata.uid}
    assert sorted(new) == ["0", "1"]
    old_uids = {p.metadata.uid for p in first.values()}
    assert old_uids.isdisjoint({p.metadata.uid for p in new.values()})
    wait_for(lambda: old_uids.isdisjoint({p.metadata.uid for p in api.pods_of("crash")}), 30,
             "the first attempt's pods garbage-collected")
    (event,) = wait_for(lambda: gang_restart_events(api, "crash"), 20, "a GangRestart Event")
    assert event.type == "Warning"
    assert f"pod {first['1'].metadata.name}: trainer exited 1" in event.message, event.message
    assert "1 of backoffLimit 1 failed attempts used" in event.message, event.message
    api.delete("crash")


def test_bad_input_on_one_rank_fails_the_job_once(operator: OperatorProcess, api: Api):
    api.start_with_pod_annotations("bad-rank", RUN_FOREVER, resources=TWO_NODES, backoffLimit=3)
    first_job = api.job("bad-rank").metadata.uid
    fail_rank(api, running_ranks(api, "bad-rank")["1"], 65)

    status = api.wait_phase("bad-rank", "Failed", timeout=60)
    assert api.condition(status, "Stalled")["reason"] == "PodFailurePolicy"
    assert "rejected its input (exit 65)" in status["message"] and "goodbye with 65" in status["message"], status
    time.sleep(5)  # a restart would have started by now
    status = api.ftj("bad-rank")["status"]
    assert status["phase"] == "Failed" and status["attempts"] == 1, status
    assert [j.metadata.uid for j in api.jobs_of("bad-rank")] == [first_job]
    assert not gang_restart_events(api, "bad-rank")
    assert api.event_reasons("bad-rank").count("Failed") == 1
    api.delete("bad-rank")


def test_a_preempted_rank_restarts_the_gang_without_using_the_budget_even_with_the_operator_down(
        operator: OperatorProcess, api: Api):
    api.start_with_pod_annotations("preempted", RUN_FOREVER, resources=TWO_NODES, backoffLimit=0)
    first_job = api.job("preempted").metadata.uid
    first = running_ranks(api, "preempted")
    operator.stop()
    try:
        fail_rank(api, first["1"], 75)  # checkpoint saved on SIGTERM: not a failure
        wait_for(lambda: any(c.type == "Failed" and c.status == "True"
                             for c in api.job("preempted").status.conditions or []), 60, "the first attempt failed")
    finally:
        operator.start()  # its startup pass finds the failed attempt

    status = api.wait_phase("preempted", "Succeeded", timeout=90)
    assert status["attempts"] == 2 and not status.get("failedAttempts"), status
    assert status["lastFailedJobUid"] == first_job
    (job,) = api.jobs_of("preempted")
    assert job.metadata.uid != first_job
    (event,) = wait_for(lambda: gang_restart_events(api, "preempted"), 20, "a GangRestart Event")
    assert event.type == "Normal" and "preempted and saved a checkpoint (exit 75)" in event.message, event.message
    api.delete("preempted")


# -- real trainer ranks (the pod runner plays the kubelet): the new gang resumes from the checkpoint ------

STEPS = 100  # long enough that the run is still going when rank 1 is killed after its first checkpoint
EVERY = 10


def stage_tiny_task(server: S3Server, model_dir: Path) -> str:
    bucket = server.ensure_bucket("gang-restart")
    s3 = server.client()
    for f in model_dir.iterdir():
        s3.upload_file(str(f), bucket, f"models/tiny/{f.name}")
    rows = task_examples(40, seed=5)
    s3.put_object(Bucket=bucket, Key="data/train.jsonl", Body="".join(json.dumps(r) + "\n" for r in rows))
    return bucket


def real_gang(name: str, bucket: str, endpoint: str) -> dict:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneJob", "metadata": {"name": name, "namespace": NS},
            "spec": {
                "baseModel": {"uri": f"s3://{bucket}/models/tiny"},
                "dataset": {"train": f"s3://{bucket}/data/train.jsonl", "format": "chat"},
                "method": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
                "hyperparameters": {"maxSteps": STEPS, "learningRate": 0.01, "batchSize": 2,
                                    "gradientAccumulationSteps": 1, "warmupRatio": 0.0, "maxSeqLength": 64,
                                    "packing": True, "gradientCheckpointing": False, "seed": 7, "loggingSteps": 1},
                "evaluation": {"evalSteps": STEPS, "maxSamples": 2, "maxNewTokens": 4},
                "storage": {"uri": f"s3://{bucket}/runs", "endpoint": endpoint,
                            "credentialsSecret": {"name": CREDENTIALS_SECRET},
                            "checkpointIntervalSteps": EVERY, "checkpointsKept": 2},
                # A fake GPU each (multi-node needs one); the runner has none, so the ranks use gloo on CPU.
                "resources": {"nodes": 2, "gpusPerNode": 1, "cpu": "1", "memory": "2Gi"},
                "images": {"trainer": TRAINER_IMAGE},
                "backoffLimit": 1,
            }}


def test_a_killed_rank_restarts_both_real_ranks_from_the_last_complete_checkpoint(
        operator: OperatorProcess, api: Api, pod_runner: PodRunner, s3_server: S3Server, tmp_path: Path):
    bucket = stage_tiny_task(s3_server, build_tiny_model(tmp_path / "tiny", hidden=64, layers=2))
    api.custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, real_gang("real", bucket,
                                                                                     s3_server.endpoint_url))
    status = api.wait_status("real", lambda s: (s.get("lastCheckpoint") or {}).get("step", 0) >= EVERY
                             or s.get("phase") == "Failed", "a complete checkpoint", timeout=240)
    assert status.get("phase") != "Failed" and status.get("attempts") == 1, status
    first_job = api.job("real").metadata.uid
    first = running_ranks(api, "real")
    saved = status["lastCheckpoint"]["step"]
    assert saved < STEPS, status
    pod_runner.run_of(NS, first["1"].metadata.name).processes["trainer"].send(signal.SIGKILL)  # rank 1 dies

    status = api.wait_phase("real", "Succeeded", "Failed", timeout=300)
    assert status["phase"] == "Succeeded", status.get("message")
    assert status["attempts"] == 2 and status["failedAttempts"] == 1, status
    assert status["lastFailedJobUid"] == first_job
    (job,) = api.jobs_of("real")
    ranks = {p.metadata.annotations[INDEX]: p for p in api.pods_of("real")
             if p.metadata.labels["batch.kubernetes.io/controller-uid"] == job.metadata.uid}
    assert sorted(ranks) == ["0", "1"]
    assert {p.metadata.uid for p in ranks.values()}.isdisjoint({p.metadata.uid for p in first.values()})
    logs = {i: pod_runner.logs(NS, p.metadata.name) for i, p in ranks.items()}
    for i, pod in ranks.items():
        assert pod_runner.run_of(NS, pod.metadata.name).containers[0].exit_code == 0, logs[i][-3000:]
    assert sorted(line for log in logs.values() for line in log.splitlines() if line.startswith("distributed: ")) == [
        "distributed: process 0 of 2 (gloo)", "distributed: process 1 of 2 (gloo)"]
    resumed = [int(line.rsplit(" ", 1)[1]) for line in logs["0"].splitlines()
               if line.startswith("resuming from the complete checkpoint at step ")]
    assert len(resumed) == 1 and saved <= resumed[0] < STEPS, logs["0"][-3000:]
    assert status["lastCheckpoint"]["step"] == STEPS
    api.delete("real")
