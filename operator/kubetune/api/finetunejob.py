"""FineTuneJob: the typed spec and status, shared by the CRD, the operator and the trainer."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from .common import (
    DNS_SUBDOMAIN_PATTERN,
    IMAGE_PATTERN,
    Condition,
    KubeModel,
    PlacementSpec,
    Quantity,
    SecretRef,
)

# A Kueue LocalQueue name that is also a valid label value (the Job carries it as a label).
QUEUE_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"

# Model and data locations. Relative paths are resolved against the manifest's
# directory by `kubetune train`; on a cluster the operator rejects them.
URI_PATTERN = r"^(s3://[^/]+/.*|hf://[^/]+/.+|pkg://[A-Za-z0-9_.]+/.+|file:///.+|/.+|\.{1,2}/.+)$"

DataFormat = Literal["auto", "chat", "alpaca", "prompt-completion", "text"]
Method = Literal["qlora", "lora", "full"]
Phase = Literal["Pending", "Queued", "Validating", "Running", "Succeeded", "Failed", "Suspended"]


class BaseModelSource(KubeModel):
    """Where the model to fine-tune comes from."""

    uri: str = Field(
        ...,
        pattern=URI_PATTERN,
        max_length=2048,
        description=(
            "Model location: s3://bucket/prefix (a saved Hugging Face model directory), hf://org/name "
            "(needs a reachable hub), pkg://python_package/file (a file shipped inside an installed Python "
            "package, e.g. a GGUF), or a path. A path or URI ending in .gguf is loaded from GGUF."
        ),
    )
    revision: str | None = Field(None, max_length=255, description="Hub revision (branch, tag or commit) for hf:// models.")
    token_secret: SecretRef | None = Field(
        None, description="Secret whose key HF_TOKEN authenticates hf:// downloads (gated models)."
    )
    trust_remote_code: bool = Field(False, description="Allow model code from the repository to run. Leave off unless you trust it.")


class DatasetSpec(KubeModel):
    """Training data: JSONL files, one example per line."""

    train: str = Field(..., pattern=URI_PATTERN, max_length=2048, description="Training JSONL (s3://, hf://, or a path).")
    validation: str | None = Field(
        None, pattern=URI_PATTERN, max_length=2048,
        description="Held-out JSONL for evaluation; when absent, validationSplit of train is held out.",
    )
    test: str | None = Field(
        None, pattern=URI_PATTERN, max_length=2048,
        description="Optional JSONL used only by the final base-vs-tuned evaluation report.",
    )
    format: DataFormat = Field(
        "auto",
        description="Example format: chat (messages), alpaca (instruction/input/output), prompt-completion, text, or auto to detect.",
    )
    validation_split: float = Field(
        0.1, ge=0.0, lt=0.5, description="Share of train held out for evaluation when no validation file is given; in [0, 0.5)."
    )
    seed: int = Field(42, ge=0, description="Seed for the validation split and shuffling.")


class LoraSpec(KubeModel):
    """LoRA adapter settings (methods lora and qlora)."""

    r: int = Field(16, ge=1, le=1024, description="Rank of the low-rank update.")
    alpha: int = Field(32, ge=1, le=4096, description="Scaling numerator; the update is scaled by alpha / r.")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input, in [0, 1).")
    target_modules: list[str] = Field(
        default_factory=lambda: ["all-linear"],
        max_length=64,
        description="Module names to adapt; the default all-linear adapts every linear layer except the output head.",
    )


class QuantizationSpec(KubeModel):
    """4-bit quantization of the frozen base weights (method qlora only)."""

    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type: nf4 (recommended) or fp4.")
    double_quant: bool = Field(True, description="Quantize the quantization constants too (saves ~0.4 bit per weight).")
    compute_dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="Dtype of the matrix multiplications on dequantized weights."
    )


class Hyperparameters(KubeModel):
    """Optimisation settings."""

    epochs: float = Field(3.0, gt=0, le=1000, description="Passes over the training data (fractions allowed).")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps; overrides epochs when set.")
    learning_rate: float = Field(2e-4, gt=0, lt=1, description="Peak learning rate.")
    batch_size: int = Field(4, ge=1, le=4096, description="Examples (or packed sequences) per device per step.")
    gradient_accumulation_steps: int = Field(4, ge=1, le=4096, description="Micro-batches accumulated into one optimizer step.")
    warmup_ratio: float = Field(0.03, ge=0.0, le=0.5, description="Share of steps spent warming the learning rate up.")
    scheduler: Literal["cosine", "linear", "constant"] = Field("cosine", description="Learning-rate schedule after warmup.")
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, description="AdamW weight decay.")
    max_seq_length: int = Field(1024, ge=16, le=131072, description="Tokens per sequence; longer examples are reported, not silently cut.")
    packing: bool = Field(True, description="Pack several examples into one sequence (attention does not cross examples).")
    gradient_checkpointing: bool = Field(True, description="Recompute activations in the backward pass to save memory.")
    seed: int = Field(42, ge=0, description="Seed for weight init of the adapter, dropout and data order.")
    logging_steps: int = Field(10, ge=1, description="Report progress every N optimizer steps.")


class EarlyStoppingSpec(KubeModel):
    """Stop when the evaluation loss stops improving."""

    enabled: bool = Field(False, description="Turn early stopping on.")
    patience: int = Field(3, ge=1, le=1000, description="Evaluations without improvement before stopping.")
    min_delta: float = Field(0.0, ge=0.0, description="Smallest decrease of eval loss that counts as improvement.")


class EvaluationSpec(KubeModel):
    """Evaluation during training and the final report."""

    eval_steps: int = Field(50, ge=1, description="Evaluate on the held-out split every N optimizer steps.")
    compare_with_base: bool = Field(True, description="Also evaluate the untuned base model and report the difference.")
    max_samples: int = Field(200, ge=1, le=100000, description="Held-out examples used for the final report.")
    max_new_tokens: int | None = Field(
        None, ge=1, le=4096,
        description=(
            "Cap on generated tokens per answer in the final report. By default the budget is the longest "
            "reference answer plus max(8, 25%), so every answer can be scored whatever its length."
        ),
    )
    answer_shape: Literal["auto", "json", "label", "short", "text"] = Field(
        "auto",
        description=(
            "What the answers look like, which picks the report's metrics: json (valid-JSON rate, structural "
            "match, per-field accuracy), label (accuracy, macro-F1), short (exact match), text (ROUGE-L). "
            "auto detects it from the reference answers."
        ),
    )


class ResourcesSpec(PlacementSpec):
    """Where and on what the trainer pods run."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                # has() guards: the apiserver also checks this rule against the bare `default: {}`.
                {"rule": "!has(self.nodes) || self.nodes == 1 || !has(self.gpusPerNode) || self.gpusPerNode >= 1",
                 "message": "nodes > 1 needs gpusPerNode >= 1",
                 "fieldPath": ".nodes"}
            ]
        }
    )

    gpus_per_node: int = Field(1, ge=0, le=16, description="GPUs per trainer pod (one pod per node).")
    nodes: int = Field(1, ge=1, le=64, description="Trainer pods; more than one runs torch distributed over an Indexed Job.")
    shm_size: Quantity = Field("8Gi", description="Size of the in-memory /dev/shm (used by data loaders and NCCL).")
    priority_class_name: str | None = Field(
        None, pattern=DNS_SUBDOMAIN_PATTERN, max_length=253, description="PriorityClass of the pods."
    )

    @model_validator(mode="after")
    def _multi_node_needs_gpus(self) -> "ResourcesSpec":
        # Mirrors the CEL rule above, for local runs that never meet the apiserver.
        if self.nodes > 1 and self.gpus_per_node < 1:
            raise ValueError("nodes > 1 needs gpusPerNode >= 1")
        return self


