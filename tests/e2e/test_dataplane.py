"""Canary weights as users' requests see them: real requests through Traefik to the serving pods.

The operator (its own ServiceAccount) rolls ModelDeployments out on the simulated cluster;
the data plane (tests/support/dataplane.py) runs one vLLM stand-in per serving pod inside a
network namespace, bound to the pod's IP, and Traefik routes the Gateway's requests by the
HTTPRoute the operator writes and the EndpointSlices Kubernetes keeps. At each step a batch of
requests goes through the Gateway and the share the canary answered is checked against the
weight in status: within a binomial 3-sigma bound, zero after an abort, all after promotion.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest
from kubernetes import client as k8s

from kubetune.api import GROUP, VERSION
from tests.e2e.operator_process import OperatorProcess
from tests.support.controlplane import ControlPlane
from tests.support.dataplane import GATEWAY, GATEWAY_NAMESPACE, WEB_PORT, DataPlane
from tests.support.pod_runner import VLLM_STANDIN_IMAGE
from tests.support.procs import wait_for
from tests.support.status_capture import capture

pytestmark = [pytest.mark.e2e, pytest.mark.dataplane]

PLURAL = "modeldeployments"
REQUESTS_PER_STEP = 1000
GW = ("gateway.networking.k8s.io", "v1")
ERRORS = {"name": "errors", "builtin": "error-rate", "max": 0.1}


@pytest.fixture(scope="module")
def operator(e2e_cluster: ControlPlane, kubetune_crds: list[str], dataplane: DataPlane) -> Iterator[OperatorProcess]:
    op = OperatorProcess(e2e_cluster, env={
        "KUBETUNE_PROMETHEUS_ADDRESS": dataplane.prometheus.url,
        "KUBETUNE_ROLLOUT_TICK_SECONDS": "1",
        "KUBETUNE_RESYNC_SECONDS": "3600",  # every convergence here comes from events and the rollout tick
        "KUBETUNE_TRAINER_IMAGE": "kubetune-trainer:e2e",
    }).start()
    yield op
    op.stop()


class Served:
    """One ModelDeployment in its own namespace, and what its users see through the Gateway."""

    def __init__(self, cluster: ControlPlane, dp: DataPlane, gateway: bool):
        self.cluster, self.dp, self.gateway = cluster, dp, gateway
        self.ns, self.name = f"dp-{uuid.uuid4().hex[:6]}", "bot"
        self.host = f"{self.name}.{self.ns}.example.test"
        cluster.create_namespace(self.ns)
        api = cluster.api_client()
        self.custom, self.core, self.discovery = k8s.CustomObjectsApi(api), k8s.CoreV1Api(api), k8s.DiscoveryV1Api(api)

    def apply(self, version: str, replicas: int, steps: list[dict], analysis: dict | None = None) -> None:
        routing = ({"gatewayParentRefs": [{"name": GATEWAY, "namespace": GATEWAY_NAMESPACE}], "hostnames": [self.host]}
                   if self.gateway else {})
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment",
            "metadata": {"name": self.name, "namespace": self.ns},
            "spec": {
                "model": {"uri": f"hf://acme/{version}"},
                "serving": {"image": VLLM_STANDIN_IMAGE, "mode": "merged", "replicas": replicas, "gpus": 1,
                            "cpu": "1", "memory": "2Gi"},
                "rollout": {"steps": steps, "scaleDownDelaySeconds": 2, "trafficRouting": routing},
                "analysis": analysis or {"intervalSeconds": 2, "failureLimit": 1, "metrics": [ERRORS],
                                         "noData": {"minSamples": 5, "timeoutSeconds": 300, "outcome": "Pause"}},
            },
        })
        if not self.gateway:
            self._client_route()

    def _client_route(self) -> None:
        """Without a Gateway in the spec, clients use the Service "<md>"; this route only lets the test
        reach it. Traefik then spreads requests evenly over the Service's ready endpoints, as kube-proxy does."""
        self.custom.create_namespaced_custom_object(*GW, self.ns, "httproutes", {
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "clients", "namespace": self.ns},
            "spec": {"parentRefs": [{"name": GATEWAY, "namespace": GATEWAY_NAMESPACE}], "hostnames": [self.host],
                     "rules": [{"backendRefs": [{"name": self.name, "port": 80}]}]}})

    def patch(self, spec: dict) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, self.name, {"spec": spec})

    def status(self) -> dict:
        obj = capture(self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, self.name))
        return obj.get("status") or {}

    def wait(self, check, what: str, timeout: float = 90) -> dict:
        def probe():
            st = self.status()
            return st if check(st) else None
        return wait_for(probe, timeout, f"{self.ns}/{self.name}: {what}",
                        on_timeout=lambda: f"{self.status()}\n{self.dp.describe()}")

    def ready_endpoints(self, service: str) -> list[str]:
        slices = self.discovery.list_namespaced_endpoint_slice(
            self.ns, label_selector=f"kubernetes.io/service-name={service}").items
        return sorted(a for s in slices for e in s.endpoints or [] if (e.conditions and e.conditions.ready)
                      for a in e.addresses)

    def traefik_balances(self, *services: str) -> bool:
        """Traefik balances each of these Services over exactly its ready endpoints."""
        servers = self.dp.traefik_servers()
        for service in services:
            mine = [urls for name, urls in servers.items() if name.startswith(f"{self.ns}-{service}-http-")]
            want = sorted(f"http://{ip}:8000" for ip in self.ready_endpoints(service))
            if not want or mine != [want]:
                return False
        return True

    def traefik_routes(self, weights: dict[str, int]) -> bool:
        """Traefik runs this route with these weights per revision (weight-0 backends ignored) and
        balances each weighted revision over its ready endpoints. Status and the HTTPRoute change
        first; a router applies them a moment later, and shares are measured against what it runs."""
        prefix = f"httproute-{self.ns}-{self.name}-"
        routes = [w for name, w in self.dp.traefik_weights().items() if name.startswith(prefix)]
        if len(routes) != 1:
            return False
        running = {}
        for backend, w in routes[0].items():
            rev = backend.removeprefix(f"{self.ns}-{self.name}-").split("-")[0]
            if w:
                running[rev] = w
        return running == {r: w for r, w in weights.items() if w} and \
            self.traefik_balances(*(f"{self.name}-{r}" for r in running))

    def measure(self, count: int = REQUESTS_PER_STEP) -> tuple[Counter, int]:
        """(answers by revision, how many were answered at all) for `count` requests."""
        counts = self.dp.send(count, self.host)
        by_revision: Counter = Counter()
        for (revision, code), n in counts.items():
            assert code == 200, f"{n} requests ended with {code} (revision {revision}): {counts}"
            by_revision[revision] += n
        return by_revision, sum(by_revision.values())

    def close(self) -> None:
        self.core.delete_namespace(self.ns)


