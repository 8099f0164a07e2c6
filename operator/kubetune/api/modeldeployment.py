"""ModelDeployment: serving a fine-tuned model with vLLM behind a weighted canary."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from .common import DNS_LABEL_PATTERN, DNS_SUBDOMAIN_PATTERN, QUANTITY_PATTERN, Condition, KubeModel, Toleration
from .finetunejob import URI_PATTERN

DeploymentPhase = Literal["Progressing", "Paused", "Healthy", "Degraded", "RolledBack"]


class FineTuneJobRef(KubeModel):
    """A FineTuneJob in the same namespace."""

    name: str = Field(..., pattern=DNS_SUBDOMAIN_PATTERN, max_length=253, description="Name of the FineTuneJob.")


class ModelSource(KubeModel):
    """The model to serve: a FineTuneJob's outputs, or explicit URIs."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "has(self.fineTuneJobRef) != has(self.uri)",
                 "message": "set exactly one of model.fineTuneJobRef or model.uri"}
            ]
        }
    )

    fine_tune_job_ref: FineTuneJobRef | None = Field(
        None, description="Serve the outputs of this FineTuneJob once it has Succeeded."
    )
    uri: str | None = Field(None, pattern=URI_PATTERN, max_length=2048, description="Adapter or full-model location.")
    base_model: str | None = Field(
        None, pattern=URI_PATTERN, max_length=2048, description="Base model for an adapter given by uri (serving.mode adapter)."
    )

    @model_validator(mode="after")
    def _exactly_one_source(self) -> "ModelSource":
        # Mirrors the CEL rule above, for local runs that never meet the apiserver.
        if (self.fine_tune_job_ref is None) == (self.uri is None):
            raise ValueError("set exactly one of model.fineTuneJobRef or model.uri")
        return self


class ServingSpec(KubeModel):
    """How vLLM serves the model."""

    image: str = Field("vllm/vllm-openai:v0.11.0", max_length=512, description="vLLM server image.")
    replicas: int = Field(1, ge=1, le=1000, description="Serving replicas at full rollout.")
    gpus: int = Field(1, ge=0, le=16, description="GPUs per replica.")
    gpu_resource_name: str = Field("nvidia.com/gpu", max_length=253, description="Extended resource name of the GPU.")
    cpu: str = Field("4", pattern=QUANTITY_PATTERN, description="CPU per replica.")
    memory: str = Field("32Gi", pattern=QUANTITY_PATTERN, description="Memory per replica.")
    served_model_name: str | None = Field(None, max_length=253, description="Name clients use in the OpenAI API; defaults to the resource name.")
    max_model_len: int | None = Field(None, ge=16, description="Context length vLLM allocates for (--max-model-len).")
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0, description="Share of GPU memory vLLM may use, in (0, 1].")
    tensor_parallel_size: int = Field(1, ge=1, le=16, description="GPUs one model is sharded over.")
    mode: Literal["adapter", "merged"] = Field(
        "adapter", description="adapter: base model + --lora-modules; merged: serve merged full weights."
    )
    extra_args: list[str] = Field(default_factory=list, max_length=50, description="Extra vLLM command-line arguments.")
    port: int = Field(8000, ge=1, le=65535, description="Container port of the OpenAI-compatible server.")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels the pods must match.")
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32, description="Taints the pods tolerate.")


class CanaryStep(KubeModel):
    """Send weight percent of traffic to the canary, then wait."""

    weight: int = Field(..., ge=1, le=100, description="Canary share of traffic, in percent (1..100).")
    pause_seconds: int | None = Field(
        None, ge=0, description="How long to analyse at this weight before the next step; omitted means wait until unpaused."
    )


class ParentRef(KubeModel):
    """A Gateway API parent (usually a Gateway)."""

    name: str = Field(..., pattern=DNS_SUBDOMAIN_PATTERN, max_length=253, description="Gateway name.")
    namespace: str | None = Field(None, pattern=DNS_LABEL_PATTERN, max_length=63, description="Gateway namespace; defaults to the resource's.")
    section_name: str | None = Field(None, max_length=253, description="Listener name on the Gateway.")


class TrafficRouting(KubeModel):
    """How canary weights become traffic."""

    gateway_parent_refs: list[ParentRef] = Field(
        default_factory=list, max_length=8,
        description="Gateways for a weighted HTTPRoute; when empty, traffic follows the replica ratio behind one Service.",
    )
    hostnames: list[str] = Field(default_factory=list, max_length=16, description="Hostnames on the HTTPRoute.")


