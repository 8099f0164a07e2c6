"""pytest fixtures for the real control plane (a plugin loaded by tests/conftest.py).

- `kube_api` (session): etcd + kube-apiserver; integration tests use it.
- `e2e_cluster` (session): the same cluster plus kube-controller-manager,
  kube-scheduler and KWOK with fake nodes: 2 GPU nodes (8 x nvidia.com/gpu) and
  1 CPU-only node. Both fixtures return a `ControlPlane` (kubeconfig, api_client(), kubectl(), create_namespace();
  `e2e_cluster.nodes` names the fake nodes).
- `kubetune_crds` (session): crds/ applied to `kube_api` and Established.
- `gateway_api_crds` (session): the Gateway API standard CRDs (HTTPRoute, ...) likewise.
- `service_account_client(cluster, namespace, name)`: an ApiClient acting as a
  ServiceAccount, via TokenRequest.

When a test that uses the cluster fails, the components' log tails are attached
to its report. Set KUBETUNE_KEEP_CLUSTER_LOGS=1 to keep the log directory.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client as k8s

from . import kwok
from .controlplane import ControlPlane, service_account_client
from .procs import ManagedProcess, wait_for
from .tools import REPO, assets_dir

__all__ = ["service_account_client"]

GPU_NODES = ("kwok-gpu-0", "kwok-gpu-1")
CPU_NODES = ("kwok-cpu-0",)


@pytest.fixture(scope="session")
def kube_api() -> Iterator[ControlPlane]:
    assets = assets_dir()
    workdir = Path(tempfile.mkdtemp(prefix="kubetune-cluster-"))
    cp = ControlPlane(assets, workdir)
    atexit.register(cp.stop)  # also when pytest is interrupted between fixture setup and teardown
    t0 = time.monotonic()
    try:
        cp.start()
    except BaseException:
        print(cp.describe())
        cp.stop()
        raise
    print(f"\n[kube_api] etcd + kube-apiserver ready in {time.monotonic() - t0:.1f}s ({workdir})")
    yield cp
    cp.stop()
    if not os.environ.get("KUBETUNE_KEEP_CLUSTER_LOGS"):
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def e2e_cluster(kube_api: ControlPlane) -> ControlPlane:
    cp = kube_api
    t0 = time.monotonic()
    try:
        cp.start_controllers()
        _start_kwok(cp)
    except BaseException:
        print(cp.describe())
        raise
    print(f"\n[e2e_cluster] controllers + kwok + {len(GPU_NODES) + len(CPU_NODES)} nodes ready in "
          f"{time.monotonic() - t0:.1f}s")
    return cp  # kube_api's teardown stops every process


@pytest.fixture(scope="session")
def kubetune_crds(kube_api: ControlPlane) -> list[str]:
    """Apply the generated crds/ and wait until they are Established; returns the CRD names."""
    crd_dir = REPO / "crds"
    # Server-side apply: the CRDs are too large for client-side apply's last-applied annotation.
    kube_api.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd_dir))
    names = [yaml.safe_load(p.read_text())["metadata"]["name"] for p in sorted(crd_dir.glob("*.yaml"))]
    kube_api.kubectl("wait", "--for=condition=Established", "--timeout=60s", *[f"crd/{n}" for n in names])
    if "kube-controller-manager" in kube_api.processes:
        # Its garbage collector learns owner kinds from discovery and refreshes only
        # every 30 s; until then objects owned by a FineTuneJob are never collected.
        kube_api.restart_controller_manager()
    return names


@pytest.fixture(scope="session")
def gateway_api_crds(kube_api: ControlPlane) -> list[str]:
    """The Gateway API standard CRDs (pinned Go module, hack/gateway-api-crds.sh) applied and Established."""
    crd_dir = Path(subprocess.run(["bash", str(REPO / "hack" / "gateway-api-crds.sh")], check=True,
                                  capture_output=True, text=True).stdout.strip())
    kube_api.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd_dir))
    names = [yaml.safe_load(p.read_text())["metadata"]["name"] for p in sorted(crd_dir.glob("*.yaml"))]
    kube_api.kubectl("wait", "--for=condition=Established", "--timeout=60s", *[f"crd/{n}" for n in names])
    if "kube-controller-manager" in kube_api.processes:
        kube_api.restart_controller_manager()  # see kubetune_crds: GC learns new kinds from discovery
    return names


def _start_kwok(cp: ControlPlane) -> None:
    config = cp.workdir / "kwok-stages.yaml"
    config.write_text(kwok.STAGES)
    proc = ManagedProcess("kwok", kwok.kwok_argv(str(cp.assets / "kwok"), str(cp.kubeconfig), str(config)),
                          cp.log_dir).start()
    cp.processes["kwok"] = proc
    core = k8s.CoreV1Api(cp.api_client())
    for name in GPU_NODES:
        # Sized like an 8-GPU cloud instance.
        core.create_node(kwok.fake_node(name, cpu="96", memory="1024Gi", gpus=8,
                                        labels={"node.kubernetes.io/instance-type": "fake-8xgpu"}))
    for name in CPU_NODES:
        core.create_node(kwok.fake_node(name, cpu="16", memory="64Gi",
                                        labels={"node.kubernetes.io/instance-type": "fake-cpu"}))
    names = set(GPU_NODES + CPU_NODES)

    def all_ready() -> bool:
        proc.check_alive()
        ready = {
            n.metadata.name for n in core.list_node().items
            if any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or [])
            # The node-lifecycle controller lifts the not-ready taint once it saw Ready.
            and not any(t.key.startswith("node.kubernetes.io/") for t in n.spec.taints or [])
        }
        return names <= ready

    wait_for(all_ready, 60, "KWOK nodes Ready and untainted", on_timeout=cp.describe)
    cp.nodes = {"gpu": list(GPU_NODES), "cpu": list(CPU_NODES)}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    report = yield
    if report.failed and isinstance(getattr(item, "funcargs", None), dict):
        for name in ("e2e_cluster", "kube_api"):
            cp = item.funcargs.get(name)
            if isinstance(cp, ControlPlane):
                report.sections.append(("control plane logs", cp.describe()))
                break
    return report