class StorageSpec(KubeModel):
    """S3-compatible storage for checkpoints and artifacts."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "self.uri.startsWith('s3://')", "message": "storage.uri must be an s3://bucket/prefix URI",
                 "fieldPath": ".uri"}
            ]
        }
    )

    uri: str = Field(
        ..., max_length=2048,
        description="s3://bucket/prefix; the job writes checkpoints/, adapter/ and reports/ under <prefix>/<namespace>/<name>/<uid>/ (kubetune train: <prefix>/<namespace>/<name>/). (Local runs also accept a directory.)",
    )
    endpoint: str | None = Field(None, pattern=r"^https?://.+", max_length=2048, description="S3 endpoint URL for non-AWS stores (MinIO, Ceph, ...).")
    region: str | None = Field(None, max_length=64, description="S3 region.")
    credentials_secret: SecretRef | None = Field(
        None, description="Secret with keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and optionally AWS_SESSION_TOKEN)."
    )
    checkpoint_interval_steps: int = Field(100, ge=1, description="Save a checkpoint every N optimizer steps.")
    checkpoint_interval_minutes: int | None = Field(None, ge=1, description="Also save when this many minutes passed since the last one.")
    checkpoints_kept: int = Field(2, ge=1, le=100, description="Newest checkpoints kept (the best one is always kept too).")


class OutputSpec(KubeModel):
    """What the job produces besides the adapter."""

    merge_adapter: bool = Field(False, description="Also write full weights with the adapter merged in (methods lora/qlora).")


class ImagesSpec(KubeModel):
    """Image overrides."""

    trainer: str | None = Field(
        None, pattern=IMAGE_PATTERN, max_length=512, description="Trainer image; defaults to the operator's configured image."
    )
    pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field("IfNotPresent", description="Image pull policy.")


class FineTuneJobSpec(KubeModel):
    """What to fine-tune, on which data, how, and where."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "!has(self.quantization) || self.method == 'qlora'",
                 "message": "quantization is only allowed with method qlora", "fieldPath": ".quantization",
                 "reason": "FieldValueForbidden"},
            ]
        }
    )

    base_model: BaseModelSource = Field(..., description="The model to start from.")
    dataset: DatasetSpec = Field(..., description="Training (and optional validation/test) data.")
    method: Method = Field("qlora", description="qlora (4-bit base + LoRA, least memory), lora, or full fine-tuning.")
    lora: LoraSpec = Field(default_factory=LoraSpec, description="LoRA settings (ignored by method full).")
    quantization: QuantizationSpec | None = Field(
        None, description="4-bit quantization settings; only with method qlora (defaults apply when omitted)."
    )
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters, description="Optimisation settings.")
    early_stopping: EarlyStoppingSpec = Field(default_factory=EarlyStoppingSpec, description="Early stopping on eval loss.")
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec, description="Evaluation settings.")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="Pods, GPUs and placement.")
    storage: StorageSpec | None = Field(
        None, description="Checkpoint and artifact storage; when omitted the operator's default storage is used."
    )
    output: OutputSpec = Field(default_factory=OutputSpec, description="Extra outputs.")
    images: ImagesSpec = Field(default_factory=ImagesSpec, description="Image overrides.")
    suspend: bool = Field(False, description="Stop the trainer pods, keep checkpoints; unsuspend to continue.")
    queue_name: str | None = Field(
        None, pattern=QUEUE_NAME_PATTERN, max_length=63,
        description="Kueue LocalQueue to submit to; the Job's label kueue.x-k8s.io/queue-name, so at most 63 characters.",
    )
    backoff_limit: int = Field(3, ge=0, le=100, description="Failed attempts (not counting preemptions) before the job fails.")
    active_deadline_seconds: int | None = Field(None, ge=1, description="Wall-clock limit for the whole job.")
    resume_from_run: str | None = Field(
        None, pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
        description=(
            "Continue an earlier run of a FineTuneJob with this namespace and name: its metadata.uid, the last "
            "segment of its run root <storage.uri>/<namespace>/<name>/<uid>. Its checkpoints, base-model scores "
            "and metrics are reused. Without it a FineTuneJob always starts a fresh run, also when it is "
            "recreated with the name of a deleted one."
        ),
    )

    @model_validator(mode="after")
    def _quantization_only_with_qlora(self) -> "FineTuneJobSpec":
        # Mirrors the CEL rule above, for local runs that never meet the apiserver.
        if self.quantization is not None and self.method != "qlora":
            raise ValueError("quantization is only allowed with method qlora")
        return self

    def effective_quantization(self) -> QuantizationSpec | None:
        """The quantization that applies: the given one, the defaults for qlora, none otherwise."""
        if self.method != "qlora":
            return None
        return self.quantization or QuantizationSpec()


