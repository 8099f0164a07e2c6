"""Kubeflow Trainer v2 (github.com/kubeflow/trainer/v2 v2.3.0) and the JobSet controller
(sigs.k8s.io/jobset v0.12.0) run out of cluster against a ControlPlane, as the Go peer of
kubetune's operator. Built by hack/peers.sh.

Both run as the admin user with leader election off, their own loopback ports (both default to
:9443 webhooks / :8081 probes / :8443 metrics), metrics off, no cert management: their webhook
servers still start (they register handlers) and get a serving pair we copy from the cluster's
PKI, but the webhooks are not registered with the apiserver. Without JobSet's defaulting webhook
nothing defaults a JobSet, so the runtime below sets what the webhook would
(../shared/notes/peers.md).

Defaults, read from the v2.3.0 / v0.12.0 sources:
- Trainer: client QPS 50, burst 100 (pkg/apis/config/v1alpha1/defaults.go); the shipped config
  (manifests/base/manager/controller_manager_config.yaml) sets groupKindConcurrency
  TrainJob 5, TrainingRuntime 1, ClusterTrainingRuntime 1. All three controllers, though, are
  built with WatchesRawSource and no For() (pkg/controller/*_controller.go), and
  controller-runtime v0.24 applies groupKindConcurrency only to a builder with a For() type,
  so each starts 1 worker whatever that setting says (seen with 5 and with 32):
  `worker_counts()` reads what each controller really started from its "Starting workers" line.
- JobSet: client QPS 500, burst 500 (api/config/v1alpha1/defaults.go); its controllers take
  controller-runtime's default of 1 worker and neither a flag nor its config can change that.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import requests
import yaml

from tests.support.controlplane import ControlPlane
from tests.support.procs import ManagedProcess, free_port, tail, wait_for
from tests.support.tools import REPO

TRAINER_GROUP, TRAINER_VERSION = "trainer.kubeflow.org", "v1alpha1"
RUNTIME_NAME = "kubetune-bench-torch"
TRAINJOB_KIND = "TrainJob"
JOBSET_GROUP, JOBSET_VERSION = "jobset.x-k8s.io", "v1alpha2"
# controller-runtime names: For(JobSet) -> "jobset"; the TrainJob builder is Named() explicitly.
JOBSET_CONTROLLER, TRAINJOB_CONTROLLER = "jobset", "trainjob_controller"


@dataclass(frozen=True)
class PeerSettings:
    trainjob_concurrency: int = 5      # shipped config (see module doc: no effect in v2.3.0)
    runtime_concurrency: int = 1       # TrainingRuntime / ClusterTrainingRuntime, shipped config
    trainer_qps: float = 50
    trainer_burst: int = 100
    jobset_qps: float = 500
    jobset_burst: int = 500

    @classmethod
    def equal_to(cls, workers: int, qps: float = 100_000) -> "PeerSettings":
        """kubetune's handler concurrency (its KUBETUNE_WORKERS) and, like kubetune's client, no
        effective client-side rate limit (a token bucket far above any rate reached here)."""
        return cls(trainjob_concurrency=workers, runtime_concurrency=workers, trainer_qps=qps,
                   trainer_burst=int(qps), jobset_qps=qps, jobset_burst=int(qps))

    def describe(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PeerBuild:
    bin_dir: Path
    crds: Path
    runtimes: Path


def peer_build() -> PeerBuild:
    """Paths from hack/peers.sh (builds on first use, several minutes; cached afterwards)."""
    def run(*flags: str) -> Path:
        done = subprocess.run(["bash", str(REPO / "hack" / "peers.sh"), *flags], check=True,
                              stdout=subprocess.PIPE, text=True)
        return Path(done.stdout.strip().splitlines()[-1])
    return PeerBuild(run(), run("--crds"), run("--runtimes"))


def cluster_training_runtime(image: str) -> dict:
    """torch-distributed cut to one replicated Job ("node") of one pod per node, with what
    JobSet's defaulting webhook would set spelled out (successPolicy, startupPolicy, network,
    completionMode, restartPolicy): no dataset/model initializer Jobs."""
    return {
        "apiVersion": f"{TRAINER_GROUP}/{TRAINER_VERSION}", "kind": "ClusterTrainingRuntime",
        "metadata": {"name": RUNTIME_NAME, "labels": {"trainer.kubeflow.org/framework": "torch"}},
        "spec": {
            "mlPolicy": {"numNodes": 1, "torch": {}},
            "template": {"spec": {
                "successPolicy": {"operator": "All"},
                "startupPolicy": {"startupPolicyOrder": "AnyOrder"},
                "network": {"enableDNSHostnames": True, "publishNotReadyAddresses": True},
                "replicatedJobs": [{
                    "name": "node", "replicas": 1,
                    "template": {
                        "metadata": {"labels": {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}},
                        "spec": {
                            "completionMode": "Indexed",
                            "template": {"spec": {
                                "restartPolicy": "OnFailure",
                                "containers": [{"name": "node", "image": image}],
                            }},
                        },
                    },
                }],
            }},
        },
    }


def trainjob(name: str, namespace: str, gpus: int, cpu: str, memory: str) -> dict:
    """One node with `gpus` nvidia.com/gpu (the KWOK nodes' resource name) and cpu/memory."""
    return {
        "apiVersion": f"{TRAINER_GROUP}/{TRAINER_VERSION}", "kind": TRAINJOB_KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "runtimeRef": {"name": RUNTIME_NAME, "apiGroup": TRAINER_GROUP, "kind": "ClusterTrainingRuntime"},
            "trainer": {
                "numNodes": 1,
                "resourcesPerNode": {
                    "requests": {"cpu": cpu, "memory": memory, "nvidia.com/gpu": gpus},
                    "limits": {"nvidia.com/gpu": gpus},
                },
            },
        },
    }


