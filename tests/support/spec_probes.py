"""Single field values, each with the verdict every validator must give it.

The same table is checked against pydantic (tests/unit/test_spec_parity.py) and
against the real apiserver (tests/integration/test_crds.py): the FineTuneJob CRD
must give the same verdict; for a valid value the Job the operator builds from it
must be accepted; for an invalid one, the value put where it lands in the Job
must be refused by the Job API too (so the CRD rejects at apply exactly what the
Job API would reject later). `stricter` marks values the CRD refuses on purpose
although the Job API takes them, with the reason.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

BASE_SPEC: dict[str, Any] = {
    "baseModel": {"uri": "s3://models/tiny"},
    "dataset": {"train": "s3://data/train.jsonl"},
    "storage": {"uri": "s3://runs/probe"},
    "resources": {"gpusPerNode": 1},
}


@dataclass(frozen=True)
class Probe:
    id: str
    field: str                       # the spec path the rejection names
    value: Any
    valid: bool
    stricter: str | None = None      # why the CRD refuses what the Job API accepts

    def spec(self) -> dict:
        spec = copy.deepcopy(BASE_SPEC)
        node = spec
        *parents, leaf = self.field.removeprefix("spec.").split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = self.value
        return spec


def _container(job: dict) -> dict:
    return job["spec"]["template"]["spec"]["containers"][0]


def _set_resource(name: str) -> Callable[[dict, Any], None]:
    def apply(job: dict, value: Any) -> None:
        res = _container(job)["resources"]
        res["requests"][name] = value
        res["limits"][name] = value
    return apply


def _set_shm(job: dict, value: Any) -> None:
    for vol in job["spec"]["template"]["spec"]["volumes"]:
        if vol["name"] == "dshm":
            vol["emptyDir"]["sizeLimit"] = value


def _set_gpu_name(job: dict, value: Any) -> None:
    res = _container(job)["resources"]
    for section in ("requests", "limits"):
        res[section].pop("nvidia.com/gpu")
        res[section][value] = "1"


def _set_pod(key: str) -> Callable[[dict, Any], None]:
    def apply(job: dict, value: Any) -> None:
        job["spec"]["template"]["spec"][key] = value
    return apply


def _set_queue(job: dict, value: Any) -> None:
    job["metadata"].setdefault("labels", {})["kueue.x-k8s.io/queue-name"] = value


def _set_image(job: dict, value: Any) -> None:
    _container(job)["image"] = value


def _set_job_spec(key: str) -> Callable[[dict, Any], None]:
    def apply(job: dict, value: Any) -> None:
        job["spec"][key] = value
    return apply


# Where each probed spec field lands in the trainer Job (None: nowhere the Job API checks).
JOB_FIELD: dict[str, Callable[[dict, Any], None] | None] = {
    "spec.resources.cpu": _set_resource("cpu"),
    "spec.resources.memory": _set_resource("memory"),
    "spec.resources.shmSize": _set_shm,
    "spec.resources.gpuResourceName": _set_gpu_name,
    "spec.resources.nodeSelector": _set_pod("nodeSelector"),
    "spec.resources.tolerations": _set_pod("tolerations"),
    "spec.resources.priorityClassName": _set_pod("priorityClassName"),
    "spec.queueName": _set_queue,
    "spec.images.trainer": _set_image,
    "spec.suspend": _set_job_spec("suspend"),
    "spec.backoffLimit": _set_job_spec("backoffLimit"),
    "spec.lora.r": None,
    "spec.lora.dropout": None,
}

_QUANTITY_SPACE = "the Job API trims spaces around a quantity; the CRD keeps values as written, so none are allowed"
_QUANTITY_FLOAT = "like Kubernetes' own quantity schema (int-or-string): write 4.5 as \"4.5\""
_QUANTITY_NO_NUMBER = "the Job API reads a bare suffix as 0; that is a typo, not a request for nothing"
_QUEUE_STRICT = "a Kueue LocalQueue is named like an object (lowercase DNS subdomain), so no queue can have this name"
_IMAGE_STRICT = "pod validation refuses whitespace in an image only after the Job exists: no pod would ever be created"
_GPU_STRICT = "device plugins may not advertise kubernetes.io/ resources: no node ever has this GPU"

PROBES: tuple[Probe, ...] = (
    # Quantities: the resource.ParseQuantity grammar, non-negative, int-or-string.
    *(Probe(f"cpu-{i}", "spec.resources.cpu", v, ok) for i, (v, ok) in enumerate([
        ("4", True), ("500m", True), ("1.5", True), (".5", True), ("5.", True), ("1e3", True), ("1E-2", True),
        ("+1", True), ("1u", True), ("4k", True), (4, True),
        ("..", False), ("4KiMi", False), ("1e3.5", False), ("-1", False), ("4K", False), ("1ki", False),
        ("0x10", False), ("", False), (True, False),
    ])),
    Probe("cpu-leading-space", "spec.resources.cpu", " 4", False, stricter=_QUANTITY_SPACE),
    Probe("cpu-float", "spec.resources.cpu", 4.5, False, stricter=_QUANTITY_FLOAT),
    *(Probe(f"memory-{i}", "spec.resources.memory", v, ok) for i, (v, ok) in enumerate([
        ("32Gi", True), ("1Ei", True), ("1.5Gi", True), (1024, True), ("32GB", False), ("32 Gi", False),
    ])),
    Probe("memory-bare-suffix", "spec.resources.memory", "Gi", False, stricter=_QUANTITY_NO_NUMBER),
    *(Probe(f"shm-{i}", "spec.resources.shmSize", v, ok) for i, (v, ok) in enumerate([
        ("8Gi", True), ("-1Gi", False), ("1..5Gi", False),
    ])),
    # The queue name is a label value on the Job.
    Probe("queue-63", "spec.queueName", "q" * 63, True),
    Probe("queue-dots", "spec.queueName", "team-a.gpu", True),
    Probe("queue-64", "spec.queueName", "q" * 64, False),
    Probe("queue-70", "spec.queueName", "q" * 70, False),
    Probe("queue-leading-dash", "spec.queueName", "-a", False),
    Probe("queue-slash", "spec.queueName", "a/b", False),
    Probe("queue-upper", "spec.queueName", "Q_x.y", False, stricter=_QUEUE_STRICT),
    Probe("queue-empty", "spec.queueName", "", False, stricter=_QUEUE_STRICT),
    # The GPU is an extended resource.
    Probe("gpu-nvidia", "spec.resources.gpuResourceName", "nvidia.com/gpu", True),
    Probe("gpu-mixed-case-name", "spec.resources.gpuResourceName", "example.com/GPU_x", True),
    Probe("gpu-no-domain", "spec.resources.gpuResourceName", "gpu", False),
    Probe("gpu-upper-domain", "spec.resources.gpuResourceName", "NVIDIA.com/gpu", False),
    Probe("gpu-requests-prefix", "spec.resources.gpuResourceName", "requests.nvidia.com/gpu", False),
    Probe("gpu-two-slashes", "spec.resources.gpuResourceName", "a/b/c", False),
    Probe("gpu-name-64", "spec.resources.gpuResourceName", "x.io/" + "a" * 64, False),
    Probe("gpu-kubernetes-io", "spec.resources.gpuResourceName", "kubernetes.io/gpu", False, stricter=_GPU_STRICT),
    Probe("gpu-sub-kubernetes-io", "spec.resources.gpuResourceName", "gpu.kubernetes.io/a", False, stricter=_GPU_STRICT),
    # Tolerations and the node selector follow pod validation.
    Probe("toleration-exists-any", "spec.resources.tolerations", [{"operator": "Exists"}], True),
    Probe("toleration-full", "spec.resources.tolerations",
          [{"key": "example.com/gpu", "value": "a100", "effect": "NoExecute", "tolerationSeconds": 30}], True),
    Probe("toleration-no-key-equal", "spec.resources.tolerations", [{"effect": "NoSchedule"}], False),
    Probe("toleration-exists-value", "spec.resources.tolerations", [{"key": "k", "operator": "Exists", "value": "v"}], False),
    Probe("toleration-seconds-no-effect", "spec.resources.tolerations", [{"key": "k", "tolerationSeconds": 5}], False),
    Probe("toleration-bad-key", "spec.resources.tolerations", [{"key": "bad key"}], False),
    Probe("toleration-bad-value", "spec.resources.tolerations", [{"key": "k", "value": "bad value!"}], False),
    Probe("selector-ok", "spec.resources.nodeSelector", {"example.com/gpu-type": "a100", "zone": ""}, True),
    Probe("selector-bad-key", "spec.resources.nodeSelector", {"bad key": "v"}, False),
    Probe("selector-long-name", "spec.resources.nodeSelector", {"k" * 64: "v"}, False),
    Probe("selector-bad-value", "spec.resources.nodeSelector", {"k": "bad value!"}, False),
    Probe("selector-long-value", "spec.resources.nodeSelector", {"k": "v" * 64}, False),
    Probe("selector-not-string", "spec.resources.nodeSelector", {"k": 1}, False),
    Probe("priority-ok", "spec.resources.priorityClassName", "high.priority", True),
    Probe("priority-upper", "spec.resources.priorityClassName", "High", False),
    Probe("priority-long", "spec.resources.priorityClassName", "x" * 254, False),
    Probe("image-ok", "spec.images.trainer", "registry.example.com:5000/team/trainer@sha256:" + "a" * 64, True),
    Probe("image-empty", "spec.images.trainer", "", False),
    Probe("image-leading-space", "spec.images.trainer", " trainer:1", False, stricter=_IMAGE_STRICT),
    Probe("image-inner-space", "spec.images.trainer", "trainer :1", False, stricter=_IMAGE_STRICT),
    # JSON types: no coercion of strings to booleans or numbers.
    Probe("suspend-true", "spec.suspend", True, True),
    Probe("suspend-yes", "spec.suspend", "yes", False),
    Probe("suspend-true-string", "spec.suspend", "true", False),
    Probe("suspend-one", "spec.suspend", 1, False),
    Probe("backoff-int", "spec.backoffLimit", 3, True),
    Probe("backoff-string", "spec.backoffLimit", "3", False),
    Probe("backoff-bool", "spec.backoffLimit", True, False),
    Probe("backoff-whole-float", "spec.backoffLimit", 3.0, True),  # the apiserver's integer takes it too
    Probe("lora-r-fraction", "spec.lora.r", 3.5, False),
    Probe("lora-r-string", "spec.lora.r", "8", False),
    Probe("dropout-int", "spec.lora.dropout", 0, True),
    Probe("dropout-string", "spec.lora.dropout", "0.1", False),
    Probe("dropout-bool", "spec.lora.dropout", True, False),
)