class Progress(KubeModel):
    """Training progress, as last reported by the trainer."""

    step: int | None = Field(None, description="Optimizer steps done.")
    total_steps: int | None = Field(None, description="Optimizer steps planned.")
    epoch: float | None = Field(None, description="Epochs done (fractional).")
    percent: int | None = Field(None, ge=0, le=100, description="step / totalSteps, in percent.")
    train_loss: float | None = Field(None, description="Latest training loss.")
    eval_loss: float | None = Field(None, description="Latest evaluation loss.")
    tokens_per_second: float | None = Field(None, description="Training throughput over the last interval.")
    eta_seconds: int | None = Field(None, description="Estimated seconds to finish.")
    updated_at: datetime | None = Field(None, description="When the trainer sent this.")


class DatasetSummary(KubeModel):
    """What data validation found."""

    format: str | None = Field(None, description="Detected or declared format.")
    examples: int | None = Field(None, description="Valid training examples after deduplication.")
    validation_examples: int | None = Field(None, description="Held-out examples.")
    invalid_lines: int | None = Field(None, description="Lines rejected (see the report for line numbers).")
    duplicates_removed: int | None = Field(None, description="Exact and normalised duplicates removed.")
    leaked_examples: int | None = Field(None, description="Validation examples that also occur in train.")
    warnings: list[str] = Field(default_factory=list, max_length=50, description="Data-quality warnings.")
    report_uri: str | None = Field(None, description="Where the full validation report is.")


