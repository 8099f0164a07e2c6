"""The simulated cluster behaves like a GPU cluster: the scheduler places GPU pods on
GPU nodes (or refuses with its reason), Jobs complete, and KWOK fails pods on request."""

from __future__ import annotations

import uuid

import pytest
from kubernetes import client as k8s

from tests.support import kwok
from tests.support.controlplane import ControlPlane, dump
from tests.support.procs import wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def namespace(e2e_cluster: ControlPlane) -> str:
    return e2e_cluster.create_namespace(f"smoke-{uuid.uuid4().hex[:8]}")


def _container(gpus: int) -> k8s.V1Container:
    limits = {"cpu": "1", "memory": "1Gi"}
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)
    return k8s.V1Container(name="main", image="example.invalid/trainer:v1", command=["train"],
                           resources=k8s.V1ResourceRequirements(limits=limits, requests=limits))


def _job(name: str, gpus: int, annotations: dict[str, str] | None = None,
         pod_failure_policy: k8s.V1PodFailurePolicy | None = None) -> k8s.V1Job:
    return k8s.V1Job(
        metadata=k8s.V1ObjectMeta(name=name),
        spec=k8s.V1JobSpec(
            backoff_limit=0,
            pod_failure_policy=pod_failure_policy,
            template=k8s.V1PodTemplateSpec(
                metadata=k8s.V1ObjectMeta(annotations=annotations),
                spec=k8s.V1PodSpec(restart_policy="Never", containers=[_container(gpus)]),
            ),
        ),
    )


def _job_condition(batch: k8s.BatchV1Api, name: str, ns: str, *types: str) -> k8s.V1JobCondition | None:
    job = batch.read_namespaced_job_status(name, ns)
    for c in job.status.conditions or []:
        if c.type in types and c.status == "True":
            return c
    return None


def test_gpu_job_runs_on_a_gpu_node_and_completes(e2e_cluster: ControlPlane, namespace: str):
    api = e2e_cluster.api_client()
    batch, core = k8s.BatchV1Api(api), k8s.CoreV1Api(api)
    batch.create_namespaced_job(namespace, _job("gpu-job", gpus=1))

    done = wait_for(lambda: _job_condition(batch, "gpu-job", namespace, "Complete", "Failed"), 60,
                    "Job gpu-job to finish", on_timeout=lambda: dump(batch.read_namespaced_job_status("gpu-job", namespace)))
    assert done.type == "Complete", dump(batch.read_namespaced_job_status("gpu-job", namespace))
    pods = core.list_namespaced_pod(namespace, label_selector="job-name=gpu-job").items
    assert len(pods) == 1
    assert pods[0].spec.node_name in e2e_cluster.nodes["gpu"]
    assert pods[0].status.phase == "Succeeded"
    assert pods[0].status.container_statuses[0].state.terminated.exit_code == 0


def test_pod_needing_more_gpus_than_any_node_stays_pending(e2e_cluster: ControlPlane, namespace: str):
    core = k8s.CoreV1Api(e2e_cluster.api_client())
    core.create_namespaced_pod(namespace, k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name="too-big"),
        spec=k8s.V1PodSpec(restart_policy="Never", containers=[_container(gpus=16)]),
    ))

    def unschedulable() -> k8s.V1PodCondition | None:
        pod = core.read_namespaced_pod_status("too-big", namespace)
        return next((c for c in pod.status.conditions or [] if c.type == "PodScheduled" and c.status == "False"), None)

    cond = wait_for(unschedulable, 30, "PodScheduled=False on too-big")
    assert cond.reason == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in cond.message, cond.message
    events = core.list_namespaced_event(namespace, field_selector="involvedObject.name=too-big").items
    assert any(e.reason == "FailedScheduling" and "Insufficient nvidia.com/gpu" in e.message for e in events), \
        [(e.reason, e.message) for e in events]
    pod = core.read_namespaced_pod("too-big", namespace)
    assert pod.status.phase == "Pending" and not pod.spec.node_name


