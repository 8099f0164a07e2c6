"""The trainer Job (batch/v1): one pod per node, Indexed when there are several."""

from __future__ import annotations

from kubetune.api.finetunejob import FineTuneJobSpec, StorageSpec
from kubetune.api.trainer_config import CONFIG_ENV, CONFIG_PATH, EXIT_BAD_INPUT, EXIT_PREEMPTED, TrainerConfig
from kubetune.settings import OperatorSettings

from .config import CONFIG_ANNOTATION, config_annotation_value
from .rbac import TRAINER_ACCOUNT
from ..common import Owner, aws_credentials_env, restricted_container_security, restricted_pod_security, secret_env

CONTAINER = "trainer"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
SCRATCH = "/scratch"
CONFIG_DIR, CONFIG_FILE = CONFIG_PATH.rsplit("/", 1)


def failure_policy() -> dict:
    """Which pod failures count against backoffLimit (one node: the Job controller retries the pod).

    The trainer's "bad input" exit fails the Job at once (a retry reads the same
    data); its "preempted, checkpoint saved" exit and node disruptions (eviction,
    preemption, node drain: the DisruptionTarget condition) retry without using
    up the budget. Everything else counts.
    """
    return {
        "rules": [
            {"action": "FailJob",
             "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [EXIT_BAD_INPUT]}},
            {"action": "Ignore",
             "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [EXIT_PREEMPTED]}},
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]
    }


# Several nodes: every pod failure fails the whole Job attempt (the ranks form one torch.distributed
# group, which a lone replacement pod cannot rejoin), and the operator starts the next attempt as a
# new Job (finetunejob/gang.py). The Job controller's condition message names the rule it matched
# ("... matching FailJob rule at index N"), so each rule's position says what the failure was.
GANG_RULE_CAUSES = ("BadInput", "Preempted", "Disrupted")


def gang_failure_policy() -> dict:
    """Several nodes: any failed rank fails the Job attempt; the rules only say why, in GANG_RULE_CAUSES
    order. A failure no rule matches (a crash) fails it too, through backoffLimit 0."""
    return {
        "rules": [
            {"action": "FailJob",
             "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [EXIT_BAD_INPUT]}},
            {"action": "FailJob",
             "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [EXIT_PREEMPTED]}},
            {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]
    }


def credential_env(spec: FineTuneJobSpec, storage: StorageSpec) -> list[dict]:
    """Secrets reach the trainer only as secretKeyRef env vars: the operator never reads them."""
    env = []
    if storage.credentials_secret is not None:
        secret = storage.credentials_secret.name
        env += aws_credentials_env(secret)
    if spec.base_model.token_secret is not None:
        env.append(secret_env("HF_TOKEN", spec.base_model.token_secret.name))
    return env


def distributed_env(owner: Owner, spec: FineTuneJobSpec, settings: OperatorSettings) -> list[dict]:
    """What `accelerate launch` needs: machines, processes, this machine's rank, rank 0's address."""
    nodes = spec.resources.nodes
    processes = nodes * max(spec.resources.gpus_per_node, 1)
    if nodes > 1:
        # Rank 0 is the pod with completion index 0, addressable through the headless Service.
        master = f"{owner.job_name}-0.{owner.service_name}.{owner.namespace}.svc"
        rank = {"name": "MACHINE_RANK", "valueFrom": {"fieldRef": {
            "fieldPath": f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"}}}
    else:
        master = "127.0.0.1"
        rank = {"name": "MACHINE_RANK", "value": "0"}
    return [
        {"name": "NUM_MACHINES", "value": str(nodes)},
        {"name": "NUM_PROCESSES", "value": str(processes)},
        rank,
        {"name": "MASTER_ADDR", "value": master},
        {"name": "MASTER_PORT", "value": str(settings.master_port)},
    ]


def _resources(spec: FineTuneJobSpec) -> dict:
    res = spec.resources
    # requests == limits: Guaranteed QoS, so a busy node evicts others first.
    amounts = {"cpu": res.cpu, "memory": res.memory}
    if res.gpus_per_node > 0:
        amounts[res.gpu_resource_name] = str(res.gpus_per_node)
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _pod_spec(owner: Owner, config: TrainerConfig, settings: OperatorSettings) -> dict:
    spec, storage = config.spec, config.spec.storage
    if storage is None:
        raise ValueError("config.spec.storage is not resolved: build the config with build_trainer_config")
    res = spec.resources
    env = [
        {"name": CONFIG_ENV, "value": CONFIG_PATH},
        {"name": "HOME", "value": SCRATCH},
        {"name": "HF_HOME", "value": f"{SCRATCH}/huggingface"},
        # Downloads, checkpoints before upload, outputs: on the pod's scratch volume.
        {"name": "KUBETUNE_WORK_DIR", "value": f"{SCRATCH}/work"},
        {"name": "KUBETUNE_CACHE", "value": f"{SCRATCH}/cache"},
        *distributed_env(owner, spec, settings),
        *credential_env(spec, storage),
    ]
    container = {
        "name": CONTAINER,
        "image": spec.images.trainer or settings.trainer_image,
        "imagePullPolicy": spec.images.pull_policy,
        "command": ["kubetune", "trainer-run"],
        "env": env,
        "resources": _resources(spec),
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "scratch", "mountPath": SCRATCH},
        ],
        # The trainer's last words (e.g. the data validation summary) end up in the
        # pod status, where the operator copies them into the FineTuneJob's message.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": restricted_container_security(),
    }
    pod = {
        "restartPolicy": "Never",  # required by podFailurePolicy; retries are new pods (one node) or new Jobs (a gang)
        "serviceAccountName": TRAINER_ACCOUNT,
        # The token is mounted only here, for the progress reporter (see rbac.py).
        "automountServiceAccountToken": True,
        "terminationGracePeriodSeconds": settings.termination_grace_seconds,
        "securityContext": restricted_pod_security(settings.trainer_uid),
        "containers": [container],
        "volumes": [
            # The config, from the pod's own annotation (the template's, see build_job). Jobs made by
            # an operator before this one mount a ConfigMap <name>-train-config here instead; it keeps
            # existing, owned by the FineTuneJob, so they need nothing.
            {"name": "config", "downwardAPI": {"items": [
                {"path": CONFIG_FILE, "fieldRef": {"fieldPath": f"metadata.annotations['{CONFIG_ANNOTATION}']"}}]}},
            # NCCL and data loader workers share memory through /dev/shm; the default 64Mi is far too small.
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": res.shm_size}},
            {"name": "scratch", "emptyDir": {}},
        ],
    }
    if res.nodes > 1:
        pod["subdomain"] = owner.service_name
    if res.node_selector:
        pod["nodeSelector"] = dict(res.node_selector)
    if res.tolerations:
        pod["tolerations"] = [t.to_wire() for t in res.tolerations]
    if res.priority_class_name:
        pod["priorityClassName"] = res.priority_class_name
    return pod


def build_job(owner: Owner, config: TrainerConfig, settings: OperatorSettings,
              deadline_seconds: int | None = None) -> dict:
    """The trainer Job, running `config` (build_trainer_config: its spec has storage resolved), which
    its pod template carries in an annotation. `deadline_seconds`: what is left of
    spec.activeDeadlineSeconds for this attempt (a gang restart's Job must not get the whole budget
    again); None: the spec's."""
    spec = config.spec
    nodes = spec.resources.nodes
    gang = nodes > 1
    job_labels = {QUEUE_LABEL: spec.queue_name} if spec.queue_name else {}
    job_spec = {
        "completions": nodes,
        "parallelism": nodes,
        "completionMode": "Indexed" if gang else "NonIndexed",
        # A gang's retries are whole new Jobs, counted by the operator against spec.backoffLimit.
        "backoffLimit": 0 if gang else spec.backoff_limit,
        "podFailurePolicy": gang_failure_policy() if gang else failure_policy(),
        # Start a replacement only once the old pod is gone, so two trainers never
        # write the same checkpoints (the only value allowed with podFailurePolicy).
        "podReplacementPolicy": "Failed",
        # Created suspended when queued: Kueue admits it by unsuspending.
        "suspend": spec.suspend or spec.queue_name is not None,
        "template": {
            # The size of the annotation is checked by cluster_spec_problems (config_size_problems).
            "metadata": {"labels": owner.labels(), "annotations": {CONFIG_ANNOTATION: config_annotation_value(config)}},
            "spec": _pod_spec(owner, config, settings),
        },
    }
    deadline = deadline_seconds if deadline_seconds is not None else spec.active_deadline_seconds
    if deadline is not None:
        job_spec["activeDeadlineSeconds"] = deadline
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": owner.metadata(owner.job_name, job_labels),
        "spec": job_spec,
    }
