"""How canary weights become traffic: per-revision Services, the client Service, the HTTPRoute,
and the replica counts that carry a weight.

Two modes. With spec.rollout.trafficRouting.gatewayParentRefs, an HTTPRoute splits requests
between the revision Services by weight, and the client Service "<md>" selects only the stable
revision. Without, the client Service selects every revision's pods and kube-proxy spreads
requests per pod, so the weight is carried by the replica ratio.
"""

from __future__ import annotations

from kubetune.api.modeldeployment import ModelDeploymentSpec

from ..common import Owner
from .names import client_service_name, httproute_name, revision_service_name, selector_labels

SERVICE_PORT = 80


def _service(owner: Owner, name: str, selector: dict[str, str], labels: dict[str, str]) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": owner.metadata(name, labels),
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            # targetPort by name: follows spec.serving.port without rebuilding the Service.
            "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def build_revision_service(owner: Owner, spec: ModelDeploymentSpec, revision: str) -> dict:
    """One revision's pods: the HTTPRoute's backend, and a way to reach one revision directly."""
    labels = selector_labels(owner, revision)
    return _service(owner, revision_service_name(owner, revision), labels, labels)


def build_client_service(owner: Owner, spec: ModelDeploymentSpec, stable_revision: str | None) -> dict:
    """The Service clients use ("<md>"): the stable revision behind a Gateway, every revision otherwise.

    Behind a Gateway with no stable revision yet, it selects every revision like the replica-ratio mode.
    """
    selector = selector_labels(owner, stable_revision if spec.gateway else None)
    return _service(owner, client_service_name(owner), selector, selector_labels(owner))


def build_httproute(owner: Owner, spec: ModelDeploymentSpec, stable_revision: str, canary_revision: str | None,
                    canary_weight: int) -> dict:
    """gateway.networking.k8s.io/v1 HTTPRoute splitting requests between the revision Services.

    At weight 100 the stable backend stays listed with weight 0, so promoting or rolling back
    is one patch of the weights.
    """
    if not 0 <= canary_weight <= 100:
        raise ValueError(f"canary weight must be within 0..100, got {canary_weight}")
    routing = spec.rollout.traffic_routing
    parents = []
    for ref in routing.gateway_parent_refs:
        parent = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": ref.name}
        if ref.namespace:
            parent["namespace"] = ref.namespace
        if ref.section_name:
            parent["sectionName"] = ref.section_name
        parents.append(parent)
    backends = [{"name": revision_service_name(owner, stable_revision), "port": SERVICE_PORT,
                 "weight": 100 - canary_weight if canary_revision else 100}]
    if canary_revision is not None:
        backends.append({"name": revision_service_name(owner, canary_revision), "port": SERVICE_PORT,
                         "weight": canary_weight})
    route_spec: dict = {"parentRefs": parents, "rules": [{"backendRefs": backends}]}
    if routing.hostnames:
        route_spec["hostnames"] = list(routing.hostnames)
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": owner.metadata(httproute_name(owner), selector_labels(owner)),
        "spec": route_spec,
    }


def _half_up(numerator: int, denominator: int) -> int:
    """round(numerator / denominator) with halves rounded up (Python's round() goes to even)."""
    return (2 * numerator + denominator) // (2 * denominator)


def replica_split(total: int, weight: int, gateway: bool) -> tuple[int, int, int]:
    """(stable replicas, canary replicas, canary share of traffic achieved, in percent).

    total is spec.serving.replicas, weight the canary share asked for (0 = no canary).

    Gateway: the HTTPRoute carries the weight exactly, the stable revision keeps all its replicas
    (an abort is one weight patch, with no pods to start) and the canary gets ceil(weight% of
    total), at least 1.

    Replica ratio: requests spread evenly over pods, so the weight is approximated by pod
    counts. canary = weight% of total rounded (half up), within 1..total; stable = the rest,
    but at least 1 until weight 100 (so one replica becomes 1 + 1 at any partial weight):

        total  weight  stable+canary  achieved     total  weight  stable+canary  achieved
          1     1-99       1+1          50%          10      1        9+1          10%
          1     100        0+1         100%          10     10        9+1          10%
          3     1,10       2+1          33%          10     50        5+5          50%
          3     50         1+2          67%          10     99        1+10         91%
          3     99         1+3          75%          10    100        0+10        100%
          3     100        0+3         100%
    """
    if total < 1:
        raise ValueError(f"total replicas must be at least 1, got {total}")
    if not 0 <= weight <= 100:
        raise ValueError(f"canary weight must be within 0..100, got {weight}")
    if weight == 0:
        return total, 0, 0
    if gateway:
        return total, max(1, -(-weight * total // 100)), weight
    canary = min(max(_half_up(weight * total, 100), 1), total)
    stable = total - canary
    if weight < 100:
        stable = max(stable, 1)
    return stable, canary, _half_up(100 * canary, stable + canary)
