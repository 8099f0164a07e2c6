"""ModelDeployment: serving a fine-tuned model with vLLM behind a weighted canary.

Commands for people and for GitOps are the same spec fields: `paused` and
`abort` are states; `promote`, `promoteFull` and `retry` are tokens acted on
once each time their value changes (like `kubectl rollout restart`'s
restartedAt), so a Git commit and a `kubectl patch` are one mechanism and a
re-sync of the same manifest never repeats a command.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from .common import (
    DNS_LABEL_PATTERN,
    DNS_SUBDOMAIN_PATTERN,
    IMAGE_PATTERN,
    Condition,
    KubeModel,
    PlacementSpec,
    Quantity,
    SecretRef,
)
from .finetunejob import URI_PATTERN

DeploymentPhase = Literal["Progressing", "Paused", "Healthy", "Degraded", "RolledBack"]
MeasurementPhase = Literal["Successful", "Failed", "Inconclusive", "Error"]
BuiltinCheck = Literal["error-rate", "ttft-p95", "latency-p95"]
# vLLM accepts these --max-lora-rank values; an adapter's rank is rounded up to the next one.
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


class FineTuneJobRef(KubeModel):
    """A FineTuneJob in the same namespace."""

    name: str = Field(..., pattern=DNS_SUBDOMAIN_PATTERN, max_length=253, description="Name of the FineTuneJob.")


class ModelStorage(KubeModel):
    """How serving pods reach S3-compatible storage to pull weights and adapters."""

    endpoint: str | None = Field(None, pattern=r"^https?://.+", max_length=2048, description="S3 endpoint URL for non-AWS stores.")
    region: str | None = Field(None, max_length=64, description="S3 region.")
    credentials_secret: SecretRef | None = Field(
        None, description="Secret with keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and optionally AWS_SESSION_TOKEN)."
    )


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
        None, description="Serve the outputs of this FineTuneJob once it has Succeeded; each new success is a new revision."
    )
    uri: str | None = Field(None, pattern=URI_PATTERN, max_length=2048, description="Adapter or full-model location.")
    base_model: str | None = Field(
        None, pattern=URI_PATTERN, max_length=2048, description="Base model for an adapter given by uri (serving.mode adapter)."
    )
    lora_rank: int | None = Field(
        None, ge=1, le=1024,
        description="Rank of the adapter given by uri (sets vLLM --max-lora-rank); taken from the FineTuneJob otherwise.",
    )
    storage: ModelStorage | None = Field(
        None, description="Storage access for s3:// sources; defaults to the FineTuneJob's storage, then the operator's default.",
    )
    max_regressions: int = Field(
        0, ge=0,
        description="A FineTuneJob whose evaluation counts more regressions against its base than this is not rolled out.",
    )

    @model_validator(mode="after")
    def _exactly_one_source(self) -> "ModelSource":
        # Mirrors the CEL rule above, for local runs that never meet the apiserver.
        if (self.fine_tune_job_ref is None) == (self.uri is None):
            raise ValueError("set exactly one of model.fineTuneJobRef or model.uri")
        return self


class ServingSpec(PlacementSpec):
    """How vLLM serves the model."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "!has(self.tensorParallelSize) || !has(self.gpus) || self.tensorParallelSize <= self.gpus",
                 "message": "serving.tensorParallelSize must not exceed serving.gpus",
                 "fieldPath": ".tensorParallelSize"}
            ]
        }
    )

    image: str = Field("vllm/vllm-openai:v0.11.0", pattern=IMAGE_PATTERN, max_length=512, description="vLLM server image.")
    replicas: int = Field(1, ge=1, le=1000, description="Serving replicas of the stable revision.")
    gpus: int = Field(1, ge=0, le=16, description="GPUs per replica.")
    shm_size: Quantity = Field("8Gi", description="Size of the in-memory /dev/shm (tensor-parallel workers use it).")
    served_model_name: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$", max_length=253,
        description="Name clients use in the OpenAI API; defaults to the resource name.",
    )
    max_model_len: int | None = Field(None, ge=16, description="Context length vLLM allocates for (--max-model-len).")
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0, description="Share of GPU memory vLLM may use, in (0, 1].")
    tensor_parallel_size: int = Field(1, ge=1, le=16, description="GPUs one model is sharded over; at most gpus.")
    mode: Literal["adapter", "merged"] = Field(
        "adapter", description="adapter: base model + --lora-modules; merged: serve merged full weights."
    )
    extra_args: list[str] = Field(default_factory=list, max_length=50, description="Extra vLLM command-line arguments.")
    port: int = Field(8000, ge=1, le=65535, description="Container port of the OpenAI-compatible server.")
    startup_timeout_seconds: int = Field(
        1800, ge=60, le=86400, description="How long a replica may take to load the model before it is restarted."
    )
    shutdown_timeout_seconds: int = Field(
        45, ge=0, le=3600, description="Seconds vLLM drains in-flight requests on shutdown (--shutdown-timeout)."
    )
    puller_image: str | None = Field(
        None, pattern=IMAGE_PATTERN, max_length=512,
        description="Image of the init container that pulls weights from S3; defaults to the trainer image."
    )

    @model_validator(mode="after")
    def _tp_fits(self) -> "ServingSpec":
        if self.tensor_parallel_size > max(self.gpus, 1):
            raise ValueError("serving.tensorParallelSize must not exceed serving.gpus")
        return self


