"""FineTuneJobs admitted by a real Kueue (hack/kueue.sh) on the simulated cluster.

One ClusterQueue with a quota of one GPU. "Holder" Jobs (plain batch Jobs in the
same queue, KWOK pods that run until deleted) take that GPU so a FineTuneJob has
to wait; a holder with a higher WorkloadPriorityClass preempts it. Trainer pods
are KWOK pods too (an image the pod runner does not map): this file proves
admission, waiting, eviction and readmission, not the trainer's checkpoint.

Throughout, a watch on the trainer Job records every change of spec.suspend with
the field manager that owns the field afterwards: only Kueue may flip a queued
Job's suspend, never the operator.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from kubernetes import client as k8s
from kubernetes import watch
from kubernetes.client.rest import ApiException

from kubetune.api import GROUP, VERSION
from tests.e2e.finetunejob_api import PLURAL, Api, create_tenant_namespace
from tests.e2e.operator_process import OperatorProcess
from tests.support import kwok
from tests.support.controlplane import ControlPlane
from tests.support.kueue_fixtures import GROUP as KUEUE_GROUP, VERSION as KUEUE_VERSION, Kueue
from tests.support.procs import wait_for

pytestmark = pytest.mark.e2e

NS = "kueue-e2e"
QUEUE = "gpus"
CLUSTER_QUEUE = "kubetune-e2e-gpus"
FLAVOR = "kwok-gpu"
HIGH_PRIORITY = "kubetune-e2e-high"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
RUN_FOREVER = {kwok.RUN_DURATION: "87600h"}


def queue_objects() -> list[dict]:
    kv = f"{KUEUE_GROUP}/{KUEUE_VERSION}"
    return [
        {"apiVersion": kv, "kind": "ResourceFlavor", "metadata": {"name": FLAVOR}, "spec": {}},
        {"apiVersion": kv, "kind": "ClusterQueue", "metadata": {"name": CLUSTER_QUEUE}, "spec": {
            "namespaceSelector": {},
            "preemption": {"withinClusterQueue": "LowerPriority"},
            # Every resource the pods request must be covered; only the GPU is scarce.
            "resourceGroups": [{"coveredResources": ["cpu", "memory", "nvidia.com/gpu"], "flavors": [{
                "name": FLAVOR, "resources": [{"name": "cpu", "nominalQuota": "64"},
                                              {"name": "memory", "nominalQuota": "512Gi"},
                                              {"name": "nvidia.com/gpu", "nominalQuota": "1"}]}]}]}},
        {"apiVersion": kv, "kind": "LocalQueue", "metadata": {"name": QUEUE, "namespace": NS},
         "spec": {"clusterQueue": CLUSTER_QUEUE}},
        {"apiVersion": kv, "kind": "WorkloadPriorityClass", "metadata": {"name": HIGH_PRIORITY}, "value": 1000,
         "description": "preempts FineTuneJobs (priority 0) in the e2e ClusterQueue"},
    ]


def holder_job(name: str, priority_class: str | None = None) -> dict:
    """A queued batch Job whose one KWOK pod holds the queue's only GPU until the Job is deleted."""
    labels = {QUEUE_LABEL: QUEUE, **({PRIORITY_LABEL: priority_class} if priority_class else {})}
    amounts = {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": "1"}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": NS, "labels": labels},
            "spec": {"suspend": True, "backoffLimit": 0, "template": {
                "metadata": {"annotations": RUN_FOREVER},
                "spec": {"restartPolicy": "Never", "containers": [{
                    "name": "hold", "image": "kubetune-e2e/gpu-holder:1",
                    "resources": {"requests": amounts, "limits": amounts}}]}}}}


@pytest.fixture(scope="module")
def operator(e2e_cluster: ControlPlane, kubetune_crds: list[str], kueue: Kueue) -> Iterator[OperatorProcess]:
    create_tenant_namespace(e2e_cluster, NS, "kueue-e2e-secret")
    kueue.apply(*queue_objects())
    op = OperatorProcess(e2e_cluster, env={"KUBETUNE_TRAINER_IMAGE": "kubetune-trainer:e2e",
                                           "KUBETUNE_RESYNC_SECONDS": "600"}).start()
    yield op
    op.stop()


@pytest.fixture(scope="module")
def api(e2e_cluster: ControlPlane) -> Api:
    return Api(e2e_cluster, NS)


@pytest.fixture(autouse=True)
def clean_queue(operator: OperatorProcess, api: Api, kueue: Kueue) -> Iterator[None]:
    """Each test starts with the queue's GPU free, even after a failed test left jobs behind."""
    yield
    for ftj in api.custom.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)["items"]:
        api.delete(ftj["metadata"]["name"])
    for job in api.batch.list_namespaced_job(NS).items:
        delete_job(api, job.metadata.name)
    wait_for(lambda: not api.custom.list_namespaced_custom_object(KUEUE_GROUP, KUEUE_VERSION, NS, "workloads")["items"],
             90, "the queue's Workloads gone (garbage-collected with their Jobs)")


