"""A real Kubernetes control plane on loopback: etcd + kube-apiserver, optionally
kube-controller-manager + kube-scheduler (the e2e tier adds KWOK nodes, see kwok.py).

The arrangement is envtest's: one etcd, an apiserver with RBAC, client-cert
authentication for the admin (group system:masters) and service-account signing
keys so TokenRequest works. Flags keep it cheap on a 2-core machine.
"""

from __future__ import annotations

import json

import subprocess
import time
from pathlib import Path
from typing import Any

import requests
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.rest import ApiException

from . import pki
from .procs import ManagedProcess, free_port, wait_for
from .tools import tool

SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"

# Controllers the operator's Jobs, Deployments and disruption tests rely on; the
# rest of kube-controller-manager's default set only costs CPU here.
CONTROLLERS = ",".join([
    "job-controller", "cronjob-controller", "ttl-after-finished-controller", "pod-garbage-collector-controller",
    "garbage-collector-controller", "namespace-controller", "serviceaccount-controller",
    "serviceaccount-token-controller", "root-ca-certificate-publisher-controller",
    "deployment-controller", "replicaset-controller", "statefulset-controller", "daemonset-controller",
    "endpoints-controller", "endpointslice-controller", "disruption-controller", "resourcequota-controller",
    "node-lifecycle-controller", "taint-eviction-controller",
])


