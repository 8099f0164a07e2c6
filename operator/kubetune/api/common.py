"""Building blocks shared by the kubetune resources.

Every model here is also a CRD schema (see ``crdgen``), so field docs are
written for `kubectl explain` readers, and the wire names are camelCase.
"""

from __future__ import annotations

import functools
import re
from datetime import datetime
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

GROUP = "kubetune.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# Every pattern below is what the apiserver checks where the value ends up (a Job, a Pod, a
# label), so the CRD refuses at apply what would otherwise fail when the operator creates the
# Job. They are written for both regex engines that run them: Rust's (pydantic) and Go's RE2
# (the apiserver), hence no lookarounds and explicit ASCII classes.

# A non-negative resource quantity ("500m", "4", "1.5", "32Gi", "1e3"): the grammar of
# k8s.io/apimachinery resource.ParseQuantity (its own pre-check regex is looser: it lets `..`
# and `4KiMi` through to the parser, which then fails). Negative amounts fail pod validation.
QUANTITY_PATTERN = r"^\+?([0-9]+(\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]+)?$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# A label value (also a nodeSelector or toleration value): at most 63 characters.
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
# A qualified name (a label key, a toleration key): [DNS-subdomain prefix "/"] name of <= 63 characters.
# The prefix's own limit (253) needs a second check: PREFIX_RULE (CEL) / _prefix_fits (Python).
_NAME_PART = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_DNS_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
QUALIFIED_NAME_PATTERN = rf"^({_DNS_SUBDOMAIN}/)?{_NAME_PART}$"
# An extended resource name (what a device plugin advertises, e.g. nvidia.com/gpu): a qualified
# name with a domain prefix outside kubernetes.io, and "requests." + name must stay a qualified
# name (the apiserver's IsExtendedResourceName), so the prefix has at most 244 characters.
EXTENDED_RESOURCE_PATTERN = rf"^{_DNS_SUBDOMAIN}/{_NAME_PART}$"
# A container image reference: non-empty, no whitespace (pod validation refuses leading or trailing
# whitespace only after the Job was accepted, so the pods would silently never be created).
IMAGE_PATTERN = r"^[^ \t\n\r\f\v]+$"


def _cel_prefix_at_most(limit: int) -> str:
    return f"(!self.contains('/') || self.indexOf('/') <= {limit})"


def _prefix_at_most(limit: int, what: str):
    def check(value: str) -> str:
        if value.find("/") > limit:
            raise ValueError(f"the prefix before '/' of a {what} must be at most {limit} characters")
        return value
    return check


def _not_kubernetes_io(value: str) -> str:
    if "kubernetes.io/" in value or value.startswith("requests."):
        raise ValueError("must be an extended resource name (e.g. nvidia.com/gpu): "
                         "not in the kubernetes.io domain and not starting with 'requests.'")
    return value


def _int_quantity(value: Any) -> Any:
    # YAML `cpu: 4` is an integer, which the CRD (int-or-string, like every Kubernetes
    # quantity) accepts too; booleans are not numbers for the apiserver.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # 4.0: the apiserver's integer check takes whole floats
    return value


Quantity = Annotated[
    str,
    BeforeValidator(_int_quantity),
    Field(pattern=QUANTITY_PATTERN, max_length=64),
    WithJsonSchema({"anyOf": [{"type": "integer"}, {"type": "string"}], "pattern": QUANTITY_PATTERN,
                    "maxLength": 64, "x-kubernetes-int-or-string": True}),
]
LabelValue = Annotated[str, Field(pattern=LABEL_VALUE_PATTERN, max_length=63)]
QualifiedName = Annotated[
    str,
    Field(pattern=QUALIFIED_NAME_PATTERN, max_length=317, json_schema_extra={"x-kubernetes-validations": [
        {"rule": _cel_prefix_at_most(253), "message": "the prefix before '/' must be at most 253 characters"}]}),
    AfterValidator(_prefix_at_most(253, "qualified name")),
]
ExtendedResourceName = Annotated[
    str,
    Field(pattern=EXTENDED_RESOURCE_PATTERN, max_length=308, json_schema_extra={"x-kubernetes-validations": [
        {"rule": "!self.contains('kubernetes.io/') && !self.startsWith('requests.') && " + _cel_prefix_at_most(244),
         "message": "must be an extended resource name (e.g. nvidia.com/gpu): not in the kubernetes.io domain, "
                    "not starting with 'requests.', a prefix of at most 244 characters"}]}),
    AfterValidator(_not_kubernetes_io),
    AfterValidator(_prefix_at_most(244, "GPU resource name")),
]

# The JSON type the CRD declares for a bool/int/float field; pydantic's lax mode would turn
# "yes" into True or "3" into 3, which the apiserver refuses.
_JSON_TYPES = {bool: "boolean", int: "integer", float: "number"}


