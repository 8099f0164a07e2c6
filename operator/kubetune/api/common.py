"""Building blocks shared by the kubetune resources.

Every model here is also a CRD schema (see ``crdgen``), so field docs are
written for `kubectl explain` readers, and the wire names are camelCase.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "kubetune.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# A Kubernetes resource quantity ("500m", "4", "32Gi"), checked the way the apiserver parses them.
QUANTITY_PATTERN = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


class KubeModel(BaseModel):
    """Base for every spec/status model: camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """The JSON-ready form the apiserver stores (camelCase keys, unset optionals left out)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class Toleration(KubeModel):
    """A pod toleration, as in core/v1."""

    key: str | None = Field(None, description="Taint key the toleration applies to; empty matches all keys.")
    operator: Literal["Exists", "Equal"] = Field("Equal", description="Exists or Equal.")
    value: str | None = Field(None, description="Taint value the toleration matches (with operator Equal).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        None, ge=0, description="With effect NoExecute: how long the pod stays bound after the taint appears."
    )


class PlacementSpec(KubeModel):
    """Where pods run and what each one gets: shared by trainer and serving pods."""

    gpu_resource_name: str = Field("nvidia.com/gpu", max_length=253, description="Extended resource name of the GPU.")
    cpu: str = Field("4", pattern=QUANTITY_PATTERN, description="CPU request and limit per pod.")
    memory: str = Field("32Gi", pattern=QUANTITY_PATTERN, description="Memory request and limit per pod.")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels the pods must match.")
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32, description="Taints the pods tolerate.")


class SecretRef(KubeModel):
    """A Secret in the resource's own namespace."""

    name: str = Field(..., pattern=DNS_SUBDOMAIN_PATTERN, max_length=253, description="Name of the Secret.")


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(KubeModel):
    """A kstatus-style condition (Ready, Reconciling, Stalled, ...)."""

    type: str = Field(..., description="Condition type, e.g. Ready, Reconciling or Stalled.")
    status: ConditionStatus = Field(..., description="True, False or Unknown.")
    reason: str | None = Field(None, description="One CamelCase word saying why.")
    message: str | None = Field(None, description="A human-readable explanation.")
    observed_generation: int | None = Field(
        None, description="The metadata.generation this condition was computed from."
    )
    last_transition_time: datetime | None = Field(None, description="When the status last changed.")
