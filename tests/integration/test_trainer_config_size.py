"""The trainer config's size budget against the real apiserver.

The config rides in the trainer pod template's annotation (builders/trainer/config.py): a spec the
CRD accepts can render one too large for it, which is why the operator checks the size first; a
config at the operator's limit still leaves the rest of Kubernetes' 256 KiB for other annotations.
"""

from __future__ import annotations


import pytest

from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.builders.common import Owner
from kubetune.builders.trainer import CONFIG_ANNOTATION, build_job, build_trainer_config, cluster_spec_problems
from kubetune.builders.trainer.config import MAX_CONFIG_ANNOTATION_BYTES, config_annotation_value
from kubetune.settings import OperatorSettings
from tests.support.controlplane import ControlPlane, dry_run_create

pytestmark = pytest.mark.integration

SETTINGS = OperatorSettings(trainer_image="trainer:probe")
OWNER = Owner(name="big", namespace="default", uid="00000000-0000-0000-0000-000000000002")
K8S_ANNOTATIONS_LIMIT = 256 * 1024  # all of one object's annotation keys and values together
FILLER = "example.com/other"  # an annotation someone else (a mesh injector, Kueue) adds


def spec_doc(target_modules: list[str]) -> dict:
    return {"baseModel": {"uri": "s3://models/base"}, "dataset": {"train": "s3://data/train.jsonl"},
            "storage": {"uri": "s3://runs"}, "lora": {"targetModules": target_modules}}


def job_for(doc: dict) -> dict:
    return build_job(OWNER, build_trainer_config(OWNER, FineTuneJobSpec.model_validate(doc), SETTINGS), SETTINGS)


JOBS = "/apis/batch/v1/namespaces/default/jobs"


def test_the_crd_takes_a_spec_whose_config_no_annotation_can_carry(kube_api: ControlPlane, kubetune_crds: list[str]):
    doc = spec_doc(["x" * 5000] * 64)
    ftj = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
           "metadata": {"name": "big", "namespace": "default"}, "spec": doc}
    assert dry_run_create(kube_api, "/apis/kubetune.io/v1alpha1/namespaces/default/finetunejobs", ftj) is None
    refused = dry_run_create(kube_api, JOBS, job_for(doc))
    assert refused is not None and "annotations" in refused and "Too long" in refused, refused
    # What the operator says instead, before trying.
    (problem,) = cluster_spec_problems(FineTuneJobSpec.model_validate(doc), SETTINGS)
    assert problem.startswith("spec.lora.targetModules:")


def test_a_config_at_the_limit_leaves_the_rest_of_the_budget_to_others(kube_api: ControlPlane):
    base = len(config_annotation_value(build_trainer_config(
        OWNER, FineTuneJobSpec.model_validate(spec_doc(["m"])), SETTINGS)).encode())
    doc = spec_doc(["m" + "x" * (MAX_CONFIG_ANNOTATION_BYTES - base)])  # exactly at the operator's limit
    job = job_for(doc)
    annotations = job["spec"]["template"]["metadata"]["annotations"]
    assert len(annotations[CONFIG_ANNOTATION].encode()) == MAX_CONFIG_ANNOTATION_BYTES
    assert dry_run_create(kube_api, JOBS, job) is None
    # Whatever else lands on the pod gets the remaining bytes, and the apiserver counts as we do.
    left = K8S_ANNOTATIONS_LIMIT - len(CONFIG_ANNOTATION) - MAX_CONFIG_ANNOTATION_BYTES - len(FILLER)
    assert left > 30 * 1024
    annotations[FILLER] = "y" * left
    assert dry_run_create(kube_api, JOBS, job) is None
    annotations[FILLER] += "y"
    refused = dry_run_create(kube_api, JOBS, job)
    assert refused is not None and "Too long" in refused, refused