def test_annotated_job_pod_fails_with_exit_code_and_pod_failure_policy_sees_it(
    e2e_cluster: ControlPlane, namespace: str
):
    api = e2e_cluster.api_client()
    batch, core = k8s.BatchV1Api(api), k8s.CoreV1Api(api)
    # Exit code 65 = "bad input, do not retry": the policy fails the Job at once.
    policy = k8s.V1PodFailurePolicy(rules=[k8s.V1PodFailurePolicyRule(
        action="FailJob",
        on_exit_codes=k8s.V1PodFailurePolicyOnExitCodesRequirement(operator="In", values=[65]),
    )])
    job = _job("failing", gpus=1, annotations={kwok.EXIT_CODE: "65"}, pod_failure_policy=policy)
    job.spec.backoff_limit = 3  # without the policy, the Job would retry
    batch.create_namespaced_job(namespace, job)

    done = wait_for(lambda: _job_condition(batch, "failing", namespace, "Complete", "Failed"), 60,
                    "Job failing to finish")
    assert done.type == "Failed"
    assert done.reason == "PodFailurePolicy", dump(done)
    pods = core.list_namespaced_pod(namespace, label_selector="job-name=failing").items
    assert len(pods) == 1, "FailJob must not retry"
    assert pods[0].status.phase == "Failed"
    terminated = pods[0].status.container_statuses[0].state.terminated
    assert terminated.exit_code == 65 and terminated.reason == "Error"


def test_node_can_be_made_not_ready(e2e_cluster: ControlPlane):
    core = k8s.CoreV1Api(e2e_cluster.api_client())
    name = f"kwok-flaky-{uuid.uuid4().hex[:6]}"
    # Tainted so that no other test's pod lands on a node that is about to fail.
    core.create_node(kwok.fake_node(name, cpu="8", memory="32Gi", gpus=8,
                                    taints=[k8s.V1Taint(key="kubetune.io/test", value="flaky", effect="NoSchedule")]))
    try:
        def ready_status() -> str:
            node = core.read_node_status(name)
            return next((c.status for c in node.status.conditions or [] if c.type == "Ready"), "")

        wait_for(lambda: ready_status() == "True", 30, f"{name} Ready")
        assert any(t.key == "kubetune.io/test" for t in core.read_node(name).spec.taints)
        core.patch_node(name, {"metadata": {"annotations": {kwok.NOT_READY: "true"}}})
        wait_for(lambda: ready_status() == "False", 30, f"{name} NotReady")
        # The node-lifecycle controller reacts like on a real node loss.
        wait_for(lambda: any(t.key == "node.kubernetes.io/not-ready" for t in core.read_node(name).spec.taints or []),
                 30, f"not-ready taint on {name}")
    finally:
        core.delete_node(name)


def test_objects_owned_by_a_finetunejob_are_garbage_collected(
    e2e_cluster: ControlPlane, kubetune_crds: list[str], namespace: str
):
    # The operator relies on ownerReferences for cleanup; the garbage collector must
    # know the CRD's kind even though the CRDs may be installed after it started.
    api = e2e_cluster.api_client()
    custom, core = k8s.CustomObjectsApi(api), k8s.CoreV1Api(api)
    ftj = custom.create_namespaced_custom_object("kubetune.io", "v1alpha1", namespace, "finetunejobs", {
        "apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "owner"},
        "spec": {"baseModel": {"uri": "hf://org/model"}, "dataset": {"train": "s3://data/train.jsonl"}},
    })
    owner = k8s.V1OwnerReference(api_version="kubetune.io/v1alpha1", kind="FineTuneJob", name="owner",
                                 uid=ftj["metadata"]["uid"], controller=True, block_owner_deletion=True)
    core.create_namespaced_config_map(namespace, k8s.V1ConfigMap(
        metadata=k8s.V1ObjectMeta(name="owned", owner_references=[owner]), data={"k": "v"}))
    custom.delete_namespaced_custom_object("kubetune.io", "v1alpha1", namespace, "finetunejobs", "owner")

    def collected() -> bool:
        return "owned" not in {c.metadata.name for c in core.list_namespaced_config_map(namespace).items}

    # Well under the collector's 30 s discovery refresh.
    wait_for(collected, 15, "the owned ConfigMap to be garbage-collected")