class SuspendHistory:
    """Every value spec.suspend of one Job takes, with the manager owning the field afterwards."""

    def __init__(self, batch: k8s.BatchV1Api, job_name: str, namespace: str = NS):
        self.batch, self.job_name, self.namespace = batch, job_name, namespace
        self.changes: list[tuple[bool, str]] = []  # (suspend, owner); the first entry is the creation
        self.errors: list[str] = []  # a watch that expired (410) would lose changes: asserted empty
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        rv = None
        while not self._stop.is_set():
            kwargs = {"resource_version": rv} if rv else {}
            try:
                for event in watch.Watch().stream(self.batch.list_namespaced_job, self.namespace, timeout_seconds=5,
                                                  field_selector=f"metadata.name={self.job_name}", **kwargs):
                    job = event["object"]
                    rv = job.metadata.resource_version
                    suspend = bool(job.spec.suspend)
                    if not self.changes or self.changes[-1][0] != suspend:
                        self.changes.append((suspend, _suspend_owner(job)))
            except Exception as err:  # noqa: BLE001 - a failed test stops the cluster under the watch
                self.errors.append(repr(err))
                self._stop.wait(1)

    def stop(self) -> list[tuple[bool, str]]:
        self._stop.set()
        self._thread.join(15)
        assert not self.errors, f"the watch on {self.job_name} failed, changes may be missing: {self.errors}"
        return self.changes


def _suspend_owner(job: k8s.V1Job) -> str:
    owners = [m.manager for m in job.metadata.managed_fields or []
              if "f:suspend" in ((m.fields_v1 or {}).get("f:spec") or {})]
    return ",".join(owners) or "?"


def assert_only_kueue_flipped(changes: list[tuple[bool, str]], flips: int) -> None:
    assert changes and changes[0][0] is True, f"the queued Job must be created suspended: {changes}"
    creator = changes[0][1]
    later = changes[1:]
    assert len(later) >= flips, f"expected at least {flips} suspend changes by Kueue: {changes}"
    assert all(owner == "kueue" for _, owner in later), (
        f"spec.suspend of a queued Job changed by someone else than Kueue (operator: {creator}): {changes}")


def workload(kueue: Kueue, api: Api, ftj: str) -> dict:
    job = api.job(ftj)
    found = kueue.workloads_of(NS, job.metadata.uid)
    assert len(found) == 1, f"one Workload per trainer Job: {[w['metadata']['name'] for w in found]}"
    return found[0]


def workload_when(kueue: Kueue, api: Api, ftj: str, check) -> dict | None:
    wl = workload(kueue, api, ftj)
    return wl if check(wl) else None


def condition(obj: dict, ctype: str) -> dict:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == ctype), {})


def start_holder(api: Api, kueue: Kueue, name: str, priority_class: str | None = None) -> None:
    api.batch.create_namespaced_job(NS, holder_job(name, priority_class))
    wait_for(lambda: any(p.status.phase == "Running" for p in api.core.list_namespaced_pod(
        NS, label_selector=f"batch.kubernetes.io/job-name={name}").items), 60, f"holder {name} admitted and running",
        on_timeout=kueue.process.describe)


def set_gpu_quota(kueue: Kueue, gpus: str) -> None:
    spec = queue_objects()[1]["spec"]
    for resource in spec["resourceGroups"][0]["flavors"][0]["resources"]:
        if resource["name"] == "nvidia.com/gpu":
            resource["nominalQuota"] = gpus
    kueue.custom.patch_cluster_custom_object(KUEUE_GROUP, KUEUE_VERSION, "clusterqueues", CLUSTER_QUEUE, {"spec": spec})


def delete_job(api: Api, name: str) -> None:
    try:
        api.batch.delete_namespaced_job(name, NS, propagation_policy="Background")
    except ApiException as err:
        if err.status != 404:  # a trainer Job may already be gone with its FineTuneJob
            raise


def queue_behind_holder(api: Api, kueue: Kueue, ftj: str, holder: str) -> SuspendHistory:
    """A FineTuneJob that waits in the queue behind `holder`; its trainer pods will run until deleted."""
    start_holder(api, kueue, holder)
    history = SuspendHistory(api.batch, f"{ftj}-train")
    api.apply(ftj, queueName=QUEUE)
    api.wait_phase(ftj, "Queued")
    # KWOK's instructions for the trainer pod; the template is mutable while the Job never ran.
    api.annotate_template(ftj, RUN_FOREVER)
    return history


