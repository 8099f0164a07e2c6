"""Serving pods pass Pod Security "restricted", checked by the apiserver's own PodSecurity
admission in a namespace that enforces it; and the apiserver accepts the Deployment and the
Services as built (strict field validation, so a misspelt field fails instead of vanishing)."""

from __future__ import annotations

import uuid

import pytest
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from kubetune.api.modeldeployment import ModelDeploymentSpec, ModelStorage
from kubetune.builders.common import Owner
from kubetune.builders.serving import (
    ServedRevision,
    build_client_service,
    build_revision_service,
    build_serving_deployment,
)
from kubetune.settings import OperatorSettings
from tests.support.controlplane import ControlPlane

pytestmark = pytest.mark.integration

STORAGE = ModelStorage.model_validate({"endpoint": "http://minio:9000", "credentialsSecret": {"name": "s3-creds"}})
CASES = {
    # s3:// adapter and base: two init containers pulling with Secret-referenced credentials.
    "adapter-from-s3": (
        {"model": {"uri": "s3://runs/adapter", "baseModel": "s3://models/base", "loraRank": 16},
         "serving": {"gpus": 2, "tensorParallelSize": 2, "image": "vllm/vllm-openai:v0.18.0",
                     "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]}},
        ServedRevision("a1b2c3d", "adapter", "s3://runs/adapter", "s3://models/base", 16, STORAGE),
    ),
    # hf:// merged weights: vLLM downloads them itself, no init container.
    "merged-from-hf": (
        {"model": {"uri": "hf://acme/merged"}, "serving": {"mode": "merged", "gpus": 0}},
        ServedRevision("e4f5a6b", "merged", "hf://acme/merged", None, None, None),
    ),
}


@pytest.fixture(scope="module")
def restricted_ns(kube_api: ControlPlane) -> str:
    name = f"restricted-serving-{uuid.uuid4().hex[:6]}"
    core = k8s.CoreV1Api(kube_api.api_client())
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(
        name=name, labels={"pod-security.kubernetes.io/enforce": "restricted",
                           "pod-security.kubernetes.io/enforce-version": "latest"})))
    # ServiceAccount admission wants the pod's account to exist; without a controller-manager
    # (integration tier alone) nothing makes "default", with one (after the e2e tier) it races us.
    try:
        core.create_namespaced_service_account(name, k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name="default")))
    except ApiException as err:
        if err.status != 409:
            raise
    return name


def build(namespace: str, case: str, md_name: str = "ps-serving") -> tuple[Owner, ModelDeploymentSpec, dict]:
    doc, rev = CASES[case]
    spec = ModelDeploymentSpec.model_validate(doc)
    owner = Owner(name=md_name, namespace=namespace, uid=str(uuid.uuid4()), kind="ModelDeployment")
    return owner, spec, build_serving_deployment(owner, spec, rev, 2, OperatorSettings())


def test_the_probe_is_real_a_root_pod_is_rejected(kube_api: ControlPlane, restricted_ns: str):
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "root", "namespace": restricted_ns},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    with pytest.raises(ApiException) as err:
        k8s.CoreV1Api(kube_api.api_client()).create_namespaced_pod(restricted_ns, body, dry_run="All")
    assert err.value.status == 403 and "violates PodSecurity" in err.value.body


@pytest.mark.parametrize("case", sorted(CASES))
def test_serving_pod_is_restricted(kube_api: ControlPlane, restricted_ns: str, case: str):
    _, _, deployment = build(restricted_ns, case)
    template = deployment["spec"]["template"]
    body = {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "serving-probe", "namespace": restricted_ns, "labels": template["metadata"]["labels"]},
            "spec": template["spec"]}
    k8s.CoreV1Api(kube_api.api_client()).create_namespaced_pod(
        restricted_ns, body, dry_run="All", field_validation="Strict")


@pytest.mark.parametrize("case", sorted(CASES))
def test_deployment_and_services_are_accepted_as_built(kube_api: ControlPlane, restricted_ns: str, case: str):
    # A dotted name: Service names must be RFC 1035 labels, so the builders must clean it.
    owner, spec, deployment = build(restricted_ns, case, md_name="llama-3.1-8b")
    api = kube_api.api_client()
    k8s.AppsV1Api(api).create_namespaced_deployment(restricted_ns, deployment, dry_run="All", field_validation="Strict")
    core = k8s.CoreV1Api(api)
    for svc in (build_revision_service(owner, spec, CASES[case][1].revision), build_client_service(owner, spec, None)):
        core.create_namespaced_service(restricted_ns, svc, dry_run="All", field_validation="Strict")