class CheckpointRef(KubeModel):
    """A complete checkpoint (its manifest was written)."""

    uri: str = Field(..., description="Checkpoint location.")
    step: int = Field(..., description="Optimizer step it was taken at.")
    time: datetime | None = Field(None, description="When it completed.")


class Artifacts(KubeModel):
    """Outputs of a successful job."""

    adapter_uri: str | None = Field(None, description="PEFT adapter directory (loads with PeftModel.from_pretrained and vLLM --lora-modules).")
    merged_uri: str | None = Field(None, description="Full weights with the adapter merged (when output.mergeAdapter).")
    evaluation_report_uri: str | None = Field(None, description="JSON report comparing base and tuned models.")
    metrics_uri: str | None = Field(None, description="JSONL history of training/eval metrics.")


class EvaluationSummary(KubeModel):
    """Base vs tuned on the held-out split."""

    samples: int | None = Field(None, description="Examples evaluated.")
    shape: str | None = Field(None, description="Shape of the answers the metrics were chosen for: json, label, short or text.")
    metric: str | None = Field(None, description="The headline metric for that shape: jsonMatch, accuracy, exactMatch or rougeL.")
    base_score: float | None = Field(None, description="Base model's headline metric (a rate in [0, 1]).")
    tuned_score: float | None = Field(None, description="Tuned model's headline metric (a rate in [0, 1]).")
    base_loss: float | None = Field(None, description="Base model loss.")
    tuned_loss: float | None = Field(None, description="Tuned model loss.")
    base_perplexity: float | None = Field(None, description="Base model perplexity.")
    tuned_perplexity: float | None = Field(None, description="Tuned model perplexity.")
    base_exact_match: float | None = Field(None, description="Base exact-match rate (whitespace-normalised) over every scored example.")
    tuned_exact_match: float | None = Field(None, description="Tuned exact-match rate (whitespace-normalised) over every scored example.")
    regressions: int | None = Field(
        None, description="Examples the base answered right and the tuned model gets wrong under the headline metric."
    )
    improvements: int | None = Field(None, description="Examples the base got wrong and the tuned model gets right.")