def install(cp: ControlPlane, build: PeerBuild, image: str) -> None:
    """CRDs (server-side: too large for the last-applied annotation) and the runtime."""
    cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(build.crds), timeout=120)
    names = [yaml.safe_load(p.read_text())["metadata"]["name"] for p in sorted(build.crds.glob("*.yaml"))]
    cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", *[f"crd/{n}" for n in names])
    cp.kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump(cluster_training_runtime(image)))


def _cert_dir(cp: ControlPlane, home: Path) -> Path:
    """Any serving pair will do for webhook servers the apiserver never calls."""
    certs = home / "certs"
    certs.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cp.pki.serving_cert, certs / "tls.crt")
    shutil.copyfile(cp.pki.serving_key, certs / "tls.key")
    return certs


def _jobset_config(health_port: int, webhook_port: int, certs: Path, s: PeerSettings) -> dict:
    return {
        "apiVersion": "config.jobset.x-k8s.io/v1alpha1", "kind": "Configuration",
        "leaderElection": {"leaderElect": False},
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": "0", "certDir": str(certs)},
        "webhook": {"port": webhook_port, "host": "127.0.0.1", "certDir": str(certs)},
        "internalCertManagement": {"enable": False},
        "clientConnection": {"qps": s.jobset_qps, "burst": s.jobset_burst},
    }


def _trainer_config(health_port: int, webhook_port: int, status_port: int, s: PeerSettings) -> dict:
    return {
        "apiVersion": "config.trainer.kubeflow.org/v1alpha1", "kind": "Configuration",
        "leaderElection": {"leaderElect": False},
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": "0"},
        "webhook": {"port": webhook_port, "host": "127.0.0.1"},
        "certManagement": {"enable": False},
        "controller": {"groupKindConcurrency": {
            "TrainJob.trainer.kubeflow.org": s.trainjob_concurrency,
            "TrainingRuntime.trainer.kubeflow.org": s.runtime_concurrency,
            "ClusterTrainingRuntime.trainer.kubeflow.org": s.runtime_concurrency,
        }},
        "clientConnection": {"qps": s.trainer_qps, "burst": s.trainer_burst},
        "statusServer": {"port": status_port},  # only started with the TrainJobStatus gate (off)
    }


