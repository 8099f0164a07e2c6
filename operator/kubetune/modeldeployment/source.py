"""Which revision a ModelDeployment should serve now: pure, from its spec and (maybe) a FineTuneJob.

A revision is a short hash of everything that changes what the pods serve:
the sources, the FineTuneJob incarnation (uid and completion time, so a job
that succeeds again with new outputs is a new revision) and the serving
settings except the replica count (scaling is not a new version).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from kubetune.api import FineTuneJobSpec, FineTuneJobStatus, ModelDeploymentSpec
from kubetune.api.modeldeployment import ModelStorage
from kubetune.api.common import SecretRef
from kubetune.builders.serving import ServedRevision, serving_problems
from kubetune.settings import OperatorSettings


@dataclass(frozen=True)
class Resolution:
    """The revision to serve, or why there is none. `stalled`: waiting will not help, a fix is needed."""

    revision: ServedRevision | None
    reason: str
    message: str
    stalled: bool = False


def revision_hash(spec: ModelDeploymentSpec, sources: dict) -> str:
    serving = spec.serving.to_wire()
    serving.pop("replicas", None)
    blob = json.dumps({"sources": sources, "serving": serving}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def _default_storage(settings: OperatorSettings) -> ModelStorage | None:
    if settings.default_storage_uri is None:
        return None
    secret = SecretRef(name=settings.default_storage_secret) if settings.default_storage_secret else None
    return ModelStorage(endpoint=settings.default_storage_endpoint, region=settings.default_storage_region,
                        credentials_secret=secret)


def _from_uri(spec: ModelDeploymentSpec, settings: OperatorSettings) -> tuple[dict, ModelStorage | None]:
    model = spec.model
    sources = {"uri": model.uri, "baseModel": model.base_model, "loraRank": model.lora_rank, "mode": spec.serving.mode}
    return sources, model.storage or _default_storage(settings)


def _from_job(spec: ModelDeploymentSpec, ftj: dict | None, settings: OperatorSettings) -> Resolution | tuple[dict, ModelStorage | None]:
    name = spec.model.fine_tune_job_ref.name
    if ftj is None:
        return Resolution(None, "FineTuneJobNotFound", f"waiting for FineTuneJob {name} to exist")
    status = FineTuneJobStatus.model_validate(ftj.get("status") or {})
    job_spec = FineTuneJobSpec.model_validate(ftj["spec"])
    if status.phase == "Failed":
        return Resolution(None, "FineTuneJobFailed", f"FineTuneJob {name} failed, nothing new to roll out: "
                          f"{status.message or 'see its status'}", stalled=True)
    if status.phase != "Succeeded" or status.artifacts is None:
        return Resolution(None, "FineTuneJobNotSucceeded",
                          f"waiting for FineTuneJob {name} to succeed (phase {status.phase or 'Pending'})")
    regressions = (status.evaluation.regressions if status.evaluation else None) or 0
    if regressions > spec.model.max_regressions:
        return Resolution(None, "EvaluationRegressed",
                          f"FineTuneJob {name} is not rolled out: its evaluation shows {regressions} regressions against "
                          f"the base model (model.maxRegressions is {spec.model.max_regressions})"
                          + (f"; see {status.artifacts.evaluation_report_uri}"
                             if status.artifacts.evaluation_report_uri else ""), stalled=True)
    artifacts = status.artifacts
    if spec.serving.mode == "adapter":
        if artifacts.adapter_uri is None:
            return Resolution(None, "UnservableSource", f"FineTuneJob {name} trained full weights and has no adapter; "
                              "set serving.mode to merged", stalled=True)
        model_uri, base, rank = artifacts.adapter_uri, job_spec.base_model.uri, job_spec.lora.r
    else:
        if artifacts.merged_uri is None:
            return Resolution(None, "UnservableSource", f"serving.mode merged needs merged weights, but FineTuneJob {name} "
                              "wrote only an adapter; set its output.mergeAdapter or use serving.mode adapter", stalled=True)
        model_uri, base, rank = artifacts.merged_uri, None, None
    sources = {"uri": model_uri, "baseModel": base, "loraRank": rank, "mode": spec.serving.mode,
               "job": {"name": name, "uid": ftj["metadata"]["uid"], "completed": str(status.completion_time)}}
    storage = spec.model.storage
    if storage is None and job_spec.storage is not None:
        storage = ModelStorage(endpoint=job_spec.storage.endpoint, region=job_spec.storage.region,
                               credentials_secret=job_spec.storage.credentials_secret)
    return sources, storage or _default_storage(settings)


def resolve(spec: ModelDeploymentSpec, ftj: dict | None, settings: OperatorSettings) -> Resolution:
    """The revision to serve now. `ftj`: the referenced FineTuneJob as stored (None when absent or unused)."""
    if spec.model.fine_tune_job_ref is not None:
        found = _from_job(spec, ftj, settings)
        if isinstance(found, Resolution):
            return found
        sources, storage = found
    else:
        sources, storage = _from_uri(spec, settings)
    revision = ServedRevision(
        revision=revision_hash(spec, sources),
        mode=spec.serving.mode,
        model_uri=sources["uri"],
        base_model_uri=sources["baseModel"] if spec.serving.mode == "adapter" else None,
        lora_rank=sources["loraRank"] if spec.serving.mode == "adapter" else None,
        storage=storage,
        fine_tune_job=spec.model.fine_tune_job_ref.name if spec.model.fine_tune_job_ref else None,
    )
    problems = serving_problems(spec, revision)
    if problems:
        return Resolution(None, "UnservableSource", "cannot serve this model: " + "; ".join(problems), stalled=True)
    return Resolution(revision, "Resolved", f"revision {revision.revision} serves {revision.model_uri}")
