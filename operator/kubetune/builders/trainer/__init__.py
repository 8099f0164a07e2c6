"""Builders of a FineTuneJob's children (the Job, which carries the trainer config; headless Service; the
per-namespace trainer identity)."""

from .config import (
    CONFIG_ANNOTATION,
    build_trainer_config,
    cluster_spec_problems,
    config_annotation_value,
    effective_storage,
    run_storage_uri,
)
from .job import build_job
from .network import build_headless_service
from .rbac import TRAINER_ACCOUNT, build_trainer_identity

__all__ = [
    "TRAINER_ACCOUNT",
    "CONFIG_ANNOTATION",
    "build_headless_service",
    "build_job",
    "build_trainer_config",
    "build_trainer_identity",
    "cluster_spec_problems",
    "config_annotation_value",
    "effective_storage",
    "run_storage_uri",
]