def test_queued_while_quota_is_taken_then_admitted_when_it_frees(operator: OperatorProcess, api: Api, kueue: Kueue):
    history = queue_behind_holder(api, kueue, "waiter", "holder-a")
    job = api.job("waiter")
    assert job.spec.suspend is True and job.metadata.labels[QUEUE_LABEL] == QUEUE
    # Kueue's own verdict on the Workload: no quota left for the GPU.
    wl = wait_for(lambda: workload_when(kueue, api, "waiter", lambda w: condition(w, "QuotaReserved").get("reason")
                                        == "Pending" and "insufficient unused quota" in condition(w, "QuotaReserved")["message"]),
                  60, "Kueue's Pending verdict on the waiter's Workload", on_timeout=kueue.process.describe)
    assert "nvidia.com/gpu" in condition(wl, "QuotaReserved")["message"]
    assert condition(wl, "Admitted").get("status") != "True"
    # The operator puts Kueue's verdict (read from the Workload) into the FineTuneJob's status.
    status = wait_for(lambda: (st := api.ftj("waiter")["status"]) and "insufficient unused quota" in st.get("message", "")
                      and st, 30, "Kueue's reason in the FineTuneJob's status")
    assert status["phase"] == "Queued" and status["message"].startswith("waiting for Kueue (Pending) in queue gpus: ")
    assert "nvidia.com/gpu" in status["message"]
    reconciling = api.condition(status, "Reconciling")
    assert reconciling["status"] == "True" and reconciling["reason"] == "Pending"
    assert not api.pods_of("waiter")
    # Still waiting a few seconds later: nothing (operator included) starts it while the GPU is taken.
    with pytest.raises(TimeoutError):
        wait_for(lambda: api.pods_of("waiter") or api.ftj("waiter")["status"]["phase"] != "Queued", 8, "no start")
    # A new verdict with no Job event (the queue's GPU quota cut to 0, then restored) reaches the
    # status from the Workload watch: the resync is 600 s here.
    job_version = api.job("waiter").metadata.resource_version
    try:
        set_gpu_quota(kueue, "0")
        wait_for(lambda: "maximum capacity (0)" in api.ftj("waiter")["status"]["message"], 30,
                 "Kueue's new verdict (no GPU quota at all) in the status")
    finally:
        set_gpu_quota(kueue, "1")
    wait_for(lambda: "insufficient unused quota" in api.ftj("waiter")["status"]["message"], 30,
             "the quota verdict back in the status")
    assert api.job("waiter").metadata.resource_version == job_version, "no Job event carried the verdicts"

    delete_job(api, "holder-a")
    status = api.wait_phase("waiter", "Validating", "Running", timeout=90)
    pods = api.pods_of("waiter")
    assert len(pods) == 1 and pods[0].spec.node_name in api.cluster.nodes["gpu"]
    assert condition(workload(kueue, api, "waiter"), "Admitted")["status"] == "True"
    assert status["attempts"] == 1
    assert_only_kueue_flipped(history.stop(), flips=1)


def test_preempted_by_higher_priority_then_requeued_and_readmitted(operator: OperatorProcess, api: Api,
                                                                   kueue: Kueue):
    history = queue_behind_holder(api, kueue, "victim", "holder-b")
    delete_job(api, "holder-b")
    api.wait_phase("victim", "Validating", "Running", timeout=90)
    first_pod = api.pods_of("victim")[0].metadata.uid

    # A higher-priority workload needs the GPU: Kueue evicts the FineTuneJob's Workload.
    api.batch.create_namespaced_job(NS, holder_job("urgent", HIGH_PRIORITY))
    wl = wait_for(lambda: workload_when(kueue, api, "victim", lambda w: condition(w, "Evicted").get("status") == "True"),
                  60, "the victim's Workload evicted", on_timeout=kueue.process.describe)
    assert condition(wl, "Evicted")["reason"] == "Preempted"
    status = api.wait_phase("victim", "Queued", timeout=60)
    assert api.job("victim").spec.suspend is True
    wait_for(lambda: not api.pods_of("victim"), 60, "the victim's trainer pod gone")
    wait_for(lambda: any(p.status.phase == "Running" for p in api.core.list_namespaced_pod(
        NS, label_selector="batch.kubernetes.io/job-name=urgent").items), 60, "the urgent Job running")
    assert status["message"].startswith("waiting for Kueue")
    # Requeued: waiting for quota again, not admitted.
    wait_for(lambda: condition(workload(kueue, api, "victim"), "QuotaReserved").get("status") == "False", 60,
             "the victim's Workload pending again")
    # Requeued: Kueue's new verdict (quota, no longer Preempted) reaches the status (the resync is 600 s here).
    status = wait_for(lambda: (st := api.ftj("victim")["status"]) and "insufficient unused quota" in st.get("message", "")
                      and st, 30, "Kueue's quota verdict in the requeued FineTuneJob's status")
    assert status["phase"] == "Queued" and api.condition(status, "Reconciling")["reason"] == "Pending"

    delete_job(api, "urgent")
    status = api.wait_phase("victim", "Validating", "Running", timeout=90)
    pods = api.pods_of("victim")
    assert len(pods) == 1 and pods[0].metadata.uid != first_pod
    assert condition(workload(kueue, api, "victim"), "Admitted")["status"] == "True"
    wait_for(lambda: api.ftj("victim")["status"].get("attempts") == 2, 30, "the second start counted")
    # Kueue flipped suspend three times (admit, evict, readmit); the operator never did.
    assert_only_kueue_flipped(history.stop(), flips=3)