def within_three_sigma(hits: int, n: int, weight_percent: int) -> tuple[bool, str]:
    p = weight_percent / 100
    bound = 3 * math.sqrt(p * (1 - p) / n)
    share = hits / n
    return abs(share - p) <= bound, f"canary share {share:.4f} of {n}, weight {p:.2f}, 3-sigma bound ±{bound:.4f}"


def assert_canary_share(s: "Served", stable: str, canary: str, weight_percent: int, label: str) -> None:
    """A full batch through the Gateway, all answered by the two revisions, the canary's share
    within the bound of `weight_percent`."""
    counts, n = s.measure()
    assert set(counts) <= {stable, canary} and n == REQUESTS_PER_STEP, counts
    ok, text = within_three_sigma(counts[canary], n, weight_percent)
    print(f"\n[dataplane] {label}: {text}")
    assert ok, text


@pytest.fixture
def served_factory(e2e_cluster, dataplane, operator) -> Iterator:
    made: list[Served] = []

    def make(gateway: bool) -> Served:
        s = Served(e2e_cluster, dataplane, gateway)
        made.append(s)
        return s
    yield make
    for s in made:
        s.close()


def test_gateway_split_follows_status_abort_and_promotion(served_factory):
    s = served_factory(gateway=True)
    s.apply("v1", replicas=2, steps=[{"weight": 10}, {"weight": 50}])  # steps wait for spec.promote
    stable = s.wait(lambda st: st.get("phase") == "Healthy", "stable Healthy")["stable"]["revision"]
    wait_for(lambda: s.traefik_routes({stable: 100}), 30, "Traefik routing to the stable pods")
    counts, n = s.measure()
    assert counts == Counter({stable: n}) and n == REQUESTS_PER_STEP, counts

    s.patch({"model": {"uri": "hf://acme/v2"}})
    for i, weight in enumerate((10, 50)):
        st = s.wait(lambda st, w=weight: st.get("canary") and st.get("achievedWeight") == w
                    and st.get("phase") == "Progressing", f"canary at {weight}%")
        canary = st["canary"]["revision"]
        wait_for(lambda: s.traefik_routes({stable: 100 - weight, canary: weight}), 30, f"Traefik at {weight}%")
        assert_canary_share(s, stable, canary, weight, f"gateway step {weight}%")
        if i == 0:
            s.patch({"promote": "to-50"})

    s.patch({"abort": True})
    s.wait(lambda st: st.get("phase") == "RolledBack" and not st.get("canary"), "aborted")
    wait_for(lambda: s.traefik_routes({stable: 100}), 30, "Traefik running the aborted route")
    counts, n = s.measure()
    assert counts == Counter({stable: n}), f"after the abort the canary still answered: {counts}"

    s.patch({"abort": False, "model": {"uri": "hf://acme/v3"}})
    third = s.wait(lambda st: st.get("canary") and st["canary"]["revision"] not in (stable, canary),
                   "a new canary")["canary"]["revision"]
    s.patch({"promoteFull": "now"})
    s.wait(lambda st: (st.get("stable") or {}).get("revision") == third and not st.get("canary"), "promoted")
    wait_for(lambda: s.traefik_routes({third: 100}), 30, "Traefik running the promoted route")
    counts, n = s.measure()
    assert counts == Counter({third: n}) and n == REQUESTS_PER_STEP, f"after promotion: {counts}"


