"""The trainer's typed config, and the pod annotation that carries it into the trainer pod.

The rendered TrainerConfig rides in an annotation of the Job's pod template, which
a downwardAPI volume item writes to CONFIG_PATH (builders/trainer/job.py): no
per-job ConfigMap to create. A Job's pod template is immutable, so the config is
fixed when the Job is created.
"""

from __future__ import annotations

import json
from typing import Any

from kubetune.api.common import SecretRef
from kubetune.api.finetunejob import FineTuneJobSpec, StorageSpec
from kubetune.api.trainer_config import TrainerConfig, run_root
from kubetune.guardrails import finetunejob_guardrail_problems
from kubetune.settings import OperatorSettings

from ..common import Owner

CONFIG_ANNOTATION = "kubetune.io/trainer-config"
# The apiserver refuses an object whose annotations (keys and values) exceed 256 KiB in total. The
# config gets all but 32 KiB of that: the rest of the pod's annotations (the Job controller's completion
# index, Kueue's, a service mesh injector's) share the same budget. The Job carries the same template,
# far below its ~1.5 MiB request limit. A spec can get there: spec.lora.targetModules takes 64 entries
# of any length, so cluster_spec_problems checks the size before a Job is built.
MAX_CONFIG_ANNOTATION_BYTES = 256 * 1024 - 32 * 1024
# The longest name (DNS subdomain), namespace (DNS label) and uid any FineTuneJob can have: the size
# check holds whichever FineTuneJob the spec belongs to.
_WIDEST_OWNER = Owner(name="n" * 253, namespace="s" * 63, uid="u" * 36)


def effective_storage(spec: FineTuneJobSpec, settings: OperatorSettings) -> StorageSpec | None:
    """spec.storage, or the operator's default storage; None when neither exists."""
    if spec.storage is not None:
        return spec.storage
    if settings.default_storage_uri is None:
        return None
    secret = SecretRef(name=settings.default_storage_secret) if settings.default_storage_secret else None
    return StorageSpec(
        uri=settings.default_storage_uri,
        endpoint=settings.default_storage_endpoint,
        region=settings.default_storage_region,
        credentials_secret=secret,
    )


def run_storage_uri(storage: StorageSpec, owner: Owner, resume_from_run: str | None = None) -> str:
    """Where this job's checkpoints and artifacts live: <prefix>/<namespace>/<name>/<run id>.

    The run id is the FineTuneJob's uid, so a FineTuneJob deleted and created again with
    the same name starts afresh instead of resuming the old run's checkpoints and reusing
    its base-model scores; spec.resumeFromRun names an earlier run (its uid) to continue.
    """
    return f"{run_root(storage.uri, owner.namespace, owner.name)}/{resume_from_run or owner.uid}"


def cluster_spec_problems(spec: FineTuneJobSpec, settings: OperatorSettings) -> list[str]:
    """What in an otherwise valid spec cannot work on a cluster, each with its field path.

    Relative paths are fine for `kubetune train` on a laptop (resolved against the
    manifest's directory) but mean nothing inside a trainer pod; a config too large for
    its pod annotation could not reach the trainer at all.
    """
    problems = []
    locations = {
        "spec.baseModel.uri": spec.base_model.uri,
        "spec.dataset.train": spec.dataset.train,
        "spec.dataset.validation": spec.dataset.validation,
        "spec.dataset.test": spec.dataset.test,
    }
    for path, uri in locations.items():
        if uri is not None and uri.startswith(("./", "../")):
            problems.append(
                f"{path}: relative path {uri!r} only works with `kubetune train` on a laptop; "
                "on a cluster use s3://, hf://, pkg:// or an absolute path inside the trainer image"
            )
    if effective_storage(spec, settings) is None:
        problems.append(
            "spec.storage: not set and the operator has no default storage "
            "(KUBETUNE_DEFAULT_STORAGE_URI); set spec.storage.uri to an s3:// prefix"
        )
    else:
        problems += config_size_problems(build_trainer_config(_WIDEST_OWNER, spec, settings))
    problems += finetunejob_guardrail_problems(spec, settings)  # the platform team's allow-lists
    return problems


def config_annotation_value(config: TrainerConfig) -> str:
    """The config as the trainer reads it (JSON, TrainerConfig's wire form); compact, as it counts
    against the pod's annotation budget. Holds names and URIs only: credentials reach the pod as
    secretKeyRef env vars."""
    return json.dumps(config.to_wire(), sort_keys=True, separators=(",", ":"))


def config_size_problems(config: TrainerConfig) -> list[str]:
    """Why the config cannot ride in the pod annotation (too large), naming the spec's largest field."""
    size = len(config_annotation_value(config).encode())
    if size <= MAX_CONFIG_ANNOTATION_BYTES:
        return []
    field, field_size = _largest_field(config.spec.to_wire(), "spec")
    return [f"{field}: {field_size} bytes, the largest field of a trainer config of {size} bytes; the config "
            f"rides in the trainer pod's annotation {CONFIG_ANNOTATION}, which can hold {MAX_CONFIG_ANNOTATION_BYTES} "
            "bytes (Kubernetes allows 256 KiB of annotations per object): shorten it"]


def _largest_field(wire: dict[str, Any], path: str) -> tuple[str, int]:
    """The path and JSON size of the largest non-object value under `wire` (a list counts as one)."""
    best = (path, 0)
    for key, value in wire.items():
        here = f"{path}.{key}"
        found = _largest_field(value, here) if isinstance(value, dict) else (here, len(json.dumps(value).encode()))
        best = max(best, found, key=lambda f: f[1])
    return best


def build_trainer_config(owner: Owner, spec: FineTuneJobSpec, settings: OperatorSettings) -> TrainerConfig:
    """The resolved config the trainer runs from. Call only when cluster_spec_problems is empty."""
    storage = effective_storage(spec, settings)
    if storage is None:
        raise ValueError("no storage: check cluster_spec_problems() first")
    return TrainerConfig(
        job_name=owner.name,
        namespace=owner.namespace,
        job_uid=owner.uid,
        storage_uri=run_storage_uri(storage, owner, spec.resume_from_run),
        storage_endpoint=storage.endpoint,
        storage_region=storage.region,
        progress_reporter="kubernetes",
        # The trainer reads checkpoint intervals from spec.storage, so it gets the resolved one.
        spec=spec.model_copy(update={"storage": storage}),
    )

