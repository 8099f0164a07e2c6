"""service_account_client really authenticates as the ServiceAccount: RBAC applies to it."""

from __future__ import annotations

import uuid

import pytest
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from tests.support.cluster_fixtures import service_account_client
from tests.support.controlplane import ControlPlane

pytestmark = pytest.mark.integration


def test_service_account_is_limited_to_its_role(kube_api: ControlPlane):
    ns = kube_api.create_namespace(f"sa-{uuid.uuid4().hex[:8]}")
    admin = kube_api.api_client()
    core, rbac = k8s.CoreV1Api(admin), k8s.RbacAuthorizationV1Api(admin)
    core.create_namespaced_config_map(ns, k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name="allowed"), data={"k": "v"}))
    core.create_namespaced_config_map(ns, k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name="other"), data={"k": "x"}))
    rbac.create_namespaced_role(ns, k8s.V1Role(
        metadata=k8s.V1ObjectMeta(name="read-one"),
        rules=[k8s.V1PolicyRule(api_groups=[""], resources=["configmaps"], resource_names=["allowed"], verbs=["get"])],
    ))
    rbac.create_namespaced_role_binding(ns, k8s.V1RoleBinding(
        metadata=k8s.V1ObjectMeta(name="read-one"),
        role_ref=k8s.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="read-one"),
        subjects=[k8s.RbacV1Subject(kind="ServiceAccount", name="reader", namespace=ns)],
    ))

    sa = k8s.CoreV1Api(service_account_client(kube_api, ns, "reader"))

    assert sa.read_namespaced_config_map("allowed", ns).data == {"k": "v"}
    for forbidden in (
        lambda: sa.read_namespaced_config_map("other", ns),
        lambda: sa.list_namespaced_secret(ns),
        lambda: sa.list_namespaced_config_map(ns),
    ):
        with pytest.raises(ApiException) as err:
            forbidden()
        assert err.value.status == 403, err.value
        # The apiserver names the caller: proof the token is the ServiceAccount's, not admin's.
        assert f"system:serviceaccount:{ns}:reader" in err.value.body


def test_self_subject_review_names_the_service_account(kube_api: ControlPlane):
    ns = kube_api.create_namespace(f"sa-{uuid.uuid4().hex[:8]}")
    client = service_account_client(kube_api, ns, "whoami")
    review = k8s.AuthenticationV1Api(client).create_self_subject_review(k8s.V1SelfSubjectReview())
    info = review.status.user_info
    assert info.username == f"system:serviceaccount:{ns}:whoami"
    assert "system:serviceaccounts" in info.groups