def test_replica_ratio_split_is_what_status_says(served_factory):
    """No Gateway in the spec: the weight is the replica ratio behind the client Service. With 3
    replicas, 10% asks for 2 + 1 pods and 50% for 1 + 2: status says 33% and 67% are served."""
    s = served_factory(gateway=False)
    s.apply("v1", replicas=3, steps=[{"weight": 10}, {"weight": 50}])
    stable = s.wait(lambda st: st.get("phase") == "Healthy", "stable Healthy")["stable"]["revision"]
    s.patch({"model": {"uri": "hf://acme/v2"}})
    for i, (weight, canary_pods) in enumerate(((10, 1), (50, 2))):
        st = s.wait(lambda st, w=weight: st.get("canary") and st.get("canaryWeight") == w
                    and st.get("phase") == "Progressing", f"canary asked {weight}%")
        canary = st["canary"]["revision"]
        # The pods behind the weight are ready and listed, and Traefik balances over exactly those.
        wait_for(lambda n=canary_pods: len(s.ready_endpoints(f"{s.name}-{canary}")) == n
                 and len(s.ready_endpoints(s.name)) == 3 and s.traefik_balances(s.name), 60,
                 f"Traefik balancing over 3 - {canary_pods} stable and {canary_pods} canary endpoints")
        achieved = s.status()["achievedWeight"]
        assert_canary_share(s, stable, canary, achieved, f"replica-ratio step {weight}% (status: {achieved}% served)")
        if i == 0:
            s.patch({"promote": "to-50"})


