"""The Helm chart installed for real: rendered, applied server-side, and its operator Deployment run.

The chart's Deployment pod runs under the pod runner with the operator image mapped to the
wheel installed without extras (what Dockerfile.operator installs): its args, env, ports and
ServiceAccount are the chart's, and it reaches the apiserver with the pod's projected token,
so only the chart's RBAC stands behind it. Both install scopes are covered; each test removes
its release (`kubectl delete` of the same manifest) and checks the operator stops on SIGTERM.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from kubetune.api import GROUP, VERSION
from tests.support.controlplane import ControlPlane
from tests.support.pod_runner import PodRunner
from tests.support.pod_runner.images import OPERATOR_IMAGE, operator_image
from tests.support.procs import free_port, wait_for
from tests.support.tools import REPO, tool
from tests.support.wheel_venvs import WheelVenv, build_wheel, wheel_venv

pytestmark = pytest.mark.e2e

CHART = REPO / "helm" / "kubetune"
STEP = 90  # seconds one step may take on a busy 2-core machine


@pytest.fixture(scope="module")
def operator_venv(tmp_path_factory: pytest.TempPathFactory) -> WheelVenv:
    return wheel_venv(build_wheel(tmp_path_factory.mktemp("wheel")))


@pytest.fixture(scope="module")
def operator_runner(e2e_cluster: ControlPlane, kubetune_crds: list[str], operator_venv: WheelVenv) -> Iterator[PodRunner]:
    """A pod runner for the operator image only (the session's runner keeps the trainer's pods)."""
    nodes = {n for names in e2e_cluster.nodes.values() for n in names}
    runner = PodRunner(e2e_cluster.api_client(), e2e_cluster.port, e2e_cluster.workdir / "pod-runner-chart",
                       {OPERATOR_IMAGE: operator_image(operator_venv.path)}, nodes).start()
    yield runner
    runner.stop()


class Release:
    """One `helm template | kubectl apply --server-side` install and its removal."""

    def __init__(self, cluster: ControlPlane, name: str, namespace: str, values: dict, workdir: Path):
        self.cluster, self.name, self.namespace = cluster, name, namespace
        self.metrics_port, self.health_port = free_port(), free_port()
        values = {"image": {"repository": OPERATOR_IMAGE.split(":")[0], "tag": OPERATOR_IMAGE.split(":")[1]},
                  "metrics": {"port": self.metrics_port}, "health": {"port": self.health_port},
                  "nodeSelector": {"type": "kwok"},
                  "defaults": {"storageUri": "s3://platform/runs", "trainerImage": "registry.corp/kubetune/trainer:e2e"},
                  "resyncSeconds": 3, **values}
        values_file = workdir / f"{name}-values.yaml"
        values_file.write_text(yaml.safe_dump(values))
        self.manifest = workdir / f"{name}.yaml"
        self.manifest.write_text(subprocess.run(
            [tool("helm"), "template", name, str(CHART), "--namespace", namespace, "--values", str(values_file)],
            check=True, capture_output=True, text=True).stdout)
        self.objects = [d for d in yaml.safe_load_all(self.manifest.read_text()) if d]

    def install(self) -> "Release":
        if self.cluster.kubectl("get", "namespace", self.namespace, check=False).returncode != 0:
            self.cluster.create_namespace(self.namespace)
        self.cluster.kubectl("apply", "--server-side", "--field-manager=helm", "-f", str(self.manifest))
        return self

    def uninstall(self) -> None:
        self.cluster.kubectl("delete", "--ignore-not-found", "--wait=true", "--timeout=90s", "-f", str(self.manifest),
                             timeout=120)

    def rendered(self, kind: str) -> dict:
        return next(o for o in self.objects if o["kind"] == kind)

    def kinds(self) -> set[str]:
        return {o["kind"] for o in self.objects}


def running_operator(cluster: ControlPlane, runner: PodRunner, release: Release) -> k8s.V1Pod:
    core = k8s.CoreV1Api(cluster.api_client())

    def pod() -> k8s.V1Pod | None:
        pods = core.list_namespaced_pod(release.namespace, label_selector=f"app.kubernetes.io/instance={release.name}").items
        return next((p for p in pods if p.status.phase == "Running" and runner.run_of(release.namespace, p.metadata.name)), None)

    found = wait_for(pod, STEP, f"the {release.name} operator pod Running", on_timeout=runner.describe)
    return found


def probe_answers(release: Release, runner: PodRunner) -> None:
    """What the kubelet and Prometheus would call, from the rendered objects: all must answer on loopback."""
    container = release.rendered("Deployment")["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    probe = container["livenessProbe"]["httpGet"]
    port = ports.get(probe["port"], probe["port"])
    assert port == release.health_port
    wait_for(lambda: requests.get(f"http://127.0.0.1:{port}{probe['path']}", timeout=3).status_code == 200, STEP,
             "the chart's liveness probe answering", on_timeout=runner.describe)
    scrape = int(release.rendered("Deployment")["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"])
    service = release.rendered("Service")["spec"]["ports"][0]
    assert scrape == ports[service["targetPort"]] == release.metrics_port
    metrics = requests.get(f"http://127.0.0.1:{scrape}/metrics", timeout=5)
    assert metrics.status_code == 200 and "kubetune_reconciles" in metrics.text


def process_of(runner: PodRunner, namespace: str, pod: str):
    return runner.run_of(namespace, pod).processes["operator"]


def assert_runs_the_wheel_with_the_charts_args(runner: PodRunner, release: Release, pod: str, venv: WheelVenv) -> None:
    proc = process_of(runner, release.namespace, pod)
    argv = Path(f"/proc/{proc.proc.pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    environ = dict(kv.split("=", 1) for kv in Path(f"/proc/{proc.proc.pid}/environ").read_bytes().decode().split("\0") if kv)
    container = release.rendered("Deployment")["spec"]["template"]["spec"]["containers"][0]
    # The image's ENTRYPOINT (kubetune operator) from the clean venv, then the chart's args.
    assert argv[0].startswith(str(venv.path)) and argv[1:] == [str(venv.bin / "kubetune"), "operator", *container["args"]]
    assert environ["POD_NAME"] == pod and environ["KUBERNETES_SERVICE_HOST"] == "127.0.0.1"
    for var in container["env"]:
        if "value" in var:
            assert environ[var["name"]] == var["value"], var


def ftj(name: str, ns: str) -> dict:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneJob", "metadata": {"name": name, "namespace": ns},
            "spec": {"baseModel": {"uri": "s3://models/tiny"}, "dataset": {"train": "s3://data/train.jsonl"},
                     "resources": {"gpusPerNode": 1, "cpu": "2", "memory": "8Gi"}}}


def run_a_job(cluster: ControlPlane, ns: str, runner: PodRunner) -> dict:
    """A FineTuneJob gets its Job and, once KWOK completes the trainer pod, phase Succeeded."""
    custom, batch = k8s.CustomObjectsApi(cluster.api_client()), k8s.BatchV1Api(cluster.api_client())
    name = f"chart-{uuid.uuid4().hex[:5]}"
    custom.create_namespaced_custom_object(GROUP, VERSION, ns, "finetunejobs", ftj(name, ns))
    job = wait_for(lambda: batch.read_namespaced_job(f"{name}-train", ns), STEP, "the trainer Job", on_timeout=runner.describe)
    assert job.metadata.owner_references[0].name == name
    return wait_for(lambda: (o := custom.get_namespaced_custom_object(GROUP, VERSION, ns, "finetunejobs", name))
                    .get("status", {}).get("phase") == "Succeeded" and o, STEP, "phase Succeeded", on_timeout=runner.describe)


def stops_on_uninstall(cluster: ControlPlane, runner: PodRunner, release: Release, pod: str) -> None:
    proc = process_of(runner, release.namespace, pod)
    release.uninstall()
    wait_for(lambda: proc.poll() is not None, STEP, "the operator to exit after uninstall", on_timeout=runner.describe)
    assert proc.poll() == 0, runner.logs(release.namespace, pod)[-3000:]  # a clean kopf shutdown on SIGTERM
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{release.health_port}/healthz", timeout=3)


def test_cluster_wide_install_runs_the_operator_from_the_chart(e2e_cluster, operator_runner, operator_venv, tmp_path):
    job_ns = e2e_cluster.create_namespace(f"chart-any-{uuid.uuid4().hex[:4]}")
    # The admission policies cover only this test's namespaces, so other modules' operators are unaffected.
    release = Release(e2e_cluster, "chartall", "kubetune-chart-all", {"admissionPolicies": {"namespaceSelector": {
        "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": [job_ns]}]}}}, tmp_path)
    assert {"ClusterRole", "ClusterRoleBinding", "ValidatingAdmissionPolicy"} <= release.kinds()
    release.install()
    try:
        pod = running_operator(e2e_cluster, operator_runner, release).metadata.name
        assert_runs_the_wheel_with_the_charts_args(operator_runner, release, pod, operator_venv)
        probe_answers(release, operator_runner)
        done = run_a_job(e2e_cluster, job_ns, operator_runner)
        # The chart's status policy lets its operator write phase (above) and refuses anyone else.
        custom = k8s.CustomObjectsApi(e2e_cluster.api_client())
        with pytest.raises(ApiException) as refused:
            custom.patch_namespaced_custom_object_status(GROUP, VERSION, job_ns, "finetunejobs", done["metadata"]["name"],
                                                         {"status": {"phase": "Failed"}})
        assert refused.value.status == 403 and "chartall-operator-finetunejob-status" in refused.value.body
        assert "Forbidden" not in operator_runner.logs(release.namespace, pod)
        stops_on_uninstall(e2e_cluster, operator_runner, release, pod)
    finally:
        release.uninstall()


def test_namespace_scoped_install_runs_the_operator_from_the_chart(e2e_cluster, operator_runner, operator_venv, tmp_path):
    suffix = uuid.uuid4().hex[:4]
    watched = e2e_cluster.create_namespace(f"chart-team-a-{suffix}")
    other = e2e_cluster.create_namespace(f"chart-team-b-{suffix}")
    release = Release(e2e_cluster, "chartns", "kubetune-chart-ns",
                      {"watchAllNamespaces": False, "watchNamespaces": [watched]}, tmp_path)
    assert "ClusterRole" not in release.kinds() and "Role" in release.kinds()
    release.install()
    try:
        pod = running_operator(e2e_cluster, operator_runner, release).metadata.name
        assert_runs_the_wheel_with_the_charts_args(operator_runner, release, pod, operator_venv)
        assert f"--namespace={watched}" in release.rendered("Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
        probe_answers(release, operator_runner)
        custom = k8s.CustomObjectsApi(e2e_cluster.api_client())
        custom.create_namespaced_custom_object(GROUP, VERSION, other, "finetunejobs", ftj("unwatched", other))
        run_a_job(e2e_cluster, watched, operator_runner)
        # By then the unwatched namespace's job would have had its Job too, had the operator seen it.
        assert k8s.BatchV1Api(e2e_cluster.api_client()).list_namespaced_job(other).items == []
        assert "status" not in custom.get_namespaced_custom_object(GROUP, VERSION, other, "finetunejobs", "unwatched")
        assert "Forbidden" not in operator_runner.logs(release.namespace, pod)
        stops_on_uninstall(e2e_cluster, operator_runner, release, pod)
    finally:
        release.uninstall()