class ControlPlane:
    """Processes, credentials and clients of one test cluster."""

    def __init__(self, assets: Path, workdir: Path):
        self.assets = assets
        self.workdir = workdir
        self.log_dir = workdir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.processes: dict[str, ManagedProcess] = {}
        self.pki = pki.generate(workdir / "pki")
        self.port = 0
        self.kubeconfig = workdir / "kubeconfig"
        self.startup_seconds: dict[str, float] = {}
        self.nodes: dict[str, list[str]] = {}  # filled by the e2e fixture: {"gpu": [...], "cpu": [...]}

    # -- processes ---------------------------------------------------------------------------------

    def _start(self, name: str, argv: list[str]) -> ManagedProcess:
        proc = ManagedProcess(name, argv, self.log_dir).start()
        self.processes[name] = proc
        return proc

    def start(self) -> "ControlPlane":
        t0 = time.monotonic()
        etcd_port, peer_port = free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        etcd = self._start("etcd", [
            self.assets / "etcd", "--name=default", f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-cluster=default=http://127.0.0.1:{peer_port}",
            # Test data is disposable: skipping fsync makes every write cheap.
            "--unsafe-no-fsync", "--log-level=warn",
        ])

        def etcd_healthy() -> bool:
            etcd.check_alive()
            return requests.get(f"{etcd_url}/health", timeout=2).json().get("health") == "true"

        wait_for(etcd_healthy, 30, "etcd /health", on_timeout=etcd.describe)
        self.startup_seconds["etcd"] = time.monotonic() - t0

        self.port = free_port()
        p = self.pki
        apiserver = self._start("kube-apiserver", [
            self.assets / "kube-apiserver",
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={self.port}",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            f"--tls-cert-file={p.serving_cert}", f"--tls-private-key-file={p.serving_key}",
            f"--client-ca-file={p.ca_cert}",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={p.sa_pub}", f"--service-account-signing-key-file={p.sa_key}",
            "--authorization-mode=RBAC",
            "--service-cluster-ip-range=10.0.0.0/24", "--allow-privileged=true",
            # No real network: the "kubernetes" Service needs no endpoints, and a
            # single loopback apiserver gains nothing from APF or profiling.
            "--endpoint-reconciler-type=none", "--enable-priority-and-fairness=false", "--profiling=false",
            # As on OpenShift and hardened clusters: setting blockOwnerDeletion needs update on the
            # owner's finalizers, so the operator's rules for that are exercised (tests/e2e/test_operator_rbac.py).
            "--enable-admission-plugins=OwnerReferencesPermissionEnforcement",
        ])
        self._write_kubeconfig()
        wait_for(lambda: self._readyz(apiserver), 90, "kube-apiserver /readyz", interval=0.5,
                 on_timeout=apiserver.describe)
        self.startup_seconds["kube-apiserver"] = time.monotonic() - t0
        return self

    def _readyz(self, apiserver: ManagedProcess) -> bool:
        apiserver.check_alive()
        r = requests.get(f"{self.server}/readyz", cert=(str(self.pki.admin_cert), str(self.pki.admin_key)),
                         verify=str(self.pki.ca_cert), timeout=5)
        return r.status_code == 200

    def _start_controller_manager(self) -> ManagedProcess:
        return self._start("kube-controller-manager", [
            self.assets / "kube-controller-manager", f"--kubeconfig={self.kubeconfig}",
            "--leader-elect=false", "--secure-port=0", f"--controllers={CONTROLLERS}",
            # Signs the tokens of legacy SA secrets and publishes kube-root-ca.crt into namespaces.
            f"--service-account-private-key-file={self.pki.sa_key}", f"--root-ca-file={self.pki.ca_cert}",
            "--use-service-account-credentials=false",
        ])

    def restart_controller_manager(self) -> None:
        """Restart kube-controller-manager (e.g. so it discovers newly installed CRDs at once)."""
        self.processes.pop("kube-controller-manager").stop()
        kcm = self._start_controller_manager()
        # Evidence its informers run again: a new namespace gets its default ServiceAccount.
        ns = f"kcm-restart-{time.time_ns()}"
        try:
            self.create_namespace(ns)
        except TimeoutError as err:
            raise TimeoutError(f"{err}\n{kcm.describe()}") from err
        k8s.CoreV1Api(self.api_client()).delete_namespace(ns)

    def start_controllers(self) -> None:
        """kube-controller-manager and kube-scheduler, both as the admin user."""
        t0 = time.monotonic()
        kcm = self._start_controller_manager()
        sched = self._start("kube-scheduler", [
            self.assets / "kube-scheduler", f"--kubeconfig={self.kubeconfig}",
            "--leader-elect=false", "--secure-port=0",
        ])
        core = k8s.CoreV1Api(self.api_client())

        def default_sa_exists() -> bool:
            kcm.check_alive()
            sched.check_alive()
            # The serviceaccount controller creating "default" proves the controller manager works.
            return core.read_namespaced_service_account("default", "default") is not None

        wait_for(default_sa_exists, 60, "kube-controller-manager to create default/default",
                 on_timeout=lambda: kcm.describe() + "\n" + sched.describe())
        self.startup_seconds["controllers"] = time.monotonic() - t0

    def stop(self) -> None:
        for proc in reversed(list(self.processes.values())):
            proc.stop()

    def describe(self) -> str:
        """Where the logs are and their last lines (shown when a test fails)."""
        parts = [f"control-plane logs in {self.log_dir}"]
        parts += [proc.describe() for proc in self.processes.values()]
        return "\n".join(parts)

    # -- access ------------------------------------------------------------------------------------

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _write_kubeconfig(self) -> None:
        p = self.pki
        cfg = {
            "apiVersion": "v1", "kind": "Config", "current-context": "kubetune-test",
            "clusters": [{"name": "kubetune-test",
                          "cluster": {"server": self.server, "certificate-authority": str(p.ca_cert)}}],
            "users": [{"name": "admin",
                       "user": {"client-certificate": str(p.admin_cert), "client-key": str(p.admin_key)}}],
            "contexts": [{"name": "kubetune-test", "context": {"cluster": "kubetune-test", "user": "admin"}}],
        }
        self.kubeconfig.write_text(yaml.safe_dump(cfg))

    def api_client(self) -> k8s.ApiClient:
        """A fresh admin ApiClient (cluster-admin through group system:masters)."""
        return k8s_config.new_client_from_config(config_file=str(self.kubeconfig))

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run kubectl as admin; with check=True a non-zero exit raises with stderr in the message."""
        argv = [tool("kubectl"), f"--kubeconfig={self.kubeconfig}", *args]
        res = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({res.returncode}):\n{res.stderr}{res.stdout}")
        return res

    def create_namespace(self, name: str, labels: dict[str, str] | None = None) -> str:
        """Create a namespace; with the controller manager running, wait for its default
        ServiceAccount (pods are refused until it exists)."""
        core = k8s.CoreV1Api(self.api_client())
        core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name, labels=labels)))
        if "kube-controller-manager" in self.processes:
            wait_for(lambda: core.read_namespaced_service_account("default", name), 30,
                     f"ServiceAccount {name}/default")
        return name


def service_account_client(cluster: ControlPlane, namespace: str, name: str,
                           expiration_seconds: int = 3600, create: bool = True,
                           bound_pod: tuple[str, str] | None = None) -> k8s.ApiClient:
    """An ApiClient that authenticates as ServiceAccount namespace/name (TokenRequest API),
    so a test exercises the RBAC it grants rather than cluster-admin. `bound_pod`: (name, uid)
    of a pod running as that account: the token is bound to it, as a kubelet's is, and the
    apiserver names the pod in the request's user info."""
    admin = cluster.api_client()
    core = k8s.CoreV1Api(admin)
    if create:
        try:
            core.create_namespaced_service_account(namespace, k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name=name)))
        except ApiException as err:
            if err.status != 409:
                raise
    token = core.create_namespaced_service_account_token(
        name, namespace,
        k8s.AuthenticationV1TokenRequest(spec=k8s.V1TokenRequestSpec(
            audiences=[SERVICE_ACCOUNT_ISSUER], expiration_seconds=expiration_seconds,
            bound_object_ref=k8s.V1BoundObjectReference(api_version="v1", kind="Pod", name=bound_pod[0],
                                                        uid=bound_pod[1]) if bound_pod else None)),
    ).status.token
    cfg = k8s.Configuration()
    cfg.host = cluster.server
    cfg.ssl_ca_cert = str(cluster.pki.ca_cert)
    cfg.api_key = {"authorization": token}
    cfg.api_key_prefix = {"authorization": "Bearer"}
    return k8s.ApiClient(cfg)


def dry_run_create(cluster: ControlPlane, path: str, body: dict) -> str | None:
    """None when the apiserver would create body (a dry run: nothing is stored); else its error message."""
    try:
        cluster.api_client().call_api(
            path, "POST", query_params=[("dryRun", "All")], body=body, auth_settings=["BearerToken"],
            header_params={"Content-Type": "application/json", "Accept": "application/json"},
            _preload_content=False)
    except ApiException as err:
        assert err.status in (400, 422), err.body  # a refusal, not an outage
        return json.loads(err.body).get("message", err.body)
    return None


def dump(obj: Any) -> str:
    """A Kubernetes object (model or dict) as YAML, for assertion messages."""
    if hasattr(obj, "to_dict"):
        obj = k8s.ApiClient().sanitize_for_serialization(obj)
    return yaml.safe_dump(obj, sort_keys=False)


__all__ = ["ControlPlane", "service_account_client", "dump"]