@functools.cache
def _expected_scalar(model: type, field_name: str) -> type | None:
    """The JSON scalar a model's field takes, once per field (it ran for every field of every
    validated status: ~5 % of the operator's CPU in a 1,000-job burst)."""
    return _json_scalar(model.model_fields[field_name].annotation)


def _json_scalar(annotation: Any) -> type | None:
    args = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else (annotation,)
    args = tuple(a for a in args if a is not type(None))
    return args[0] if len(args) == 1 and args[0] in _JSON_TYPES else None


def node_selector_problems(selector: dict[str, str]) -> dict[str, str]:
    """nodeSelector keys the apiserver refuses (label keys: qualified names), each with why."""
    bad = {}
    for key in selector:
        if not re.fullmatch(QUALIFIED_NAME_PATTERN[1:-1], key):
            bad[key] = "must be a label key: [prefix/]name, name <= 63 of [-A-Za-z0-9_.] starting and ending alphanumeric"
        elif key.find("/") > 253:
            bad[key] = "the prefix before '/' must be at most 253 characters"
    return bad


class KubeModel(BaseModel):
    """Base for every spec/status model: camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
    )

    @field_validator("*", mode="before")
    @classmethod
    def _json_type(cls, value: Any, info: ValidationInfo) -> Any:
        """Booleans, integers and numbers exactly as the CRD's types take them (no coercion)."""
        expected = _expected_scalar(cls, info.field_name)
        if expected is None or value is None:
            return value
        ok = isinstance(value, bool) if expected is bool else (
            isinstance(value, (int, float)) and not isinstance(value, bool))
        if not ok:
            raise ValueError(f"must be of type {_JSON_TYPES[expected]}, got {type(value).__name__} {value!r}")
        return value

    def to_wire(self) -> dict[str, Any]:
        """The JSON-ready form the apiserver stores (camelCase keys, unset optionals left out)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class Toleration(KubeModel):
    """A pod toleration, as in core/v1."""

    # The rules pod validation applies, so a bad toleration fails at apply, not at Job creation.
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "(has(self.key) && self.key != '') || self.operator == 'Exists'",
         "message": "operator must be Exists when key is empty", "fieldPath": ".operator"},
        {"rule": "self.operator != 'Exists' || !has(self.value) || self.value == ''",
         "message": "value must be empty when operator is Exists", "fieldPath": ".value"},
        {"rule": "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
         "message": "tolerationSeconds needs effect NoExecute", "fieldPath": ".tolerationSeconds"},
    ]})

    key: QualifiedName | None = Field(None, description="Taint key the toleration applies to; empty matches all keys (with operator Exists).")
    operator: Literal["Exists", "Equal"] = Field("Equal", description="Exists or Equal.")
    value: LabelValue | None = Field(None, description="Taint value the toleration matches (with operator Equal).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        None, ge=0, description="With effect NoExecute: how long the pod stays bound after the taint appears."
    )

    @model_validator(mode="after")
    def _pod_rules(self) -> "Toleration":
        # Mirrors the CEL rules above, in the same words.
        if not self.key and self.operator != "Exists":
            raise ValueError("operator must be Exists when key is empty")
        if self.operator == "Exists" and self.value:
            raise ValueError("value must be empty when operator is Exists")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError("tolerationSeconds needs effect NoExecute")
        return self


class PlacementSpec(KubeModel):
    """Where pods run and what each one gets: shared by trainer and serving pods."""

    gpu_resource_name: ExtendedResourceName = Field(
        "nvidia.com/gpu", description="Extended resource name of the GPU, as its device plugin advertises it."
    )
    cpu: Quantity = Field("4", description="CPU request and limit per pod (a Kubernetes quantity: 4, 500m).")
    memory: Quantity = Field("32Gi", description="Memory request and limit per pod (a Kubernetes quantity: 32Gi).")
    node_selector: dict[str, LabelValue] = Field(
        default_factory=dict, max_length=64, description="Node labels the pods must match.",
        json_schema_extra={"x-kubernetes-validations": [{
            "rule": f"self.all(k, k.matches(r'{QUALIFIED_NAME_PATTERN}') && (!k.contains('/') || k.indexOf('/') <= 253))",
            "message": "keys must be label keys: [prefix/]name, name <= 63 of [-A-Za-z0-9_.] starting and ending alphanumeric",
        }]},
    )
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32, description="Taints the pods tolerate.")

    @field_validator("node_selector")
    @classmethod
    def _label_keys(cls, value: dict[str, str]) -> dict[str, str]:
        bad = node_selector_problems(value)
        if bad:
            raise ValueError("; ".join(f"key {k!r} {why}" for k, why in bad.items()))
        return value


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
