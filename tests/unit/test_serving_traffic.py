"""How canary weights become traffic, without a cluster: revision and client Services, the
HTTPRoute, and the replica split."""

from __future__ import annotations

import pytest

from kubetune.api.modeldeployment import ModelDeploymentSpec
from kubetune.builders.serving import (
    MODEL_DEPLOYMENT_LABEL as MD_LABEL,
    REVISION_LABEL,
    build_client_service,
    build_httproute,
    build_revision_service,
    replica_split,
)
from kubetune.builders.common import Owner

pytestmark = pytest.mark.unit

OWNER = Owner(name="support-bot", namespace="team-a", uid="0f1e2d3c-aaaa-bbbb-cccc-000000000003", kind="ModelDeployment")


def make_spec(rollout: dict | None = None) -> ModelDeploymentSpec:
    doc = {"model": {"uri": "s3://runs/adapter", "baseModel": "s3://models/base"}}
    return ModelDeploymentSpec.model_validate({**doc, "rollout": rollout} if rollout else doc)


# -- Services and the HTTPRoute ---------------------------------------------------------------------

def test_revision_service_selects_one_revision():
    svc = build_revision_service(OWNER, make_spec(), "a1b2c3d")
    assert svc["metadata"]["name"] == "support-bot-a1b2c3d"
    assert svc["spec"]["selector"] == {MD_LABEL: "support-bot", REVISION_LABEL: "a1b2c3d"}
    assert svc["metadata"]["labels"][REVISION_LABEL] == "a1b2c3d"
    assert svc["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]


def test_client_service_selector_depends_on_the_routing_mode():
    ratio = build_client_service(OWNER, make_spec(), "a1b2c3d")
    assert ratio["spec"]["selector"] == {MD_LABEL: "support-bot"}
    gw = make_spec(rollout={"trafficRouting": {"gatewayParentRefs": [{"name": "web"}]}})
    assert build_client_service(OWNER, gw, "a1b2c3d")["spec"]["selector"] == {
        MD_LABEL: "support-bot", REVISION_LABEL: "a1b2c3d"}
    assert ratio["metadata"]["name"] == "support-bot"


def gateway_spec() -> ModelDeploymentSpec:
    return make_spec(rollout={"trafficRouting": {
        "gatewayParentRefs": [{"name": "web", "namespace": "gateways", "sectionName": "https"}, {"name": "internal"}],
        "hostnames": ["llm.example.com"]}})


@pytest.mark.parametrize("weight", [0, 1, 10, 50, 99, 100])
def test_httproute_weights_sum_to_100(weight):
    route = build_httproute(OWNER, gateway_spec(), "stable1", "canary1", weight)
    backends = route["spec"]["rules"][0]["backendRefs"]
    assert [(b["name"], b["port"], b["weight"]) for b in backends] == [
        ("support-bot-stable1", 80, 100 - weight), ("support-bot-canary1", 80, weight)]


def test_httproute_shape():
    route = build_httproute(OWNER, gateway_spec(), "stable1", None, 30)
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1" and route["metadata"]["name"] == "support-bot"
    assert route["spec"]["hostnames"] == ["llm.example.com"]
    assert [{k: v for k, v in p.items() if k not in ("group", "kind")} for p in route["spec"]["parentRefs"]] == [
        {"name": "web", "namespace": "gateways", "sectionName": "https"}, {"name": "internal"}]
    assert route["spec"]["rules"][0]["backendRefs"] == [{"name": "support-bot-stable1", "port": 80, "weight": 100}]


# -- replica split ---------------------------------------------------------------------------------

@pytest.mark.parametrize("total, weight, expected", [
    (1, 1, (1, 1, 50)), (1, 10, (1, 1, 50)), (1, 50, (1, 1, 50)), (1, 99, (1, 1, 50)), (1, 100, (0, 1, 100)),
    (3, 1, (2, 1, 33)), (3, 10, (2, 1, 33)), (3, 50, (1, 2, 67)), (3, 99, (1, 3, 75)), (3, 100, (0, 3, 100)),
    (10, 1, (9, 1, 10)), (10, 10, (9, 1, 10)), (10, 50, (5, 5, 50)), (10, 99, (1, 10, 91)), (10, 100, (0, 10, 100)),
    (4, 0, (4, 0, 0)),
])
def test_replica_ratio_split(total, weight, expected):
    assert replica_split(total, weight, gateway=False) == expected


@pytest.mark.parametrize("total, weight, expected", [
    (1, 1, (1, 1, 1)), (1, 100, (1, 1, 100)), (3, 10, (3, 1, 10)), (3, 50, (3, 2, 50)), (3, 99, (3, 3, 99)),
    (10, 1, (10, 1, 1)), (10, 10, (10, 1, 10)), (10, 50, (10, 5, 50)), (10, 99, (10, 10, 99)), (10, 0, (10, 0, 0)),
])
def test_gateway_split_keeps_stable_at_full_scale(total, weight, expected):
    assert replica_split(total, weight, gateway=True) == expected


@pytest.mark.parametrize("total, weight", [(0, 10), (3, -1), (3, 101)])
def test_replica_split_rejects_nonsense(total, weight):
    with pytest.raises(ValueError):
        replica_split(total, weight, gateway=False)
