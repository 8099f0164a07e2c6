"""Operator-wide settings, read once from the environment (the Helm chart sets them).

Per-job choices live in the FineTuneJob spec; these are the platform team's
defaults for what a spec may leave out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from importlib.metadata import PackageNotFoundError, version

try:
    _VERSION = version("kubetune")
except PackageNotFoundError:  # running from a source tree without an install
    _VERSION = "0.1.0"
# The trainer image is released with the operator, so the tags match.
DEFAULT_TRAINER_IMAGE = f"ghcr.io/kubetune/trainer:{_VERSION}"


@dataclass(frozen=True)
class OperatorSettings:
    trainer_image: str = DEFAULT_TRAINER_IMAGE
    # Used when a FineTuneJob has no spec.storage. The Secret named here must
    # exist in each namespace that relies on the default (secretKeyRef is namespace-local).
    default_storage_uri: str | None = None
    default_storage_endpoint: str | None = None
    default_storage_region: str | None = None
    default_storage_secret: str | None = None
    # Rendezvous port of rank 0 for torch distributed (accelerate's --main_process_port).
    master_port: int = 29500
    # Seconds the trainer gets after SIGTERM to save and upload a checkpoint (exit 75).
    termination_grace_seconds: int = 120
    # The uid the trainer image runs as (Pod Security "restricted" needs a non-root uid).
    trainer_uid: int = 10001  # the USER of Dockerfile.trainer
    # Threads running handlers at once (and HTTP connections they share).
    workers: int = 32
    # Seconds between re-reconciliations of unfinished FineTuneJobs (kopf does not retry
    # event handlers, so a Job event lost to an API error would otherwise leave status stale).
    resync_seconds: float = 600.0
    # Prometheus for canary analysis when a ModelDeployment names none.
    prometheus_address: str | None = None
    # Seconds between passes over ModelDeployments with a rollout under way (steps, analysis, retirements).
    rollout_tick_seconds: float = 5.0
    # Guardrails (kubetune.guardrails): trainer images and Secret names a FineTuneJob may use;
    # an entry ending in "*" is a prefix; empty allows anything.
    allowed_trainer_images: tuple[str, ...] = ()
    allowed_secrets: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "OperatorSettings":
        env = os.environ if env is None else env
        uri = env.get("KUBETUNE_DEFAULT_STORAGE_URI") or None
        if uri is not None and not uri.startswith("s3://"):
            raise ValueError(f"KUBETUNE_DEFAULT_STORAGE_URI must be an s3:// URI, got {uri!r}")
        return cls(
            trainer_image=env.get("KUBETUNE_TRAINER_IMAGE") or DEFAULT_TRAINER_IMAGE,
            default_storage_uri=uri,
            default_storage_endpoint=env.get("KUBETUNE_DEFAULT_STORAGE_ENDPOINT") or None,
            default_storage_region=env.get("KUBETUNE_DEFAULT_STORAGE_REGION") or None,
            default_storage_secret=env.get("KUBETUNE_DEFAULT_STORAGE_SECRET") or None,
            master_port=int(env.get("KUBETUNE_MASTER_PORT", "29500")),
            termination_grace_seconds=int(env.get("KUBETUNE_TERMINATION_GRACE_SECONDS", "120")),
            trainer_uid=int(env.get("KUBETUNE_TRAINER_UID", "10001")),
            workers=int(env.get("KUBETUNE_WORKERS", "32")),
            resync_seconds=float(env.get("KUBETUNE_RESYNC_SECONDS", "600")),
            prometheus_address=env.get("KUBETUNE_PROMETHEUS_ADDRESS") or None,
            rollout_tick_seconds=float(env.get("KUBETUNE_ROLLOUT_TICK_SECONDS", "5")),
            allowed_trainer_images=_csv(env.get("KUBETUNE_ALLOWED_TRAINER_IMAGES")),
            allowed_secrets=_csv(env.get("KUBETUNE_ALLOWED_SECRETS")),
        )


def _csv(value: str | None) -> tuple[str, ...]:
    """A comma-separated list (the chart joins Helm lists with commas); blanks dropped."""
    return tuple(item.strip() for item in (value or "").split(",") if item.strip())
