"""Pure functions from typed inputs to Kubernetes manifests (plain dicts).

Nothing here talks to the apiserver, so every manifest is unit-tested
without a cluster; the handlers decide what to build and apply it.
"""

from .common import Owner
from .config import build_configmap, build_trainer_config, cluster_spec_problems, effective_storage, run_storage_uri
from .job import build_job
from .network import build_headless_service
from .rbac import build_trainer_rbac

__all__ = [
    "Owner",
    "build_configmap",
    "build_headless_service",
    "build_job",
    "build_trainer_config",
    "build_trainer_rbac",
    "cluster_spec_problems",
    "effective_storage",
    "run_storage_uri",
]
