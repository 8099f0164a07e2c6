"""The operators benchmarks/operator_peer.py compares, behind one small interface: how to start
one against a fresh ControlPlane, the resource it is given, and how its Jobs trace back (by
controller ownerReference) to the resource that caused them."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from benchmarks.operator_scale import finetunejob, reconcile_summary
from benchmarks.peers import report, trainer_v2
from benchmarks.peers.trainer_v2 import PeerBuild, PeerSettings
from kubetune.api import GROUP, VERSION
from tests.e2e.operator_process import OperatorProcess
from tests.support.controlplane import ControlPlane
from tests.support.tools import REPO

IMAGE = "kubetune-trainer:bench"  # never pulled: KWOK plays kubelet
# name -> (first seen, controller owner (kind, name)), as benchmarks.peers.watch.FirstSeen records them
Seen = Mapping[str, tuple[float, tuple[str, str] | None]]


def _owned_by(seen: Seen, kind: str) -> dict[str, str]:
    return {name: owner[1] for name, (_, owner) in seen.items() if owner and owner[0] == kind}


class Subject:
    name: str
    group: str
    version: str
    plural: str
    parent_kind: str  # the created resource's kind, as its children's ownerReferences name it
    # Path of the child collection to watch in a namespace; None: the children are the Jobs.
    child_path: Callable[[str], str] | None = None

    def __init__(self, build: PeerBuild | None, peer_settings: PeerSettings):
        self.build, self.peer_settings = build, peer_settings

    def body(self, name: str, namespace: str) -> dict:
        raise NotImplementedError

    def start(self, cp: ControlPlane) -> None:
        raise NotImplementedError

    def pids(self) -> dict[str, int]:
        raise NotImplementedError

    def job_parent(self, jobs: Seen, children: Seen) -> dict[str, str]:
        """Job name -> name of the created resource it belongs to."""
        raise NotImplementedError

    def details(self) -> dict:
        return {}

    def stop(self) -> None:
        raise NotImplementedError


class Kubetune(Subject):
    name, group, version, plural, parent_kind = report.KUBETUNE, GROUP, VERSION, "finetunejobs", "FineTuneJob"

    def body(self, name: str, namespace: str) -> dict:
        body = finetunejob(name, None)
        body["metadata"]["namespace"] = namespace
        return body

    def start(self, cp: ControlPlane) -> None:
        crds = REPO / "crds"
        cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crds))
        cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/finetunejobs.kubetune.io")
        # Its own ServiceAccount and the chart's RBAC, like benchmarks/operator_scale.py; own worker default.
        self.op = OperatorProcess(cp, env={"KUBETUNE_TRAINER_IMAGE": IMAGE}).start()

    def pids(self) -> dict[str, int]:
        return {"kubetune": self.op.pid}

    def job_parent(self, jobs: Seen, children: Seen) -> dict[str, str]:
        return _owned_by(jobs, self.parent_kind)

    def details(self) -> dict:
        return {"reconciles": reconcile_summary(self.op.metrics())}

    def stop(self) -> None:
        if getattr(self, "op", None):
            self.op.stop()


class TrainerV2(Subject):
    name, group, version, plural = report.TRAINER_V2, trainer_v2.TRAINER_GROUP, trainer_v2.TRAINER_VERSION, "trainjobs"
    parent_kind = trainer_v2.TRAINJOB_KIND

    @staticmethod
    def child_path(namespace: str) -> str:
        return f"/apis/{trainer_v2.JOBSET_GROUP}/{trainer_v2.JOBSET_VERSION}/namespaces/{namespace}/jobsets"

    def body(self, name: str, namespace: str) -> dict:
        # The same request as the FineTuneJob's (operator_scale.finetunejob): 1 node, 1 GPU, cpu, memory.
        res = finetunejob(name, None)["spec"]["resources"]
        return trainer_v2.trainjob(name, namespace, res["gpusPerNode"], res["cpu"], res["memory"])

    def start(self, cp: ControlPlane) -> None:
        if self.build is None:
            raise ValueError("trainer-v2 needs the hack/peers.sh build")
        trainer_v2.install(cp, self.build, IMAGE)
        self.peer = trainer_v2.TrainerV2(cp, self.build, self.peer_settings).start()

    def pids(self) -> dict[str, int]:
        return self.peer.pids

    def job_parent(self, jobs: Seen, children: Seen) -> dict[str, str]:
        jobset_parent = _owned_by(children, self.parent_kind)
        return {job: jobset_parent[js] for job, js in _owned_by(jobs, "JobSet").items() if js in jobset_parent}

    def details(self) -> dict:
        return {"settings": self.peer_settings.describe(), "workers_started": self.peer.worker_counts()}

    def stop(self) -> None:
        if getattr(self, "peer", None):
            self.peer.stop()


SUBJECTS: dict[str, type[Subject]] = {report.KUBETUNE: Kubetune, report.TRAINER_V2: TrainerV2}