class CanaryStep(KubeModel):
    """Send weight percent of traffic to the canary, then wait."""

    weight: int = Field(..., ge=1, le=100, description="Canary share of traffic, in percent (1..100).")
    pause_seconds: int | None = Field(
        None, ge=0, description="How long to analyse at this weight before the next step; omitted means wait for spec.promote."
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
    scale_down_delay_seconds: int = Field(
        30, ge=0, le=86400,
        description="After an abort or a promotion, how long the replaced revision keeps its pods (in-flight requests finish).",
    )

    @field_validator("steps")
    @classmethod
    def _weights_increase(cls, steps: list[CanaryStep]) -> list[CanaryStep]:
        weights = [s.weight for s in steps]
        if any(b <= a for a, b in zip(weights, weights[1:])):
            raise ValueError("rollout.steps weights must be strictly increasing")
        return steps


class BaselineComparison(KubeModel):
    """Compare the canary with the stable revision on the same query."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "has(self.maxDifference) || has(self.maxRatio)", "message": "set maxDifference, maxRatio or both"}
            ]
        }
    )

    max_difference: float | None = Field(None, description="Fail when canary - stable is above this.")
    max_ratio: float | None = Field(
        None, gt=0, description="Fail when canary / stable is above this (not applied when the stable value is 0)."
    )

    @model_validator(mode="after")
    def _has_bound(self) -> "BaselineComparison":
        if self.max_difference is None and self.max_ratio is None:
            raise ValueError("set maxDifference, maxRatio or both")
        return self


class MetricCheck(KubeModel):
    """One check: a built-in vLLM signal or a PromQL query, with absolute and/or baseline bounds."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "has(self.max) || has(self.min) || has(self.baseline)", "message": "set max, min, baseline or a mix"},
                {"rule": "has(self.builtin) != has(self.query)", "message": "set exactly one of builtin or query"},
            ]
        }
    )

    name: str = Field(..., pattern=DNS_LABEL_PATTERN, max_length=63, description="Metric name used in status, events and metrics.")
    builtin: BuiltinCheck | None = Field(
        None,
        description="A ready-made vLLM check: error-rate (share of HTTP 5xx), ttft-p95 or latency-p95 (seconds).",
    )
    query: str | None = Field(
        None, min_length=1, max_length=4096,
        description=("PromQL returning one number; {{revision}}, {{namespace}}, {{model}} (served model name) and "
                     "{{interval}} are substituted, escaped for PromQL string literals."),
    )
    max: float | None = Field(None, description="Fail when the value is above this.")
    min: float | None = Field(None, description="Fail when the value is below this.")
    baseline: BaselineComparison | None = Field(None, description="Also compare with the stable revision's value.")

    @model_validator(mode="after")
    def _well_formed(self) -> "MetricCheck":
        if self.max is None and self.min is None and self.baseline is None:
            raise ValueError("set max, min, baseline or a mix")
        if (self.builtin is None) == (self.query is None):
            raise ValueError("set exactly one of builtin or query")
        return self