class FineTuneJobStatus(KubeModel):
    """Observed state, written by the operator (and progress by the trainer)."""

    phase: Phase | None = Field(None, description="Pending, Queued, Validating, Running, Succeeded, Failed or Suspended.")
    observed_generation: int | None = Field(None, description="The metadata.generation last acted on.")
    conditions: list[Condition] = Field(default_factory=list, description="kstatus conditions: Ready, Reconciling, Stalled.")
    progress: Progress | None = Field(None, description="Training progress.")
    dataset: DatasetSummary | None = Field(None, description="Data validation summary.")
    last_checkpoint: CheckpointRef | None = Field(None, description="Newest complete checkpoint.")
    attempts: int | None = Field(None, description="Trainer attempts so far (preemptions included).")
    attempt_start_time: datetime | None = Field(
        None, description="When the newest attempt's trainer pod (rank 0) was created; attempts are counted from it.")
    failed_attempts: int | None = Field(
        None, description="Failed attempts counted against backoffLimit (preemptions and disruptions are not).")
    last_failed_job_uid: str | None = Field(
        None, description="Several nodes: the uid of the newest trainer Job whose failure the operator handled "
                          "(counted, restarted as a gang or failed the job); each is handled once.")
    trainer_job: str | None = Field(
        None, description="The name of the trainer Job; only tokens of its pods may write the trainer's status "
                          "fields (progress, dataset, lastCheckpoint, evaluation).")
    artifacts: Artifacts | None = Field(None, description="Output locations.")
    evaluation: EvaluationSummary | None = Field(None, description="Base vs tuned summary.")
    start_time: datetime | None = Field(None, description="When training first started.")
    completion_time: datetime | None = Field(None, description="When the job finished.")
    message: str | None = Field(None, description="What is happening, or what to fix.")


# Spec fields applied to a trainer Job that already exists; any other change needs a new Job.
APPLIED_TO_EXISTING_JOB = frozenset({"suspend"})
# On the trainer Job: the digest of the spec it was built from (see spec_digest), and that spec
# itself, so that an ignored edit can name the fields it changed.
SPEC_DIGEST_ANNOTATION = "kubetune.io/spec-digest"
BUILT_FROM_ANNOTATION = "kubetune.io/built-from-spec"


def job_spec_wire(spec: FineTuneJobSpec) -> dict:
    """What a trainer Job is built from: the spec without the fields applied to an existing Job.
    Defaults are left out, so a field added to the API later (with its default) does not make
    every running job look changed."""
    return spec.model_dump(mode="json", by_alias=True, exclude_defaults=True, exclude=set(APPLIED_TO_EXISTING_JOB))


def spec_digest(spec: FineTuneJobSpec) -> str:
    return hashlib.sha256(json.dumps(job_spec_wire(spec), sort_keys=True).encode()).hexdigest()[:16]


def changed_fields(before: dict, after: dict, prefix: str = "spec") -> list[str]:
    """Dotted paths (spec.hyperparameters.learningRate) that differ between two spec wires; a list
    counts as one field."""
    out = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if old == new:
            continue
        if isinstance(old, dict) or isinstance(new, dict):  # a section left at its defaults is absent
            old, new = ({} if old is None else old), ({} if new is None else new)
        if isinstance(old, dict) and isinstance(new, dict):
            out.extend(changed_fields(old, new, f"{prefix}.{key}"))
        else:
            out.append(f"{prefix}.{key}")
    return out
