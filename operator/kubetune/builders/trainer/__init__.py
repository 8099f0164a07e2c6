"""Builders of a FineTuneJob's children: trainer config, Job, headless Service, per-job RBAC."""

from .config import build_configmap, build_trainer_config, cluster_spec_problems, effective_storage, run_storage_uri
from .job import build_job
from .network import build_headless_service
from .rbac import build_trainer_rbac

__all__ = [
    "build_configmap",
    "build_headless_service",
    "build_job",
    "build_trainer_config",
    "build_trainer_rbac",
    "cluster_spec_problems",
    "effective_storage",
    "run_storage_uri",
]
