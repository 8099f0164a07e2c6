"""Builders of a ModelDeployment's children: per revision a vLLM Deployment and a Service; one
client Service "<md>"; with Gateway routing, one HTTPRoute. All pure: ServedRevision in, dicts out."""

from .deployment import build_serving_deployment, max_lora_rank, served_model_name, supports_shutdown_timeout, vllm_args
from .names import (
    MODEL_DEPLOYMENT_LABEL,
    REVISION_LABEL,
    client_service_name,
    deployment_name,
    httproute_name,
    revision_service_name,
    selector_labels,
    serving_labels,
)
from .problems import serving_problems
from .revision import ServedRevision
from .traffic import SERVICE_PORT, build_client_service, build_httproute, build_revision_service, replica_split

__all__ = [
    "MODEL_DEPLOYMENT_LABEL",
    "REVISION_LABEL",
    "SERVICE_PORT",
    "ServedRevision",
    "build_client_service",
    "build_httproute",
    "build_revision_service",
    "build_serving_deployment",
    "client_service_name",
    "deployment_name",
    "httproute_name",
    "max_lora_rank",
    "replica_split",
    "revision_service_name",
    "selector_labels",
    "served_model_name",
    "serving_labels",
    "serving_problems",
    "supports_shutdown_timeout",
    "vllm_args",
]
