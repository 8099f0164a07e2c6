"""The pods kubetune creates pass Pod Security "restricted", checked by the apiserver's own
PodSecurity admission in a namespace that enforces it (not by reading our own manifests)."""

from __future__ import annotations

import subprocess
import uuid

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.builders.trainer import build_job, build_trainer_config
from kubetune.builders.common import Owner
from kubetune.settings import OperatorSettings
from tests.support.controlplane import ControlPlane
from tests.support.tools import REPO

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def restricted_ns(kube_api: ControlPlane) -> str:
    name = f"restricted-{uuid.uuid4().hex[:6]}"
    k8s.CoreV1Api(kube_api.api_client()).create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(
        name=name, labels={"pod-security.kubernetes.io/enforce": "restricted",
                           "pod-security.kubernetes.io/enforce-version": "latest"})))
    return name


def create_pod_dry_run(cluster: ControlPlane, namespace: str, pod_spec: dict) -> None:
    core = k8s.CoreV1Api(cluster.api_client())
    # ServiceAccount admission wants the pod's account to exist (no controller-manager here makes "default").
    account = pod_spec.get("serviceAccountName", "default")
    try:
        core.create_namespaced_service_account(namespace, k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name=account)))
    except ApiException as err:
        if err.status != 409:
            raise
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probe", "namespace": namespace}, "spec": pod_spec}
    core.create_namespaced_pod(namespace, body, dry_run="All")


def test_the_probe_is_real_a_root_pod_is_rejected(kube_api: ControlPlane, restricted_ns: str):
    with pytest.raises(ApiException) as err:
        create_pod_dry_run(kube_api, restricted_ns, {"containers": [{"name": "c", "image": "busybox"}]})
    assert err.value.status == 403 and "violates PodSecurity" in err.value.body


@pytest.mark.parametrize("nodes", [1, 2])
def test_trainer_pod_is_restricted(kube_api: ControlPlane, restricted_ns: str, nodes: int):
    spec = FineTuneJobSpec.model_validate({
        "baseModel": {"uri": "s3://models/base"}, "dataset": {"train": "s3://data/train.jsonl"},
        "resources": {"nodes": nodes, "gpusPerNode": 2, "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]},
        "storage": {"uri": "s3://runs", "credentialsSecret": {"name": "s3-creds"}},
    })
    owner = Owner(name="ps-check", namespace=restricted_ns, uid=str(uuid.uuid4()))
    settings = OperatorSettings()
    job = build_job(owner, build_trainer_config(owner, spec, settings), settings)
    create_pod_dry_run(kube_api, restricted_ns, job["spec"]["template"]["spec"])


def test_operator_pod_from_the_helm_chart_is_restricted(kube_api: ControlPlane, restricted_ns: str):
    rendered = subprocess.run(
        ["helm", "template", "kubetune", str(REPO / "helm" / "kubetune"), "--namespace", restricted_ns,
         "--show-only", "templates/deployment.yaml"],
        check=True, capture_output=True, text=True,
    ).stdout
    deployment = yaml.safe_load(rendered)
    create_pod_dry_run(kube_api, restricted_ns, deployment["spec"]["template"]["spec"])