class NoDataPolicy(KubeModel):
    """What too little canary traffic means: wait for samples, then a declared outcome."""

    min_samples: int = Field(
        20, ge=0, le=1_000_000, description="Canary requests needed within one interval before a measurement counts."
    )
    timeout_seconds: int = Field(
        900, ge=0, le=86400, description="How long a step may wait for enough samples before the outcome applies."
    )
    outcome: Literal["Pause", "Abort", "Continue"] = Field(
        "Pause",
        description=("After the timeout: Pause (hold the canary weight, say why), Abort (roll back), "
                     "or Continue (go on without evidence; recorded in status and events)."),
    )


class AnalysisSpec(KubeModel):
    """Prometheus checks run while the canary takes traffic (Argo Rollouts' limits semantics)."""

    prometheus_address: str | None = Field(
        None, pattern=r"^https?://.+", max_length=2048, description="Prometheus base URL; defaults to the operator's."
    )
    interval_seconds: int = Field(60, ge=1, le=3600, description="Seconds between measurements; also the query window.")
    failure_limit: int = Field(1, ge=0, le=100, description="Rollback when more measurements than this failed.")
    inconclusive_limit: int = Field(0, ge=0, le=100, description="Pause when more measurements than this were inconclusive.")
    consecutive_error_limit: int = Field(
        4, ge=0, le=100, description="Query errors in a row tolerated before the error outcome applies."
    )
    error_outcome: Literal["Abort", "Pause"] = Field(
        "Abort", description="When consecutive errors exceed the limit (e.g. Prometheus is down): Abort or Pause."
    )
    revision_label: str = Field(
        "revision", pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$", max_length=63,
        description="Prometheus label carrying the pod label kubetune.io/revision (set by your relabelling).",
    )
    namespace_label: str = Field(
        "namespace", pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$", max_length=63, description="Prometheus label carrying the namespace.",
    )
    no_data: NoDataPolicy = Field(default_factory=NoDataPolicy, description="Waiting for enough canary traffic.")
    metrics: list[MetricCheck] = Field(
        default_factory=list, max_length=10,
        description="Checks; none means steps advance on time alone (status says so).",
    )


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
    paused: bool = Field(False, description="Hold the rollout at its current step (analysis keeps running and can still roll back).")
    abort: bool = Field(False, description="Roll the canary back now and start no canary while true.")
    promote: str | None = Field(
        None, max_length=63, description="Command token: a new value leaves the current step now (e.g. a step without pauseSeconds)."
    )
    promote_full: str | None = Field(
        None, max_length=63, description="Command token: a new value promotes the canary to 100% now, skipping steps and analysis."
    )
    retry: str | None = Field(
        None, max_length=63, description="Command token: a new value rolls the last aborted revision out again from step 1."
    )

    @model_validator(mode="after")
    def _adapter_needs_base(self) -> "ModelDeploymentSpec":
        if self.model.uri is not None and self.serving.mode == "adapter" and self.model.base_model is None:
            raise ValueError("model.baseModel is required when model.uri is an adapter (serving.mode adapter)")
        return self

    @property
    def gateway(self) -> bool:
        return bool(self.rollout.traffic_routing.gateway_parent_refs)


class Revision(KubeModel):
    """One served model version."""

    revision: str = Field(..., description="Short hash of the model source and serving settings.")
    model_uri: str | None = Field(None, description="What it serves (adapter or merged weights).")
    base_model_uri: str | None = Field(None, description="The base model under an adapter.")
    fine_tune_job: str | None = Field(None, description="The FineTuneJob it came from, if any.")
    lora_rank: int | None = Field(None, description="Adapter rank.")


