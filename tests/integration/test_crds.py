"""The generated CRDs on a real kube-apiserver: they install, explain, accept the
examples and reject bad manifests at `kubectl apply` with the field path."""

from __future__ import annotations

import re

import pytest
from kubernetes import client as k8s

from kubetune.api.finetunejob import FineTuneJobSpec, LoraSpec
from kubetune.builders.common import Owner
from kubetune.builders.trainer import build_job, build_trainer_config
from kubetune.settings import OperatorSettings
from tests.support.controlplane import ControlPlane, dry_run_create
from tests.support.invalid_manifests import InvalidCase, load_cases
from tests.support.spec_probes import BASE_SPEC, JOB_FIELD, PROBES, Probe
from tests.support.procs import wait_for
from tests.support.tools import REPO

pytestmark = pytest.mark.integration

EXAMPLES = sorted((REPO / "manifests" / "examples").glob("*.yaml"))
INVALID = load_cases()


def test_crds_are_established(kube_api: ControlPlane, kubetune_crds: list[str]):
    ext = k8s.ApiextensionsV1Api(kube_api.api_client())
    assert set(kubetune_crds) == {"finetunejobs.kubetune.io", "modeldeployments.kubetune.io"}
    for name in kubetune_crds:
        crd = ext.read_custom_resource_definition(name)
        conditions = {c.type: c.status for c in crd.status.conditions}
        assert conditions.get("Established") == "True", conditions
        assert conditions.get("NamesAccepted") == "True", conditions
    out = kube_api.kubectl("api-resources", "--api-group=kubetune.io", "-o", "wide").stdout
    assert re.search(r"^finetunejobs\s+ftj\s", out, re.M), out
    assert re.search(r"^modeldeployments\s+mdep\s", out, re.M), out


def test_kubectl_explain_shows_field_descriptions(kube_api: ControlPlane, kubetune_crds: list[str]):
    # The OpenAPI v3 document is published shortly after the CRD is Established.
    def explain() -> str:
        res = kube_api.kubectl("explain", "finetunejob.spec.lora", check=False)
        return res.stdout if res.returncode == 0 else ""

    text = " ".join(wait_for(explain, 30, "kubectl explain finetunejob.spec.lora").split())
    assert "GROUP: kubetune.io" in text and "KIND: FineTuneJob" in text, text
    assert FineTuneJobSpec.model_fields["lora"].description in text, text
    for name, field in LoraSpec.model_fields.items():
        wire = field.alias or name
        assert re.search(rf"\b{wire}\b", text), f"{wire} missing from explain output"
        # kubectl wraps long lines; whitespace was normalised above.
        assert " ".join(field.description.split()) in text, f"description of {wire} missing:\n{text}"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_is_accepted_by_the_apiserver(kube_api: ControlPlane, kubetune_crds: list[str], path):
    res = kube_api.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", str(path), check=False)
    assert res.returncode == 0, f"{path.name} rejected:\n{res.stderr}"
    assert "(server dry run)" in res.stdout


def test_the_required_examples_exist():
    names = {p.name for p in EXAMPLES}
    assert {"finetunejob-qlora.yaml", "finetunejob-multinode.yaml", "modeldeployment.yaml"} <= names


@pytest.mark.parametrize("case", INVALID, ids=[c.id for c in INVALID])
def test_invalid_manifest_is_rejected_naming_the_field(kube_api: ControlPlane, kubetune_crds: list[str],
                                                       case: InvalidCase):
    res = kube_api.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", str(case.path), check=False)
    assert res.returncode != 0, f"{case.id} was accepted:\n{res.stdout}"
    assert case.expect in res.stderr, f"{case.id}: error does not name {case.expect}:\n{res.stderr}"


def _trainer_job(spec: dict) -> dict:
    """The Job the operator builds for this spec (in the default namespace)."""
    typed = FineTuneJobSpec.model_validate(spec)
    settings = OperatorSettings(trainer_image="trainer:probe")
    owner = Owner(name="probe", namespace="default", uid="00000000-0000-0000-0000-000000000001")
    return build_job(owner, build_trainer_config(owner, typed, settings), settings)


@pytest.mark.parametrize("probe", PROBES, ids=[p.id for p in PROBES])
def test_crd_and_job_api_agree_on_each_value(kube_api: ControlPlane, kubetune_crds: list[str], probe: Probe):
    ftj = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
           "metadata": {"name": "probe", "namespace": "default"}, "spec": probe.spec()}
    crd_error = dry_run_create(kube_api, "/apis/kubetune.io/v1alpha1/namespaces/default/finetunejobs", ftj)
    assert (crd_error is None) == probe.valid, f"{probe.field}={probe.value!r}: CRD says {crd_error or 'valid'}"
    if crd_error is not None:
        assert probe.field in crd_error, f"the refusal does not name {probe.field}: {crd_error}"
    put_in_job = JOB_FIELD[probe.field]
    if put_in_job is None:
        return  # a trainer setting: the Job API never sees it
    jobs = "/apis/batch/v1/namespaces/default/jobs"
    if probe.valid:
        # What the CRD accepts, the Job built from it is accepted too.
        assert dry_run_create(kube_api, jobs, _trainer_job(probe.spec())) is None
    else:
        job = _trainer_job(BASE_SPEC)
        put_in_job(job, probe.value)
        job_error = dry_run_create(kube_api, jobs, job)
        if probe.stricter:
            assert job_error is None, f"marked stricter ({probe.stricter}) but the Job API refuses it too"
        else:
            assert job_error is not None, f"{probe.field}={probe.value!r}: the Job API takes it; mark it stricter or allow it"
