"""The trainer config rides in the Job's pod annotation and reaches CONFIG_PATH through the downward
API: no ConfigMap is built or created, and a spec whose config would not fit is refused up front."""

from __future__ import annotations

import logging
import re

import pytest

from kubetune.api import FineTuneJobSpec
from kubetune.api.resources import FINETUNEJOB
from kubetune.api.trainer_config import CONFIG_ENV, CONFIG_PATH, TrainerConfig
from kubetune.builders.common import Owner
from kubetune.builders.trainer import CONFIG_ANNOTATION, build_job, build_trainer_config, cluster_spec_problems
from kubetune.builders.trainer.config import MAX_CONFIG_ANNOTATION_BYTES, config_annotation_value
from kubetune.context import Context
from kubetune.finetunejob.reconcile import reconcile
from kubetune.settings import OperatorSettings
from tests.unit.fake_kube import FakeKube

pytestmark = pytest.mark.unit

NS = "team-a"
OWNER = Owner(name="support-bot", namespace=NS, uid="0f1e2d3c-aaaa-bbbb-cccc-000000000001")
SETTINGS = OperatorSettings(trainer_image="trainer:1", default_storage_uri="s3://runs")
# Kubernetes' limit on all of an object's annotations together (apimachinery TotalAnnotationSizeLimitB).
K8S_ANNOTATIONS_LIMIT = 256 * 1024
# The identity objects are the per-namespace trainer identity's (tests/unit/test_trainer_identity.py).
IDENTITY_KINDS = {"ServiceAccount", "Role", "RoleBinding"}


def spec_doc(**overrides) -> dict:
    return {"baseModel": {"uri": "s3://models/base"}, "dataset": {"train": "s3://data/train.jsonl"},
            "storage": {"uri": "s3://runs/kubetune", "credentialsSecret": {"name": "s3-creds"}}, **overrides}


def make_spec(**overrides) -> FineTuneJobSpec:
    return FineTuneJobSpec.model_validate(spec_doc(**overrides))


def pod_template(spec: FineTuneJobSpec) -> dict:
    return build_job(OWNER, build_trainer_config(OWNER, spec, SETTINGS), SETTINGS)["spec"]["template"]


@pytest.mark.parametrize("resources", [{}, {"nodes": 3, "gpusPerNode": 2}])
def test_the_annotation_is_the_config_the_trainer_reads_back(resources: dict):
    spec = make_spec(resources=resources, lora={"targetModules": ["q_proj", "v_proj"]})
    config = build_trainer_config(OWNER, spec, SETTINGS)
    annotation = pod_template(spec)["metadata"]["annotations"][CONFIG_ANNOTATION]
    assert annotation == config_annotation_value(config)
    # What the trainer does with the file (trainer-run): the same model, the same values.
    assert TrainerConfig.model_validate_json(annotation) == config
    assert TrainerConfig.model_validate_json(annotation).spec.lora.target_modules == ["q_proj", "v_proj"]


def test_the_downward_api_volume_writes_that_annotation_to_config_path():
    template = pod_template(make_spec())
    pod = template["spec"]
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "config"]
    (item,) = volumes["config"]["downwardAPI"]["items"]
    # The syntax Kubernetes documents for one annotation: metadata.annotations['<KEY>'].
    key = re.fullmatch(r"metadata\.annotations\['([^']+)'\]", item["fieldRef"]["fieldPath"]).group(1)
    assert key == CONFIG_ANNOTATION and key in template["metadata"]["annotations"]
    assert f"{mount['mountPath']}/{item['path']}" == CONFIG_PATH and mount["readOnly"] is True
    assert {e["name"]: e.get("value") for e in container["env"]}[CONFIG_ENV] == CONFIG_PATH
    assert not any("configMap" in v for v in pod["volumes"])


def context(kube: FakeKube) -> Context:
    return Context(kube=kube, settings=SETTINGS)


def finetunejob(kube: FakeKube, name: str, spec: dict) -> dict:
    return kube.put({"apiVersion": FINETUNEJOB.api_version, "kind": FINETUNEJOB.kind,
                     "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "generation": 1}, "spec": spec})


@pytest.mark.parametrize("resources, children", [({}, ["Job"]), ({"nodes": 2, "gpusPerNode": 1}, ["Job", "Service"])])
def test_a_finetunejob_create_makes_no_configmap(resources: dict, children: list[str]):
    kube = FakeKube()
    ftj = finetunejob(kube, "bot", spec_doc(resources=resources))
    status = reconcile(context(kube), ftj, logging.getLogger("test"), fresh=True)
    assert status.trainer_job == "bot-train"
    made = sorted(kind for kind, _, _ in kube.objects if kind not in IDENTITY_KINDS | {FINETUNEJOB.kind})
    assert made == children
    job = kube.get("batch/v1", "Job", NS, "bot-train")
    config = TrainerConfig.model_validate_json(job["spec"]["template"]["metadata"]["annotations"][CONFIG_ANNOTATION])
    assert (config.job_name, config.job_uid) == ("bot", "uid-bot")


def test_a_config_too_large_for_its_annotation_is_refused_naming_the_field():
    # targetModules is the one list of strings of any length: 64 long entries go past the budget.
    huge = make_spec(lora={"targetModules": [f"m{i}_" + "x" * 4000 for i in range(64)]})
    (problem,) = cluster_spec_problems(huge, SETTINGS)
    assert problem.startswith("spec.lora.targetModules: ") and CONFIG_ANNOTATION in problem
    assert f"can hold {MAX_CONFIG_ANNOTATION_BYTES} bytes" in problem and "shorten it" in problem
    # Just under the budget fits, for any name the FineTuneJob may have (the check assumes the widest).
    fits = make_spec(lora={"targetModules": [f"m{i}_" + "x" * 3000 for i in range(64)]})
    assert cluster_spec_problems(fits, SETTINGS) == []
    widest = Owner(name="n" * 253, namespace="s" * 63, uid=OWNER.uid)
    size = len(config_annotation_value(build_trainer_config(widest, fits, SETTINGS)).encode())
    assert 150 * 1024 < size <= MAX_CONFIG_ANNOTATION_BYTES < K8S_ANNOTATIONS_LIMIT - len(CONFIG_ANNOTATION)


def test_the_operator_fails_an_oversized_spec_without_a_job():
    kube = FakeKube()
    ftj = finetunejob(kube, "big", spec_doc(lora={"targetModules": ["x" * 5000] * 64}))
    status = reconcile(context(kube), ftj, logging.getLogger("test"), fresh=True)
    assert status.phase == "Failed"
    stalled = next(c for c in status.conditions if c.type == "Stalled")
    assert stalled.reason == "InvalidSpec" and "spec.lora.targetModules" in status.message
    assert kube.get("batch/v1", "Job", NS, "big-train") is None