class Measurement(KubeModel):
    """One analysis result."""

    metric: str = Field(..., description="MetricCheck name (or 'samples' for the traffic gate).")
    phase: MeasurementPhase = Field(..., description="Successful, Failed, Inconclusive or Error.")
    revision: str | None = Field(None, description="The canary revision measured.")
    value: float | None = Field(None, description="The canary's value.")
    baseline: float | None = Field(None, description="The stable revision's value, for baseline checks.")
    threshold: str | None = Field(None, description="The bound that applied, e.g. 'max 0.05' or 'ratio <= 1.2 vs stable'.")
    message: str | None = Field(None, description="Why, for failures, errors and missing data.")
    time: datetime | None = Field(None, description="When it was taken.")


class AnalysisCounts(KubeModel):
    """Counters of the running analysis; kept in status so an operator restart neither loses nor doubles them."""

    successful: int = Field(0, description="Successful measurements.")
    failed: int = Field(0, description="Failed measurements.")
    inconclusive: int = Field(0, description="Inconclusive measurements.")
    errors: int = Field(0, description="Error measurements in total.")
    consecutive_errors: int = Field(0, description="Error measurements in a row.")
    last_measured_at: datetime | None = Field(None, description="When the last round of measurements was taken.")
    waiting_since: datetime | None = Field(None, description="Since when the canary lacks enough samples.")
    step_rounds: int = Field(0, description="Measurement rounds that passed at the current step (a step needs one to complete).")


class AbortedRevision(KubeModel):
    """A revision that was rolled back; never rolled out again unless spec.retry changes."""

    revision: str = Field(..., description="The revision.")
    reason: str = Field(..., description="CamelCase reason, e.g. AnalysisFailed, ManualAbort, NoData, AnalysisError.")
    message: str | None = Field(None, description="Metric, value, threshold.")
    time: datetime | None = Field(None, description="When it was rolled back.")


class Commands(KubeModel):
    """The command tokens already acted on."""

    promote: str | None = Field(None, description="Last spec.promote acted on.")
    promote_full: str | None = Field(None, description="Last spec.promoteFull acted on.")
    retry: str | None = Field(None, description="Last spec.retry acted on.")


class ModelDeploymentStatus(KubeModel):
    """Observed state of serving and rollout."""

    phase: DeploymentPhase | None = Field(None, description="Progressing, Paused, Healthy, Degraded or RolledBack.")
    observed_generation: int | None = Field(None, description="The metadata.generation last acted on.")
    conditions: list[Condition] = Field(default_factory=list, description="kstatus conditions: Ready, Reconciling, Stalled.")
    stable: Revision | None = Field(None, description="Revision taking the rest of the traffic.")
    canary: Revision | None = Field(None, description="Revision being rolled out.")
    current_step: int | None = Field(None, description="Index into rollout.steps (0-based); equal to the step count while promoting.")
    step_started_at: datetime | None = Field(None, description="When the current step began.")
    canary_weight: int | None = Field(None, description="Canary share of traffic asked for, in percent.")
    achieved_weight: int | None = Field(
        None, description="Canary share actually served, in percent (replica ratio can only approximate the asked weight)."
    )
    analysis: AnalysisCounts | None = Field(None, description="Counters of the canary's analysis.")
    measurements: list[Measurement] = Field(default_factory=list, max_length=50, description="Recent analysis results, newest last.")
    aborted: list[AbortedRevision] = Field(default_factory=list, max_length=20, description="Rolled-back revisions, newest last.")
    commands: Commands | None = Field(None, description="Command tokens already acted on.")
    held: str | None = Field(
        None, description="Why the rollout is held at its step (AnalysisInconclusive, AnalysisError, NoData) until spec.promote or spec.abort."
    )
    endpoint: str | None = Field(None, description="In-cluster URL of the OpenAI-compatible API.")
    message: str | None = Field(None, description="What is happening, or what to fix.")