def test_injected_fault_takes_the_canary_out_of_the_request_path(served_factory, dataplane: DataPlane):
    """The whole loop: requests through Traefik → stand-in metrics → Prometheus → analysis →
    rollback → HTTPRoute → Traefik → no request reaches the canary."""
    s = served_factory(gateway=True)
    s.apply("v1", replicas=2, steps=[{"weight": 50, "pauseSeconds": 600}])
    stable = s.wait(lambda st: st.get("phase") == "Healthy", "stable Healthy")["stable"]["revision"]
    wait_for(lambda: s.traefik_routes({stable: 100}), 30, "Traefik routing to the stable pods")
    load = BoundedLoad(dataplane, s.host, rate=40, max_seconds=150).start()
    try:
        wait_for(lambda: len(load.log) >= 20, 30, "load flowing")
        t_canary = time.monotonic()
        s.patch({"model": {"uri": "hf://acme/v2"}})
        st = s.wait(lambda st: st.get("canary") and st.get("achievedWeight") == 50, "canary at 50%")
        canary = st["canary"]["revision"]
        wait_for(lambda: load.seen(canary), 30, "the canary answering through the Gateway")
        t_fault = time.monotonic()
        assert dataplane.set_faults(canary, s.ns, error_rate=1.0), "no canary stand-in to break"
        st = s.wait(lambda st: st.get("phase") == "RolledBack", "rolled back by analysis", timeout=90)
        assert st["aborted"][-1]["revision"] == canary and st["aborted"][-1]["reason"] == "AnalysisFailed"
        t_rolled_back = time.monotonic()
        # Keep sending until 200 requests in a row after the rollback went to the stable revision.
        wait_for(lambda: load.stable_run_since(t_rolled_back, stable) >= 200, 60, "200 stable answers in a row")
    finally:
        load.stop()
    # Starting the canary failed no request: it got weight only once Traefik could reach it.
    before = [(round(t - t_canary, 2), r, code) for t, r, code in load.log if t < t_fault]
    assert before and all(code == 200 and r in (stable, canary) for _, r, code in before), \
        f"failed requests before the fault (seconds after the canary started): {[b for b in before if b[2] != 200]}"
    last_canary = load.last(canary)
    assert last_canary is not None
    after = [r for t, r, _ in load.log if t > last_canary]
    assert after and all(r == stable for r in after), "the canary answered again after its last answer"
    print(f"\n[dataplane] fault injected → status RolledBack {t_rolled_back - t_fault:.1f}s; "
          f"→ last canary answer {last_canary - t_fault:.1f}s ({len(load.log)} requests, {len(after)} after it)")


class BoundedLoad:
    """Requests through the Gateway at `rate`/s from inside the namespace, stopping by itself after
    max_seconds or rate*max_seconds requests. log: (monotonic time, revision header, HTTP status)."""

    def __init__(self, dp: DataPlane, host: str, rate: float, max_seconds: float):
        self.dp, self.host, self.rate, self.max_seconds = dp, host, rate, max_seconds
        self.log: list[tuple[float, str | None, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: dp.ns.call(self._run, timeout=None), daemon=True)

    def start(self) -> "BoundedLoad":
        self._thread.start()
        return self

    def _run(self) -> None:
        import http.client
        import json

        from tests.support.vllm_standin import REVISION_HEADER
        body = json.dumps({"model": "bot", "prompt": "hi", "max_tokens": 4})
        deadline, limit = time.monotonic() + self.max_seconds, int(self.rate * self.max_seconds)
        conn = http.client.HTTPConnection("127.0.0.1", WEB_PORT, timeout=10)
        while not self._stop.is_set() and time.monotonic() < deadline and len(self.log) < limit:
            try:
                conn.request("POST", "/v1/completions", body=body, headers={"Host": self.host,
                                                                             "Content-Type": "application/json"})
                r = conn.getresponse()
                r.read()
                self.log.append((time.monotonic(), r.getheader(REVISION_HEADER), r.status))
            except (OSError, http.client.HTTPException):
                self.log.append((time.monotonic(), None, 0))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", WEB_PORT, timeout=10)
            self._stop.wait(1 / self.rate)
        conn.close()

    def seen(self, revision: str) -> bool:
        return any(r == revision for _, r, _ in self.log)

    def last(self, revision: str) -> float | None:
        return max((t for t, r, _ in self.log if r == revision), default=None)

    def stable_run_since(self, t0: float, stable: str) -> int:
        run = 0
        for t, r, _ in self.log:
            if t > t0:
                run = run + 1 if r == stable else 0
        return run

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
