"""One revision's vLLM Deployment (apps/v1): pull the weights, serve them, drain on the way out.

The pod runs `vllm serve` (the vllm/vllm-openai image's own ENTRYPOINT, spelled out as
`command` so a custom image with another entrypoint behaves the same). s3:// sources are
copied into an emptyDir by init containers first (`kubetune pull-model`, in the trainer
image); hf:// sources are downloaded by vLLM itself into HF_HOME.
"""

from __future__ import annotations

import math
import re

from kubetune.api.modeldeployment import VLLM_LORA_RANKS, ModelDeploymentSpec
from kubetune.settings import OperatorSettings

from ..common import Owner, aws_credentials_env, restricted_container_security, restricted_pod_security
from .names import deployment_name, selector_labels, serving_labels
from .revision import ServedRevision

CONTAINER = "vllm"
MODELS = "/models"
ADAPTER_DIR, BASE_DIR, WEIGHTS_DIR = f"{MODELS}/adapter", f"{MODELS}/base", f"{MODELS}/weights"
SCRATCH = "/scratch"
PRESTOP_SLEEP_SECONDS = 5
# The first vLLM release whose `vllm serve` documents --shutdown-timeout (docs.vllm.ai v0.18.0;
# v0.12.0 and the default image v0.11.0 lack it, and vLLM exits on an unknown flag).
SHUTDOWN_TIMEOUT_SINCE = (0, 18, 0)


# -- vLLM's command line ---------------------------------------------------------------------------

def max_lora_rank(rank: int) -> int:
    """The smallest --max-lora-rank vLLM accepts that holds an adapter of this rank."""
    for allowed in VLLM_LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise ValueError(f"LoRA rank {rank} is above vLLM's largest --max-lora-rank ({VLLM_LORA_RANKS[-1]})")


def supports_shutdown_timeout(image: str) -> bool:
    """Whether the image's tag names a vLLM release with --shutdown-timeout (unknown tags: no)."""
    tag = image.split("@", 1)[0].rsplit("/", 1)[-1].partition(":")[2]
    m = re.match(r"^v?(\d+)\.(\d+)\.(\d+)", tag)
    return m is not None and tuple(map(int, m.groups())) >= SHUTDOWN_TIMEOUT_SINCE


def served_model_name(spec: ModelDeploymentSpec, name: str) -> str:
    """The name clients ask for: spec.serving.servedModelName, else the ModelDeployment's name."""
    return spec.serving.served_model_name or name


def _location(uri: str | None, pulled_to: str) -> str:
    """Where vLLM finds a source: the init container's copy of s3://, or the hub id of hf://."""
    if uri is not None and uri.startswith("s3://"):
        return pulled_to
    if uri is not None and uri.startswith("hf://"):
        return uri.removeprefix("hf://")
    raise ValueError(f"vLLM cannot load {uri!r} (serving_problems explains why)")


def pulls(rev: ServedRevision) -> list[tuple[str, str]]:
    """(s3 URI, local directory) for every source an init container copies into /models."""
    if rev.mode == "adapter":
        wanted = [(rev.model_uri, ADAPTER_DIR), (rev.base_model_uri, BASE_DIR)]
    else:
        wanted = [(rev.model_uri, WEIGHTS_DIR)]
    return [(uri, dest) for uri, dest in wanted if uri is not None and uri.startswith("s3://")]


def vllm_args(spec: ModelDeploymentSpec, rev: ServedRevision, owner: Owner) -> list[str]:
    """Arguments after `vllm serve`: the model first, then flags; spec.serving.extraArgs last."""
    s = spec.serving
    name = served_model_name(spec, owner.name)
    if rev.mode == "adapter":
        if rev.lora_rank is None:
            raise ValueError("adapter mode needs the adapter's rank (serving_problems explains why)")
        # Clients ask for `name` (the adapter); the bare base stays reachable as "<name>-base".
        args = [_location(rev.base_model_uri, BASE_DIR), "--served-model-name", f"{name}-base",
                "--enable-lora", "--lora-modules", f"{name}={_location(rev.model_uri, ADAPTER_DIR)}",
                "--max-loras", "1", "--max-lora-rank", str(max_lora_rank(rev.lora_rank))]
    else:
        args = [_location(rev.model_uri, WEIGHTS_DIR), "--served-model-name", name]
    args += ["--host", "0.0.0.0", "--port", str(s.port)]
    if s.max_model_len is not None:
        args += ["--max-model-len", str(s.max_model_len)]
    args += ["--gpu-memory-utilization", str(s.gpu_memory_utilization),
             "--tensor-parallel-size", str(s.tensor_parallel_size)]
    if supports_shutdown_timeout(s.image):
        args += ["--shutdown-timeout", str(s.shutdown_timeout_seconds)]
    return args + list(s.extra_args)


# -- the pod ---------------------------------------------------------------------------------------

def storage_env(rev: ServedRevision) -> list[dict]:
    """S3 access for the pullers: credentials only as secretKeyRef (the operator never reads them)."""
    st, env = rev.storage, []
    if st is None:
        return env  # the pod's ambient identity (e.g. workload identity), if any
    if st.credentials_secret is not None:
        secret = st.credentials_secret.name
        env += aws_credentials_env(secret)
    if st.endpoint:
        env.append({"name": "AWS_ENDPOINT_URL", "value": st.endpoint})
    if st.region:
        env.append({"name": "AWS_REGION", "value": st.region})
    return env


