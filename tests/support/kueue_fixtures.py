"""Kueue (sigs.k8s.io/kueue, built by hack/kueue.sh) running out of cluster against the e2e cluster.

- `kueue` (session): Kueue's CRDs applied and Established, then the kueue
  manager started with the admin kubeconfig; returns a `Kueue` (its process,
  `apply()` for queue objects, `workloads_of(job)`).

Configuration (../shared/notes/peers.md): only the batch/job integration, no
leader election, no internal cert management, no metrics server, the
VisibilityOnDemand gate off. Its webhooks are not registered with the
apiserver: the Job reconciler still admits Jobs that are created suspended
with the kueue.x-k8s.io/queue-name label, which is how the operator creates
queued trainer Jobs. Kueue reads its metrics certificate from the fixed path
/etc/kueue/metrics/certs at start even with metrics off; rather than writing
into the machine's /etc, it runs in a private mount namespace whose /etc is an
overlay (tmpfs upper layer) that holds only that file pair.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml
from kubernetes import client as k8s

from .controlplane import ControlPlane
from .procs import ManagedProcess, free_port, wait_for
from .tools import REPO

KUEUE_ENV = "KUBETUNE_KUEUE"  # exported by hack/test.sh (path of the built binary)
GROUP, VERSION = "kueue.x-k8s.io", "v1beta2"
# Overlay /etc in a private mount namespace, put the metrics certificate where Kueue looks, exec Kueue.
_LAUNCH = """set -eu
overlay="$1"; certs="$2"; shift 2
mount -t tmpfs -o size=1m kueue-etc "$overlay"
mkdir -p "$overlay/upper/kueue/metrics/certs" "$overlay/work"
cp "$certs/tls.crt" "$certs/tls.key" "$overlay/upper/kueue/metrics/certs/"
mount -t overlay kueue-etc -o "lowerdir=/etc,upperdir=$overlay/upper,workdir=$overlay/work" /etc
exec "$@"
"""


def kueue_binary() -> Path:
    """The kueue binary: $KUBETUNE_KUEUE, else whatever hack/kueue.sh builds or finds in the cache."""
    path = os.environ.get(KUEUE_ENV)
    if not path:
        done = subprocess.run(["bash", str(REPO / "hack" / "kueue.sh")], stdout=subprocess.PIPE, text=True,
                              check=True)
        path = done.stdout.strip().splitlines()[-1]
    binary = Path(path)
    if not os.access(binary, os.X_OK):
        raise FileNotFoundError(f"{KUEUE_ENV}={binary}: not an executable kueue binary")
    return binary


def kueue_crds_dir(binary: Path) -> Path:
    """hack/kueue.sh keeps the CRDs of the same module version next to the binary's bin/."""
    crds = binary.parent.parent / "crds"
    if not any(crds.glob("*.yaml")):
        raise FileNotFoundError(f"no Kueue CRDs in {crds} (hack/kueue.sh puts them next to bin/)")
    return crds


def kueue_config(webhook_port: int, health_port: int, cert_dir: Path) -> dict:
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2", "kind": "Configuration",
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(cert_dir)},
        "metrics": {"bindAddress": "0"},
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "integrations": {"frameworks": ["batch/job"]},
        "featureGates": {"VisibilityOnDemand": False},
    }


@dataclass
class Kueue:
    cluster: ControlPlane
    process: ManagedProcess
    health_port: int

    @property
    def custom(self) -> k8s.CustomObjectsApi:
        return k8s.CustomObjectsApi(self.cluster.api_client())

    def apply(self, *objects: dict) -> None:
        """Server-side apply of Kueue objects (ResourceFlavor, ClusterQueue, LocalQueue, ...)."""
        self.cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                             input=yaml.safe_dump_all(list(objects)))

    def workloads_of(self, namespace: str, job_uid: str) -> list[dict]:
        """The Workloads Kueue made for one Job (labelled with the Job's uid)."""
        return self.custom.list_namespaced_custom_object(
            GROUP, VERSION, namespace, "workloads", label_selector=f"kueue.x-k8s.io/job-uid={job_uid}")["items"]


def _ready(proc: ManagedProcess, port: int) -> bool:
    proc.check_alive()
    try:
        return requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
    except requests.ConnectionError:
        return False


@pytest.fixture(scope="session")
def kueue(e2e_cluster: ControlPlane) -> Iterator[Kueue]:
    cp = e2e_cluster
    binary = kueue_binary()
    crds = kueue_crds_dir(binary)
    # Server-side: the Workload CRD is too large for client-side apply's annotation.
    cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crds), timeout=120)
    names = [yaml.safe_load(p.read_text())["metadata"]["name"] for p in sorted(crds.glob("*.yaml"))]
    cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", *[f"crd/{n}" for n in names])
    if "kube-controller-manager" in cp.processes:
        cp.restart_controller_manager()  # the garbage collector learns Workload (owned by Jobs) from discovery

    home = cp.workdir / "kueue"
    cert_dir, overlay = home / "certs", home / "etc-overlay"
    cert_dir.mkdir(parents=True, exist_ok=True)
    overlay.mkdir(exist_ok=True)
    # Any serving pair will do for its (unregistered) webhook server and its (disabled) metrics server.
    shutil.copyfile(cp.pki.serving_cert, cert_dir / "tls.crt")
    shutil.copyfile(cp.pki.serving_key, cert_dir / "tls.key")
    health_port = free_port()
    config = home / "config.yaml"
    config.write_text(yaml.safe_dump(kueue_config(free_port(), health_port, cert_dir)))
    proc = ManagedProcess(
        "kueue",
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", _LAUNCH, "kueue-launch",
         str(overlay), str(cert_dir), str(binary), f"--config={config}", "--zap-log-level=2"],
        cp.log_dir, env={**os.environ, "KUBECONFIG": str(cp.kubeconfig)},
    ).start()
    cp.processes["kueue"] = proc  # log tail shown when a test fails; stopped with the cluster
    wait_for(lambda: _ready(proc, health_port), 120, "Kueue's /readyz", on_timeout=proc.describe)
    yield Kueue(cp, proc, health_port)
    proc.stop()
