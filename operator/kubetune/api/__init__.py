"""The typed API: one source of truth for the CRDs, the operator and the trainer."""

from .common import API_VERSION, GROUP, VERSION, Condition, KubeModel
from .finetunejob import FineTuneJobSpec, FineTuneJobStatus
from .modeldeployment import ModelDeploymentSpec, ModelDeploymentStatus

__all__ = [
    "API_VERSION",
    "GROUP",
    "VERSION",
    "Condition",
    "KubeModel",
    "FineTuneJobSpec",
    "FineTuneJobStatus",
    "ModelDeploymentSpec",
    "ModelDeploymentStatus",
]
