"""The headless Service that gives each pod of a multi-node Job a DNS name."""

from __future__ import annotations

from kubetune.settings import OperatorSettings

from ..common import Owner


def build_headless_service(owner: Owner, settings: OperatorSettings) -> dict:
    # Pods set subdomain=<service>, so rank 0 resolves as <job>-0.<service>.
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": owner.metadata(owner.service_name),
        "spec": {
            "clusterIP": "None",
            "selector": owner.labels(),
            # Ranks look rank 0 up while it starts, before any readiness.
            "publishNotReadyAddresses": True,
            "ports": [{"name": "rendezvous", "port": settings.master_port, "targetPort": settings.master_port}],
        },
    }