def _resources(spec: ModelDeploymentSpec, gpus: bool) -> dict:
    s = spec.serving
    # requests == limits (init containers too): Guaranteed QoS, evicted last.
    amounts = {"cpu": s.cpu, "memory": s.memory}
    if gpus and s.gpus > 0:
        amounts[s.gpu_resource_name] = str(s.gpus)
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _http_probe(path: str, period: int, failures: int) -> dict:
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period,
            "timeoutSeconds": 5, "failureThreshold": failures}


def _pod_spec(owner: Owner, spec: ModelDeploymentSpec, rev: ServedRevision, settings: OperatorSettings) -> dict:
    s = spec.serving
    drain_in_vllm = supports_shutdown_timeout(s.image)
    scratch_mount = {"name": "scratch", "mountPath": SCRATCH}
    pullers = [{
        "name": f"pull-{dest.rsplit('/', 1)[-1]}",
        "image": s.puller_image or settings.trainer_image,
        "command": ["kubetune", "pull-model", uri, dest],
        "env": [{"name": "HOME", "value": SCRATCH}, *storage_env(rev)],
        "resources": _resources(spec, gpus=False),
        "volumeMounts": [{"name": "models", "mountPath": MODELS}, scratch_mount],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": restricted_container_security(),
    } for uri, dest in pulls(rev)]
    vllm = {
        "name": CONTAINER,
        "image": s.image,
        "command": ["vllm", "serve"],
        "args": vllm_args(spec, rev, owner),
        "ports": [{"name": "http", "containerPort": s.port, "protocol": "TCP"}],
        "env": [
            # vLLM, torch and triton write caches under HOME; HF_HOME also receives hf:// downloads.
            {"name": "HOME", "value": SCRATCH},
            {"name": "HF_HOME", "value": f"{SCRATCH}/huggingface"},
            # torch looks the user name up for its cache path; uid 10001 has no passwd entry.
            {"name": "USER", "value": "vllm"},
            {"name": "VLLM_NO_USAGE_STATS", "value": "1"},
            {"name": "DO_NOT_TRACK", "value": "1"},
        ],
        "resources": _resources(spec, gpus=True),
        "volumeMounts": [
            {"name": "models", "mountPath": MODELS, "readOnly": True},
            # tensor-parallel workers share memory through /dev/shm; the default 64Mi is far too small.
            {"name": "dshm", "mountPath": "/dev/shm"},
            scratch_mount,
        ],
        # /health answers once the process is up; /v1/models once the model is loaded.
        "startupProbe": _http_probe("/health", 10, math.ceil(s.startup_timeout_seconds / 10)),
        "readinessProbe": _http_probe("/v1/models", 5, 3),
        "livenessProbe": _http_probe("/health", 10, 6),
        # Endpoints drop a terminating pod asynchronously: keep serving until they have. vLLM
        # releases with --shutdown-timeout then drain in-flight requests themselves after SIGTERM;
        # older ones abort them at once, so the pause is the drain window instead.
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SLEEP_SECONDS + (
            0 if drain_in_vllm else s.shutdown_timeout_seconds)}}},
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": restricted_container_security(),
    }
    pod = {
        # Serving needs no Kubernetes API access, and Service env vars are dropped: one named
        # "vllm" would inject VLLM_PORT=tcp://..., which vLLM reads as its own setting.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        # preStop pause + vLLM's drain + 10s to exit.
        "terminationGracePeriodSeconds": s.shutdown_timeout_seconds + PRESTOP_SLEEP_SECONDS + 10,
        # The vllm/vllm-openai image runs as root by default; Pod Security "restricted" needs a
        # fixed non-root uid, so it runs as the trainer's uid (HOME and caches on an emptyDir).
        "securityContext": restricted_pod_security(settings.trainer_uid),
        "containers": [vllm],
        "volumes": [
            {"name": "models", "emptyDir": {}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": s.shm_size}},
            {"name": "scratch", "emptyDir": {}},
        ],
    }
    if pullers:
        pod["initContainers"] = pullers
    if s.node_selector:
        pod["nodeSelector"] = dict(s.node_selector)
    if s.tolerations:
        pod["tolerations"] = [t.to_wire() for t in s.tolerations]
    return pod


def build_serving_deployment(owner: Owner, spec: ModelDeploymentSpec, rev: ServedRevision, replicas: int,
                             settings: OperatorSettings) -> dict:
    """The revision's Deployment; `replicas` comes from the controller (see replica_split)."""
    name = deployment_name(owner, rev.revision)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": owner.metadata(name, selector_labels(owner, rev.revision)),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector_labels(owner, rev.revision)},
            # A revision's pods are never changed in place (a change is a new revision); this only
            # applies to edits such as placement: surge first, never drop below the replica count.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}},
            "revisionHistoryLimit": 2,
            # Image pull + weight pull + model load; beyond it the Deployment reports Progressing=False.
            "progressDeadlineSeconds": spec.serving.startup_timeout_seconds + 600,
            "template": {
                "metadata": {"labels": serving_labels(owner, rev.revision),
                             "annotations": {"kubectl.kubernetes.io/default-container": CONTAINER}},
                "spec": _pod_spec(owner, spec, rev, settings),
            },
        },
    }
