"""The trainer's typed config and the ConfigMap that carries it into the pod."""

from __future__ import annotations

import json

from kubetune.api.common import SecretRef
from kubetune.api.finetunejob import FineTuneJobSpec, StorageSpec
from kubetune.api.trainer_config import CONFIG_KEY, TrainerConfig, run_root
from kubetune.guardrails import finetunejob_guardrail_problems
from kubetune.settings import OperatorSettings

from ..common import Owner


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
    manifest's directory) but mean nothing inside a trainer pod.
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
    problems += finetunejob_guardrail_problems(spec, settings)  # the platform team's allow-lists
    return problems


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


def build_configmap(owner: Owner, config: TrainerConfig) -> dict:
    # Holds names and URIs only: credentials reach the pod as secretKeyRef env vars.
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": owner.metadata(owner.configmap_name),
        "data": {CONFIG_KEY: json.dumps(config.to_wire(), indent=2, sort_keys=True)},
    }