class RolloutSpec(KubeModel):
    """Canary steps for a new revision."""

    steps: list[CanaryStep] = Field(
        default_factory=lambda: [CanaryStep(weight=10, pause_seconds=300), CanaryStep(weight=50, pause_seconds=300)],
        max_length=20,
        description="Weights must strictly increase; after the last step the canary is promoted to 100%.",
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "self.all(s, self.filter(t, t.weight == s.weight).size() == 1) && self.map(s, s.weight).isSorted()",
                 "message": "rollout.steps weights must be strictly increasing"}
            ]
        },
    )
    traffic_routing: TrafficRouting = Field(default_factory=TrafficRouting, description="Traffic splitting.")

    @field_validator("steps")
    @classmethod
    def _weights_increase(cls, steps: list[CanaryStep]) -> list[CanaryStep]:
        weights = [s.weight for s in steps]
        if any(b <= a for a, b in zip(weights, weights[1:])):
            raise ValueError("rollout.steps weights must be strictly increasing")
        return steps


class MetricCheck(KubeModel):
    """A PromQL query whose single value must stay within bounds."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "has(self.max) || has(self.min)", "message": "set max, min or both"}
            ]
        }
    )

    name: str = Field(..., pattern=DNS_LABEL_PATTERN, max_length=63, description="Metric name used in status and events.")
    query: str = Field(
        ..., min_length=1, max_length=4096,
        description="PromQL returning one number; {{revision}} and {{namespace}} are substituted.",
    )
    max: float | None = Field(None, description="Fail when the value is above this.")
    min: float | None = Field(None, description="Fail when the value is below this.")

    @model_validator(mode="after")
    def _has_bound(self) -> "MetricCheck":
        if self.max is None and self.min is None:
            raise ValueError("set max, min or both")
        return self


class AnalysisSpec(KubeModel):
    """Prometheus checks run while the canary takes traffic."""

    prometheus_address: str | None = Field(
        None, pattern=r"^https?://.+", max_length=2048, description="Prometheus base URL; defaults to the operator's."
    )
    interval_seconds: int = Field(60, ge=5, le=3600, description="Seconds between measurements.")
    failure_limit: int = Field(2, ge=0, le=100, description="Failed measurements tolerated before rollback.")
    on_no_data: Literal["pass", "fail", "inconclusive"] = Field(
        "inconclusive", description="How an empty query result counts."
    )
    inconclusive_limit: int = Field(5, ge=0, le=100, description="Inconclusive measurements tolerated before pausing.")
    metrics: list[MetricCheck] = Field(default_factory=list, max_length=10, description="Checks; none means promote on time alone.")


class ModelDeploymentSpec(KubeModel):
    """What to serve and how to roll a new revision out."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "has(self.model.fineTuneJobRef) || self.serving.mode == 'merged' || has(self.model.baseModel)",
                 "message": "model.baseModel is required when model.uri is an adapter (serving.mode adapter)",
                 "fieldPath": ".model.baseModel"}
            ]
        }
    )

    model: ModelSource = Field(..., description="The model to serve.")
    serving: ServingSpec = Field(default_factory=ServingSpec, description="vLLM settings.")
    rollout: RolloutSpec = Field(default_factory=RolloutSpec, description="Canary steps.")
    analysis: AnalysisSpec = Field(default_factory=AnalysisSpec, description="Automatic analysis and rollback.")
    paused: bool = Field(False, description="Hold the rollout at its current step.")
    abort: bool = Field(False, description="Roll the canary back now and stay on the stable revision.")

    @model_validator(mode="after")
    def _adapter_needs_base(self) -> "ModelDeploymentSpec":
        if self.model.uri is not None and self.serving.mode == "adapter" and self.model.base_model is None:
            raise ValueError("model.baseModel is required when model.uri is an adapter (serving.mode adapter)")
        return self


class Revision(KubeModel):
    """One served model version."""

    revision: str = Field(..., description="Short hash of the model source.")
    model_uri: str | None = Field(None, description="What it serves.")
    fine_tune_job: str | None = Field(None, description="The FineTuneJob it came from, if any.")


class Measurement(KubeModel):
    """One analysis result."""

    metric: str = Field(..., description="MetricCheck name.")
    phase: Literal["Successful", "Failed", "Inconclusive", "Error"] = Field(..., description="Outcome.")
    value: float | None = Field(None, description="The value the query returned.")
    message: str | None = Field(None, description="Why, for errors and no-data.")
    time: datetime | None = Field(None, description="When it was taken.")


class ModelDeploymentStatus(KubeModel):
    """Observed state of serving and rollout."""

    phase: DeploymentPhase | None = Field(None, description="Progressing, Paused, Healthy, Degraded or RolledBack.")
    observed_generation: int | None = Field(None, description="The metadata.generation last acted on.")
    conditions: list[Condition] = Field(default_factory=list, description="kstatus conditions: Ready, Reconciling, Stalled.")
    stable: Revision | None = Field(None, description="Revision taking the rest of the traffic.")
    canary: Revision | None = Field(None, description="Revision being rolled out.")
    current_step: int | None = Field(None, description="Index into rollout.steps.")
    canary_weight: int | None = Field(None, description="Canary share of traffic now, in percent.")
    measurements: list[Measurement] = Field(default_factory=list, max_length=50, description="Recent analysis results.")
    endpoint: str | None = Field(None, description="In-cluster URL of the OpenAI-compatible API.")
    message: str | None = Field(None, description="What is happening, or what to fix.")