_WORKERS = re.compile(r'Starting workers.*?"controller":\s*"([^"]+)".*?"worker count":\s*(\d+)')


def worker_counts(log_text: str) -> dict[str, int]:
    """{controller name: workers started}, from controller-runtime's "Starting workers" lines."""
    return {name: int(count) for name, count in _WORKERS.findall(log_text)}


def _synced(proc: ManagedProcess, health_port: int, controller: str) -> bool:
    proc.check_alive()
    # "Starting workers" is logged only after the controller's caches synced.
    if controller not in worker_counts(proc.log_path.read_text(errors="replace")):
        return False
    return requests.get(f"http://127.0.0.1:{health_port}/readyz", timeout=2).status_code == 200


class TrainerV2:
    """The JobSet controller and trainer-controller-manager of one ControlPlane."""

    def __init__(self, cp: ControlPlane, build: PeerBuild, settings: PeerSettings):
        self.cp, self.build, self.settings = cp, build, settings
        self.home = cp.workdir / "trainer-v2"
        self.processes: dict[str, ManagedProcess] = {}

    def start(self, timeout: float = 180) -> "TrainerV2":
        certs = _cert_dir(self.cp, self.home)
        env = {**os.environ, "KUBECONFIG": str(self.cp.kubeconfig)}
        jobset_health = free_port()
        jobset_cfg = self.home / "jobset-config.yaml"
        jobset_cfg.write_text(yaml.safe_dump(_jobset_config(jobset_health, free_port(), certs, self.settings)))
        jobset = self._start("jobset", [self.build.bin_dir / "jobset", f"--config={jobset_cfg}",
                                        "--zap-log-level=info"], env)
        trainer_health = free_port()
        trainer_cfg = self.home / "trainer-config.yaml"
        trainer_cfg.write_text(yaml.safe_dump(
            _trainer_config(trainer_health, free_port(), free_port(), self.settings)))
        # Its webhook server has no certDir setting: controller-runtime looks in
        # $TMPDIR/k8s-webhook-server/serving-certs, so TMPDIR points at a directory holding our pair.
        tmp = self.home / "tmp"
        (tmp / "k8s-webhook-server").mkdir(parents=True, exist_ok=True)
        shutil.copytree(certs, tmp / "k8s-webhook-server" / "serving-certs", dirs_exist_ok=True)
        trainer = self._start("trainer-controller-manager",
                              [self.build.bin_dir / "trainer-controller-manager", f"--config={trainer_cfg}",
                               "--zap-log-level=info"], {**env, "TMPDIR": str(tmp)})
        wait_for(lambda: _synced(jobset, jobset_health, JOBSET_CONTROLLER), timeout,
                 "the JobSet controller's caches to sync", on_timeout=jobset.describe)
        wait_for(lambda: _synced(trainer, trainer_health, TRAINJOB_CONTROLLER), timeout,
                 "the TrainJob controller's caches to sync", on_timeout=trainer.describe)
        return self

    def _start(self, name: str, argv: list, env: dict[str, str]) -> ManagedProcess:
        proc = ManagedProcess(name, argv, self.cp.log_dir, env=env).start()
        self.processes[name] = proc
        self.cp.processes[name] = proc  # log tails in cp.describe(); stopped with the cluster
        return proc

    @property
    def pids(self) -> dict[str, int]:
        """{"trainer": pid, "jobset": pid} of the live processes."""
        return {"trainer": self.processes["trainer-controller-manager"].proc.pid,
                "jobset": self.processes["jobset"].proc.pid}

    def worker_counts(self) -> dict[str, int]:
        counts = {}
        for proc in self.processes.values():
            counts.update(worker_counts(proc.log_path.read_text(errors="replace")))
        return counts

    def log_tails(self) -> str:
        return "\n".join(f"--- {name} ---\n{tail(p.log_path)}" for name, p in self.processes.items())

    def stop(self) -> None:
        for proc in self.processes.values():
            proc.stop()
