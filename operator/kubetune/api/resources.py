"""The two kinds, their plurals, short names and printer columns: defined once, used by the
CRD generator, the API wrapper and the kopf handlers."""

from __future__ import annotations

from dataclasses import dataclass, field

from .common import GROUP, VERSION, KubeModel
from .finetunejob import FineTuneJobSpec, FineTuneJobStatus
from .modeldeployment import ModelDeploymentSpec, ModelDeploymentStatus


@dataclass(frozen=True)
class ResourceDef:
    kind: str
    plural: str
    short_names: tuple[str, ...]
    spec: type[KubeModel]
    status: type[KubeModel]
    description: str
    printer_columns: tuple[dict[str, str], ...] = field(default_factory=tuple)

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"

    @property
    def api_version(self) -> str:
        return f"{GROUP}/{VERSION}"

    @property
    def kopf_resource(self) -> tuple[str, str, str]:
        """(group, version, plural), as kopf's decorators take it."""
        return (GROUP, VERSION, self.plural)



AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}

FINETUNEJOB = ResourceDef(
    kind="FineTuneJob",
    plural="finetunejobs",
    short_names=("ftj",),
    spec=FineTuneJobSpec,
    status=FineTuneJobStatus,
    description="Fine-tunes a base model with QLoRA, LoRA or full training on GPU pods, checkpointing to S3.",
    printer_columns=(
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Progress", "type": "integer", "jsonPath": ".status.progress.percent", "description": "Percent of steps done"},
        {"name": "Step", "type": "integer", "jsonPath": ".status.progress.step", "description": "Optimizer steps done"},
        {"name": "Loss", "type": "number", "jsonPath": ".status.progress.trainLoss"},
        {"name": "Eval", "type": "number", "jsonPath": ".status.progress.evalLoss"},
        {"name": "ETA", "type": "integer", "jsonPath": ".status.progress.etaSeconds", "description": "Estimated seconds left"},
        AGE,
        {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1},
    ),
)

MODELDEPLOYMENT = ResourceDef(
    kind="ModelDeployment",
    plural="modeldeployments",
    short_names=("mdep",),
    spec=ModelDeploymentSpec,
    status=ModelDeploymentStatus,
    description="Serves a model with vLLM and rolls new revisions out behind a Prometheus-analysed canary.",
    printer_columns=(
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Stable", "type": "string", "jsonPath": ".status.stable.revision"},
        {"name": "Canary", "type": "string", "jsonPath": ".status.canary.revision"},
        {"name": "Step", "type": "integer", "jsonPath": ".status.currentStep", "description": "Canary step index (0-based)"},
        {"name": "Weight", "type": "integer", "jsonPath": ".status.achievedWeight", "description": "Canary share actually served, percent"},
        {"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"},
        {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1},
        AGE,
    ),
)

RESOURCES: tuple[ResourceDef, ...] = (FINETUNEJOB, MODELDEPLOYMENT)
