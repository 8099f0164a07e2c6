"""A ModelDeployment under test with its data plane: shared by the e2e tests and the rollout benchmark.

`Serving` owns one namespace, the ModelDeployment in it, a vLLM stand-in per
revision (registered with Prometheus under the labels a pod-label relabelling
gives) and a bounded load generator that follows the weight status says is
served, so what Prometheus measures is what the rollout did.
"""

from __future__ import annotations

import json
import threading
import uuid

from kubernetes import client as k8s

from kubetune.api import GROUP, VERSION
from tests.support.controlplane import ControlPlane
from tests.support.load import LoadGenerator
from tests.support.procs import wait_for
from tests.support.prometheus_fixtures import Prometheus
from tests.support.status_capture import capture

PLURAL = "modeldeployments"
INTERVAL = 2
ERRORS = {"name": "errors", "builtin": "error-rate", "max": 0.1}


class Serving:
    """One test's ModelDeployment, its stand-ins and the load that follows its served weight."""

    def __init__(self, cluster: ControlPlane, prometheus: Prometheus, standins, name: str = "bot"):
        self.cluster, self.prometheus, self.standins = cluster, prometheus, standins
        self.ns = f"mdep-{uuid.uuid4().hex[:6]}"
        self.name = name
        cluster.create_namespace(self.ns)
        api = cluster.api_client()
        self.custom, self.apps, self.core = k8s.CustomObjectsApi(api), k8s.AppsV1Api(api), k8s.CoreV1Api(api)
        self.urls: dict[str, str] = {}
        self.servers: dict = {}
        self._split: list[tuple[str, float]] = []
        self._stop = threading.Event()
        self.load: LoadGenerator | None = None

    # -- the resource -------------------------------------------------------------------------
    def apply(self, uri: str = "s3://models/adapter-v1", **spec) -> dict:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment",
            "metadata": {"name": self.name, "namespace": self.ns},
            "spec": {
                "model": {"uri": uri, "baseModel": "s3://models/base", "loraRank": 16},
                "serving": {"replicas": 2, "gpus": 1, "cpu": "2", "memory": "8Gi"},
                "rollout": {"steps": [{"weight": 50, "pauseSeconds": 6}], "scaleDownDelaySeconds": 2},
                "analysis": {"intervalSeconds": INTERVAL, "failureLimit": 1, "metrics": [ERRORS],
                             "noData": {"minSamples": 5, "timeoutSeconds": 60, "outcome": "Pause"}},
                **spec,
            },
        }
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, body)

    def patch(self, spec: dict) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, self.name, {"spec": spec})

    def get(self) -> dict:
        return capture(self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, self.name))

    def status(self) -> dict:
        return self.get().get("status") or {}

    def wait(self, check, what: str, timeout: float = 60) -> dict:
        def probe():
            st = self.status()
            return st if check(st) else None
        return wait_for(probe, timeout, f"{self.name}: {what}",
                        on_timeout=lambda: json.dumps(self.status(), indent=1, default=str) + self.events()
                        + self.cluster.describe())

    def events(self) -> str:
        items = self.core.list_namespaced_event(self.ns).items
        return "\nEvents:\n" + "\n".join(f"{e.reason}: {e.message}" for e in items)

    def event_reasons(self) -> list[str]:
        return [e.reason for e in self.core.list_namespaced_event(self.ns).items]

    def deployments(self) -> list[str]:
        return sorted(d.metadata.name for d in self.apps.list_namespaced_deployment(self.ns).items)

    # -- the data plane -----------------------------------------------------------------------
    def serve(self, revision: str, **faults):
        """Start the stand-in playing `revision`'s pods and let Prometheus scrape it."""
        server = self.standins(revision, **faults)
        self.standins.register(self.prometheus, server, self.ns, revision)
        self.urls[revision] = server.url
        self.servers[revision] = server
        return server

    def start_load(self, rate: float = 40, seconds: float = 120) -> None:
        """Requests split by the weight status says is served (bounded in count and time)."""
        def follow():
            while not self._stop.wait(0.5):
                st = self.status()
                stable, canary = (st.get("stable") or {}).get("revision"), (st.get("canary") or {}).get("revision")
                weight = st.get("achievedWeight") or 0
                split = [(self.urls[r], w) for r, w in ((stable, 100 - weight), (canary, weight))
                         if r in self.urls and w > 0]
                self._split = split
        threading.Thread(target=follow, daemon=True).start()
        self.load = LoadGenerator(lambda: self._split, rate=rate, max_requests=int(rate * seconds),
                                  max_seconds=seconds).start()

    def close(self) -> None:
        self._stop.set()
        if self.load is not None:
            self.load.stop()
        # Frees the fake GPUs for the next test (the garbage collector removes the Deployments).
        self.core.delete_namespace(self.ns)


def start_stable(s: Serving, **spec) -> str:
    s.apply(**spec)
    st = s.wait(lambda st: st.get("phase") == "Healthy", "stable revision Healthy")
    revision = st["stable"]["revision"]
    s.serve(revision)
    s.start_load()
    return revision


def start_canary(s: Serving, uri: str = "s3://models/adapter-v2", spec: dict | None = None, **faults) -> str:
    s.patch({"model": {"uri": uri}, **(spec or {})})
    st = s.wait(lambda st: st.get("canary"), "a canary revision")
    canary = st["canary"]["revision"]
    s.serve(canary, **faults)
    return canary
