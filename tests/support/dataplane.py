"""A real data plane for ModelDeployments: Traefik as the Gateway, vLLM stand-ins as the pods.

`DataPlane` (fixture `dataplane`, session scope) builds, inside a network
namespace of its own (tests/support/netns.py, pod CIDR 10.246.0.0/16 on its
loopback):

- a pod runner that plays every pod of the vLLM stand-in image on the fake nodes:
  one stand-in process per pod, bound to the pod's IP and port, revision from the
  pod's label, Ready only once its readiness probe (GET /v1/models) answers;
- Traefik (built by hack/traefik.sh) with the Kubernetes Gateway provider, reaching
  the apiserver through a forwarded loopback port with a ServiceAccount token of its
  own, and the Gateway `gateway-system/public` of GatewayClass `traefik`;
- a Prometheus scraping every running stand-in pod (labels namespace, revision, pod:
  what a pod-label relabelling gives) and Traefik's own metrics; the operator
  queries it through a forwarded port on this side (`prometheus.url`).

So a request travels Deployment → EndpointSlice → Traefik → stand-in for real.
`send()` sends a bounded batch through the Gateway from inside the namespace and
counts who answered. No packet is sent to a pod IP from the machine's namespace.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s

from .controlplane import ControlPlane
from .netns import Forwarder, NetNamespace
from .pod_runner import VLLM_STANDIN_IMAGE, PodRunner, vllm_standin_image
from .procs import ManagedProcess, free_port, wait_for
from .prometheus_fixtures import Prometheus
from .tools import REPO
from .vllm_standin import REVISION_HEADER

POD_CIDR = "10.246.0.0/16"
WEB_PORT = 8081                 # Traefik's entrypoint; the Gateway listener must use the same port
TRAEFIK_METRICS_PORT = 9100
TRAEFIK_API_PORT = 9101
GATEWAY_CLASS, GATEWAY_NAMESPACE, GATEWAY = "traefik", "gateway-system", "public"
CONTROLLER_NAME = "traefik.io/gateway-controller"
SCRAPE_JOB = "vllm"
TRAEFIK_RULES = [
    {"apiGroups": [""], "resources": ["namespaces", "services", "secrets", "configmaps", "nodes"],
     "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["gateway.networking.k8s.io"],
     "resources": ["gatewayclasses", "gateways", "httproutes", "grpcroutes", "referencegrants", "backendtlspolicies"],
     "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["gateway.networking.k8s.io"],
     "resources": ["gatewayclasses/status", "gateways/status", "httproutes/status", "grpcroutes/status",
                   "backendtlspolicies/status"],
     "verbs": ["update", "patch"]},
]


def traefik_binary() -> str:
    path = os.environ.get("KUBETUNE_TRAEFIK")
    if not path:
        path = subprocess.run(["bash", str(REPO / "hack" / "traefik.sh")], check=True, capture_output=True,
                              text=True).stdout.strip()
    return path


class DataPlane:
    def __init__(self, cluster: ControlPlane, workdir: Path):
        self.cluster, self.workdir = cluster, workdir
        workdir.mkdir(parents=True, exist_ok=True)
        api = cluster.api_client()
        self.core, self.rbac, self.custom = k8s.CoreV1Api(api), k8s.RbacAuthorizationV1Api(api), k8s.CustomObjectsApi(api)
        self.ns = NetNamespace((POD_CIDR,), workers=24)
        self.closers: list = []
        self._stop = threading.Event()

    # -- setup ----------------------------------------------------------------------------------------
    def start(self) -> "DataPlane":
        self.ns.create()
        self.closers.append(self.ns.close)
        # The apiserver, seen from inside at the same loopback port (for Traefik).
        self.closers.append(Forwarder(self.ns, self.cluster.port, None, self.cluster.port).start().close)
        self._start_prometheus()
        nodes = {n for names in self.cluster.nodes.values() for n in names}
        image = vllm_standin_image(self.workdir / "standin-bin", REPO)
        self.runner = PodRunner(self.cluster.api_client(), self.cluster.port, self.workdir / "pods",
                                {VLLM_STANDIN_IMAGE: image}, nodes, netns=self.ns, ip_base="10.246").start()
        self.closers.append(self.runner.stop)
        threading.Thread(target=self._sync_targets, daemon=True, name="dataplane-targets").start()
        self._start_traefik()
        self._create_gateway()
        return self

    def _start_prometheus(self) -> None:
        port = free_port()
        self.closers.append(Forwarder(None, port, self.ns, port).start().close)
        self.prometheus = Prometheus(self.workdir / "prometheus", wrap=self.ns.command, port=port)
        self.prometheus.start()
        self.closers.append(self.prometheus.stop)
        self.prometheus.set_targets("traefik", [f"127.0.0.1:{TRAEFIK_METRICS_PORT}"])

    def _traefik_token(self) -> str:
        ns, name = "kube-system", "traefik"
        self.core.create_namespaced_service_account(ns, {"metadata": {"name": name}})
        self.rbac.create_cluster_role({"metadata": {"name": name}, "rules": TRAEFIK_RULES})
        self.rbac.create_cluster_role_binding({
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}]})
        return self.core.create_namespaced_service_account_token(
            name, ns, {"spec": {"expirationSeconds": 86400}}).status.token

    def _start_traefik(self) -> None:
        token_file = self.workdir / "traefik-token"
        token_file.write_text(self._traefik_token())
        token_file.chmod(0o600)
        argv = [
            traefik_binary(), "--log.level=INFO", "--accesslog=false",
            f"--entryPoints.web.address=127.0.0.1:{WEB_PORT}",
            f"--entryPoints.metrics.address=127.0.0.1:{TRAEFIK_METRICS_PORT}",
            "--providers.kubernetesgateway=true",
            f"--providers.kubernetesgateway.endpoint={self.cluster.server}",
            f"--providers.kubernetesgateway.token={token_file}",
            f"--providers.kubernetesgateway.certauthfilepath={self.cluster.pki.ca_cert}",
            "--providers.kubernetesgateway.statusaddress.ip=127.0.0.1",
            "--metrics.prometheus=true", "--metrics.prometheus.entryPoint=metrics",
            "--metrics.prometheus.addServicesLabels=true",
            # Its API shows the servers each service balances over: tests wait for it to match the cluster.
            "--api=true", "--api.insecure=true", f"--entryPoints.traefik.address=127.0.0.1:{TRAEFIK_API_PORT}",
            # Nothing may leave the namespace, and there is nowhere to go: no version checks or usage reports.
            "--global.checkNewVersion=false", "--global.sendAnonymousUsage=false",
        ]
        self.traefik = ManagedProcess("traefik", self.ns.command(argv), self.workdir)
        self.traefik.start()
        self.closers.append(self.traefik.stop)

    def _create_gateway(self) -> None:
        self.cluster.create_namespace(GATEWAY_NAMESPACE)
        g = ("gateway.networking.k8s.io", "v1")
        self.custom.create_cluster_custom_object(*g, "gatewayclasses", {
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
            "metadata": {"name": GATEWAY_CLASS}, "spec": {"controllerName": CONTROLLER_NAME}})
        self.custom.create_namespaced_custom_object(*g, GATEWAY_NAMESPACE, "gateways", {
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": GATEWAY, "namespace": GATEWAY_NAMESPACE},
            "spec": {"gatewayClassName": GATEWAY_CLASS, "listeners": [
                {"name": "web", "port": WEB_PORT, "protocol": "HTTP", "allowedRoutes": {"namespaces": {"from": "All"}}}]}})

        def programmed() -> bool:
            self.traefik.check_alive()
            gw = self.custom.get_namespaced_custom_object(*g, GATEWAY_NAMESPACE, "gateways", GATEWAY)
            conds = (gw.get("status") or {}).get("conditions") or []
            return any(c["type"] == "Programmed" and c["status"] == "True" for c in conds)

        wait_for(programmed, 60, "the Gateway Programmed by Traefik", on_timeout=self.describe)

    # -- Prometheus targets: every running stand-in pod, as a PodMonitor would select them ----------
    def _sync_targets(self) -> None:
        path = self.prometheus.targets_dir / "pods.json"
        last = None
        while not self._stop.wait(0.5):
            try:
                groups = []
                for run in list(self.runner.runs.values()):
                    if run.deleted or run.finished or not run.started:
                        continue
                    labels = run.sandbox.pod["metadata"].get("labels") or {}
                    groups.append({"targets": [f"{run.pod_ip}:{_http_port(run.sandbox.pod)}"], "labels": {
                        "job": SCRAPE_JOB, "namespace": run.namespace, "pod": run.name,
                        "revision": labels.get("kubetune.io/revision", "")}})
                text = json.dumps(sorted(groups, key=lambda g: g["targets"]))
                if text != last:
                    tmp = path.with_suffix(".tmp")
                    tmp.write_text(text)
                    tmp.rename(path)
                    last = text
            except Exception as err:  # noqa: BLE001 - keep syncing; the runner log shows pod problems
                self.runner.errors.append(f"target sync: {err!r}")

    # -- traffic --------------------------------------------------------------------------------------
    def send(self, count: int, host: str, concurrency: int = 8, max_seconds: float = 60) -> Counter:
        """`count` completions through the Gateway (Host: host), from inside the namespace.
        Counts answers by revision header (None: no header, e.g. Traefik's own 503)."""
        per_worker = [count // concurrency + (1 if i < count % concurrency else 0) for i in range(concurrency)]
        deadline = time.monotonic() + max_seconds
        results = self.ns.map(lambda n: _requests(n, host, deadline), per_worker, timeout=max_seconds + 10)
        return sum(results, Counter())

    def traefik_services(self) -> list[dict]:
        """Traefik's HTTP services as its API shows the configuration it runs right now."""
        return json.loads(self.ns.call(_get, TRAEFIK_API_PORT, "/api/http/services"))

    def traefik_servers(self) -> dict[str, list[str]]:
        """Each load-balancer service and the server URLs it balances over right now."""
        return {svc["name"]: sorted(srv["url"] for srv in (svc.get("loadBalancer") or {}).get("servers") or [])
                for svc in self.traefik_services() if "loadBalancer" in svc}

    def traefik_weights(self) -> dict[str, dict[str, int]]:
        """Each weighted service (one per HTTPRoute rule) and its backends' weights right now."""
        return {svc["name"]: {b["name"]: b.get("weight", 1) for b in (svc.get("weighted") or {}).get("services") or []}
                for svc in self.traefik_services() if "weighted" in svc}

    def set_faults(self, revision: str, namespace: str, **faults: float) -> list[str]:
        """POST /control to every running stand-in of `revision`; returns the pods changed."""
        changed = []
        for run in list(self.runner.runs.values()):
            labels = run.sandbox.pod["metadata"].get("labels") or {}
            if run.namespace == namespace and labels.get("kubetune.io/revision") == revision and not run.finished:
                self.ns.call(_post_control, run.pod_ip, _http_port(run.sandbox.pod), faults)
                changed.append(run.name)
        return changed

    def describe(self) -> str:
        return "\n".join([self.traefik.describe() if hasattr(self, "traefik") else "", self.runner.describe()])

    def close(self) -> None:
        self._stop.set()
        for close in reversed(self.closers):
            try:
                close()
            except Exception:  # noqa: BLE001 - tear down the rest anyway
                pass


def _requests(n: int, host: str, deadline: float) -> Counter:
    """n sequential requests on one keep-alive connection to Traefik (runs inside the namespace)."""
    counts: Counter = Counter()
    conn = http.client.HTTPConnection("127.0.0.1", WEB_PORT, timeout=10)
    body = json.dumps({"model": "bot", "prompt": "hi", "max_tokens": 4})
    try:
        for _ in range(n):
            if time.monotonic() > deadline:
                counts[("timeout", 0)] += 1
                continue
            try:
                conn.request("POST", "/v1/completions", body=body,
                             headers={"Host": host, "Content-Type": "application/json"})
                r = conn.getresponse()
                r.read()
                counts[(r.getheader(REVISION_HEADER), r.status)] += 1
            except (OSError, http.client.HTTPException):
                counts[(None, 0)] += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", WEB_PORT, timeout=10)
    finally:
        conn.close()
    return counts


def _get(port: int, path: str) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        body = r.read()
        if r.status != 200:
            raise RuntimeError(f"GET {path} on 127.0.0.1:{port}: {r.status}")
        return body
    finally:
        conn.close()


def _http_port(pod: dict) -> int:
    return next((p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports") or []
                 if p.get("name") == "http"), 8000)


def _post_control(ip: str, port: int, faults: dict) -> None:
    conn = http.client.HTTPConnection(ip, port, timeout=5)
    try:
        conn.request("POST", "/control", body=json.dumps(faults), headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        r.read()
        if r.status != 200:
            raise RuntimeError(f"stand-in {ip}: /control answered {r.status}")
    finally:
        conn.close()


@pytest.fixture(scope="session")
def dataplane(e2e_cluster: ControlPlane, gateway_api_crds: list[str]) -> Iterator[DataPlane]:
    dp = DataPlane(e2e_cluster, e2e_cluster.workdir / "dataplane")
    try:
        dp.start()
        yield dp
    finally:
        dp.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    report = yield
    funcargs = getattr(item, "funcargs", None)
    dp = funcargs.get("dataplane") if isinstance(funcargs, dict) else None
    if report.failed and isinstance(dp, DataPlane):
        report.sections.append(("data plane", dp.describe()))
    return report
