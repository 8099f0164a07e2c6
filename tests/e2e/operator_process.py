"""Runs `kubetune operator` as a subprocess acting as its own ServiceAccount.

The ServiceAccount, ClusterRole and binding are rendered from the Helm chart
(`helm template`: exactly what a platform team installs), and the kubeconfig carries a TokenRequest token: the operator
under test has exactly the production privileges, never cluster-admin.
Shared by the e2e tests and benchmarks/operator_scale.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import requests
import yaml

from tests.support.controlplane import ControlPlane, service_account_client
from tests.support.procs import ManagedProcess, free_port, wait_for

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "kubetune"
RELEASE = "kubetune"  # the chart names its objects "<release>-operator"
NAMESPACE = "kubetune-system"
SERVICE_ACCOUNT = "kubetune-operator"


def render_operator_rbac(release: str = RELEASE, namespaces: list[str] | None = None) -> str:
    """The chart's ServiceAccount and RBAC: cluster-wide, or (namespaces given) the namespace-scoped
    install's Role and RoleBinding in each of them and no ClusterRole."""
    if namespaces:
        scope = ["--set", "watchAllNamespaces=false", "--set", f"watchNamespaces={{{','.join(namespaces)}}}",
                 "--show-only", "templates/role.yaml"]
    else:
        scope = ["--show-only", "templates/clusterrole.yaml", "--show-only", "templates/clusterrolebinding.yaml"]
    return subprocess.run(
        ["helm", "template", release, str(CHART), "--namespace", NAMESPACE,
         "--show-only", "templates/serviceaccount.yaml", *scope],
        check=True, capture_output=True, text=True,
    ).stdout


class InstalledPolicy:
    """Chart objects applied for one test; remove() deletes them again."""

    def __init__(self, cluster: ControlPlane, manifest: Path):
        self.cluster, self.manifest = cluster, manifest

    def remove(self) -> None:
        self.cluster.kubectl("delete", "-f", str(self.manifest), "--ignore-not-found", "--wait=false")


def install_status_policy(cluster: ControlPlane, namespace: str) -> InstalledPolicy:
    """The chart's status-ownership policies for this release's operator, bound to one namespace
    (labelled for it), so other tests sharing the cluster are unaffected."""
    label = "kubetune-status-policy"
    cluster.kubectl("label", "namespace", namespace, f"{label}={namespace}", "--overwrite")
    rendered = subprocess.run(
        ["helm", "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
         "--set", f"admissionPolicies.namespaceSelector.matchLabels.{label}={namespace}",
         "--show-only", "templates/policy-status.yaml"],
        check=True, capture_output=True, text=True,
    ).stdout
    manifest = cluster.workdir / f"status-policy-{namespace}.yaml"
    manifest.write_text(rendered)
    cluster.kubectl("apply", "-f", str(manifest))
    return InstalledPolicy(cluster, manifest)


def install_operator_rbac(cluster: ControlPlane, release: str = RELEASE, namespaces: list[str] | None = None) -> None:
    if cluster.kubectl("get", "namespace", NAMESPACE, check=False).returncode != 0:
        cluster.create_namespace(NAMESPACE)
    rendered = render_operator_rbac(release, namespaces)
    manifest = cluster.workdir / f"operator-rbac-{release}.yaml"
    manifest.write_text(rendered)
    cluster.kubectl("apply", "-f", str(manifest))


def operator_kubeconfig(cluster: ControlPlane, path: Path, service_account: str = SERVICE_ACCOUNT) -> Path:
    api = service_account_client(cluster, NAMESPACE, service_account, expiration_seconds=4 * 3600, create=False)
    token = api.configuration.api_key["authorization"]
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "operator",
        "clusters": [{"name": "test", "cluster": {"server": cluster.server,
                                                  "certificate-authority": str(cluster.pki.ca_cert)}}],
        "users": [{"name": SERVICE_ACCOUNT, "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "test", "user": SERVICE_ACCOUNT}}],
    }))
    path.chmod(0o600)
    return path


class OperatorProcess:
    """`release` names the chart's objects ("<release>-operator"); `namespaces`: a namespace-scoped
    install watching only those; `install_rbac=False`: the caller applied the RBAC itself."""

    def __init__(self, cluster: ControlPlane, env: dict[str, str] | None = None, release: str = RELEASE,
                 namespaces: list[str] | None = None, install_rbac: bool = True):
        if install_rbac:
            install_operator_rbac(cluster, release, namespaces)
        self.cluster = cluster
        self.metrics_port = free_port()
        self.liveness_port = free_port()
        kubeconfig = operator_kubeconfig(cluster, cluster.workdir / f"operator-{release}.kubeconfig",
                                         f"{release}-operator")
        scope = [f"--namespace={ns}" for ns in namespaces] if namespaces else ["--all-namespaces"]
        full_env = {**os.environ, "KUBECONFIG": str(kubeconfig), **(env or {})}
        full_env.pop("KUBERNETES_SERVICE_HOST", None)  # use the kubeconfig even inside a pod
        self.process = ManagedProcess(
            "kubetune-operator" if release == RELEASE else f"kubetune-operator-{release}",
            [sys.executable, "-m", "kubetune.cli", "operator", *scope,
             f"--metrics-port={self.metrics_port}", f"--liveness-port={self.liveness_port}"],
            cluster.log_dir, env=full_env,
        )
        cluster.processes[self.process.name] = self.process  # logs shown on failure, stopped at teardown

    def start(self) -> "OperatorProcess":
        self.process.start()

        def alive() -> bool:
            self.process.check_alive()
            return requests.get(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=2).status_code == 200

        wait_for(alive, 60, "the operator's /healthz", on_timeout=self.process.describe)
        return self

    def stop(self) -> None:
        self.process.stop()

    @property
    def pid(self) -> int:
        return self.process.proc.pid

    def metrics(self) -> str:
        return requests.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
