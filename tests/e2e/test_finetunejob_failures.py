"""FineTuneJob failures a user meets in the first week, each visible within 60 s, and runs kept apart.

Each failure ends in a phase, a kstatus condition with a CamelCase reason, a
message that says what to fix, and an Event (docs/design.md, "Failure
outcomes: pods"). The operator here resyncs only every 10 minutes, so what
these tests see comes from the watch on trainer pods and Jobs, not from the
periodic safety net.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from kubernetes import client as k8s

from kubetune.builders.trainer import CONFIG_ANNOTATION
from tests.e2e.finetunejob_api import Api, create_tenant_namespace
from tests.e2e.operator_process import OperatorProcess
from tests.support import kwok
from tests.support.controlplane import ControlPlane
from tests.support.procs import wait_for

pytestmark = pytest.mark.e2e

NS = "ftj-failures"
RUN_FOREVER = {kwok.RUN_DURATION: "87600h"}
VISIBLE_WITHIN = 60  # seconds: the promise for every failure below


@pytest.fixture(scope="module")
def operator(e2e_cluster: ControlPlane, kubetune_crds: list[str]) -> Iterator[OperatorProcess]:
    create_tenant_namespace(e2e_cluster, NS, "e2e-failures")
    op = OperatorProcess(e2e_cluster, env={"KUBETUNE_TRAINER_IMAGE": "kubetune-trainer:e2e",
                                           "KUBETUNE_RESYNC_SECONDS": "600"}).start()
    yield op
    op.stop()


@pytest.fixture(scope="module")
def api(e2e_cluster: ControlPlane) -> Api:
    return Api(e2e_cluster, NS)


def stalled(status: dict) -> tuple[str, str]:
    cond = next((c for c in status.get("conditions") or [] if c["type"] == "Stalled"), {})
    return cond.get("status", ""), cond.get("reason", "")


def wait_stalled(api: Api, name: str, reason: str) -> dict:
    return api.wait_status(name, lambda s: stalled(s) == ("True", reason), f"Stalled=True reason {reason}",
                           timeout=VISIBLE_WITHIN)


def storage_uri(api: Api, name: str) -> str:
    # The trainer config rides in the Job's pod template, which the trainer reads through the downward API.
    job = wait_for(lambda: api.job(name), 30, "the trainer Job")
    return json.loads(job.spec.template.metadata.annotations[CONFIG_ANNOTATION])["storageUri"]


def test_unschedulable_shows_the_schedulers_message(operator: OperatorProcess, api: Api):
    api.apply("too-big", resources={"gpusPerNode": 16, "cpu": "2", "memory": "8Gi"})  # the nodes have 8 each
    status = wait_stalled(api, "too-big", "Unschedulable")
    assert status["phase"] == "Pending"
    assert "Insufficient nvidia.com/gpu" in status["message"]  # the real kube-scheduler's words
    assert "lower spec.resources" in status["message"]
    assert api.condition(status, "Reconciling")["status"] == "False"  # Stalled alone: Flux reads it as Failed
    wait_for(lambda: "Unschedulable" in api.event_reasons("too-big"), 20, "an Unschedulable Event")
    api.delete("too-big")


def test_unpullable_image_is_image_pull_back_off(operator: OperatorProcess, api: Api):
    image = f"{kwok.UNPULLABLE_IMAGE_PREFIX}kubetune/trainer:missing"
    api.apply("bad-image", images={"trainer": image})
    status = wait_stalled(api, "bad-image", "ImagePullBackOff")
    assert status["phase"] == "Pending"
    assert f"cannot pull image {image}" in status["message"] and "spec.images.trainer" in status["message"]
    wait_for(lambda: "ImagePullBackOff" in api.event_reasons("bad-image"), 20, "an ImagePullBackOff Event")
    api.delete("bad-image")


def test_a_recreated_finetunejob_starts_a_fresh_run_unless_asked_to_resume(operator: OperatorProcess, api: Api):
    first = api.apply("again")
    old_uid = first["metadata"]["uid"]
    api.wait_phase("again", "Validating", "Running", "Succeeded")
    old_root = storage_uri(api, "again")
    assert old_root == f"s3://runs/e2e/{NS}/again/{old_uid}"
    # Hold the old Job after the delete (a finalizer), as a slow garbage collector or old pods would.
    api.batch.patch_namespaced_job("again-train", NS, {"metadata": {"finalizers": ["kubetune.test/hold"]}})
    api.delete("again")
    wait_for(lambda: not api.exists("again"), 30, "the first FineTuneJob gone")
    second = api.apply("again")
    status = api.wait_status("again", lambda s: s.get("phase") == "Pending" and stalled(s)[1] == "PreviousRunTerminating",
                             "waiting for the old run's Job instead of adopting it", timeout=VISIBLE_WITHIN)
    assert old_uid in status["message"]
    api.batch.patch_namespaced_job("again-train", NS, {"metadata": {"finalizers": None}})
    api.wait_phase("again", "Validating", "Running", "Succeeded")
    (job,) = api.jobs_of("again")
    assert job.metadata.owner_references[0].uid == second["metadata"]["uid"]
    assert storage_uri(api, "again") == f"s3://runs/e2e/{NS}/again/{second['metadata']['uid']}"
    # Continuing the old run is an explicit choice.
    api.delete("again")
    wait_for(lambda: not api.exists("again") and not api.jobs_of("again"), 60, "the second run gone")
    api.apply("again", resumeFromRun=old_uid)
    assert storage_uri(api, "again") == old_root
    api.delete("again")


def test_a_job_deleted_by_hand_is_replaced_only_after_its_pods_are_gone(operator: OperatorProcess, api: Api):
    api.start_with_pod_annotations("handmade", RUN_FOREVER)
    api.wait_phase("handmade", "Validating", "Running")
    old_job = api.job("handmade")
    (old_pod,) = api.pods_of("handmade")
    # Orphan: the Job goes, its pod keeps running (as a pod in its termination grace period would).
    api.batch.delete_namespaced_job("handmade-train", NS, propagation_policy="Orphan")
    status = api.wait_status("handmade", lambda s: stalled(s)[1] == "PreviousPodsTerminating",
                             "waiting for the old pod", timeout=VISIBLE_WITHIN)
    assert old_pod.metadata.name in status["message"] and status["phase"] == "Pending"
    time.sleep(3)
    assert not api.jobs_of("handmade"), "a new Job was created while the old pod still runs"
    api.core.delete_namespaced_pod(old_pod.metadata.name, NS)
    new_job = wait_for(lambda: next(iter(api.jobs_of("handmade")), None), VISIBLE_WITHIN, "the replacement Job")
    assert new_job.metadata.uid != old_job.metadata.uid
    api.delete("handmade")


def test_only_the_operators_own_job_drives_status(operator: OperatorProcess, api: Api):
    owner = api.apply("target", suspend=True)
    api.wait_phase("target", "Suspended")
    # A Job that looks like kubetune's (labels, controller ownerRef) under another name, failing at once.
    template = api.job("target").spec.template
    template.metadata.annotations = {kwok.EXIT_CODE: "1"}
    impostor = k8s.V1Job(
        metadata=k8s.V1ObjectMeta(name="target-impostor", labels=api.job("target").metadata.labels,
                                  owner_references=[k8s.V1OwnerReference(
                                      api_version="kubetune.io/v1alpha1", kind="FineTuneJob", name="target",
                                      uid=owner["metadata"]["uid"], controller=True)]),
        spec=k8s.V1JobSpec(backoff_limit=0, template=k8s.V1PodTemplateSpec(
            metadata=k8s.V1ObjectMeta(annotations={kwok.EXIT_CODE: "1"}, labels={"app": "impostor"}),
            spec=template.spec)))
    api.batch.create_namespaced_job(NS, impostor)
    wait_for(lambda: any(c.type == "Failed" and c.status == "True"
                         for c in api.batch.read_namespaced_job("target-impostor", NS).status.conditions or []),
             60, "the impostor Job failed")
    time.sleep(5)  # its events had time to reach the operator
    assert api.ftj("target")["status"]["phase"] == "Suspended"
    api.delete("target")  # the impostor goes with it (garbage collection)


def test_a_foreign_job_with_the_expected_name_is_reported_not_adopted(operator: OperatorProcess, api: Api):
    foreign = k8s.V1Job(metadata=k8s.V1ObjectMeta(name="occupied-train"), spec=k8s.V1JobSpec(
        suspend=True, template=k8s.V1PodTemplateSpec(spec=k8s.V1PodSpec(
            restart_policy="Never", containers=[k8s.V1Container(name="c", image="busybox")]))))
    api.batch.create_namespaced_job(NS, foreign)
    api.apply("occupied")
    status = wait_stalled(api, "occupied", "NameConflict")
    assert status["phase"] == "Pending"
    assert status["message"].startswith("Job occupied-train already exists and was not created for this FineTuneJob")
    wait_for(lambda: "NameConflict" in api.event_reasons("occupied"), 20, "a NameConflict Event")
    assert api.job("occupied").spec.suspend is True  # not touched: the operator would have unsuspended its own
    assert not api.job("occupied").metadata.owner_references
    api.delete("occupied")
    api.batch.delete_namespaced_job("occupied-train", NS, propagation_policy="Background")


def test_missing_secret_is_secret_not_found_until_it_exists(operator: OperatorProcess, api: Api, pod_runner):
    from tests.support.pod_runner import TRAINER_IMAGE  # the runner resolves env like a kubelet

    # Nothing listens on port 9: once started, the trainer only retries S3 (it must not leave the host).
    api.apply("late-secret", images={"trainer": TRAINER_IMAGE},
              storage={"uri": "s3://runs/e2e", "endpoint": "http://127.0.0.1:9", "credentialsSecret": {"name": "late-creds"}})
    status = wait_stalled(api, "late-secret", "SecretNotFound")
    assert status["phase"] == "Pending"
    assert 'secret "late-creds" not found' in status["message"] and "spec.storage.credentialsSecret" in status["message"]
    wait_for(lambda: "SecretNotFound" in api.event_reasons("late-secret"), 20, "a SecretNotFound Event")
    # The fix in place: the Secret appears, the kubelet (here the runner) starts the pod, the status follows.
    api.core.create_namespaced_secret(NS, k8s.V1Secret(metadata=k8s.V1ObjectMeta(name="late-creds"), string_data={
        "AWS_ACCESS_KEY_ID": "late", "AWS_SECRET_ACCESS_KEY": "late-secret-value"}))
    status = api.wait_status("late-secret", lambda s: stalled(s)[1] != "SecretNotFound", "the SecretNotFound cleared",
                             timeout=VISIBLE_WITHIN)
    (pod,) = api.pods_of("late-secret")
    assert not (pod.status.container_statuses[0].state.waiting), "the trainer container should have started"
    api.delete("late-secret")
