"""Spec and API errors of a FineTuneJob: refused at apply, or visible within 60 s, and fixable in place.

docs/design.md, "Failure outcomes: spec and API errors". The operator here resyncs
only once an hour, so everything seen comes from the event-driven path (and kopf's
bounded retries), never from the periodic safety net.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import pytest
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from kubetune.api import GROUP, VERSION
from tests.e2e.finetunejob_api import PLURAL, Api, create_tenant_namespace
from tests.e2e.operator_process import OperatorProcess
from tests.support import kwok
from tests.support.controlplane import ControlPlane
from tests.support.procs import wait_for

pytestmark = pytest.mark.e2e

NS = "ftj-spec-errors"
QUOTA_NS = "ftj-spec-quota"
VISIBLE_WITHIN = 60  # seconds: the promise for every failure below
RUN_FOREVER = {kwok.RUN_DURATION: "87600h"}
POLICY = "e2e-no-forbidden-trainer-images"
POLICY_MESSAGE = "trainer images named 'forbidden' are not allowed in this namespace"


@pytest.fixture(scope="module")
def operator(e2e_cluster: ControlPlane, kubetune_crds: list[str]) -> Iterator[OperatorProcess]:
    for ns in (NS, QUOTA_NS):
        create_tenant_namespace(e2e_cluster, ns, "e2e-spec-errors")
    op = OperatorProcess(e2e_cluster, env={"KUBETUNE_TRAINER_IMAGE": "kubetune-trainer:e2e",
                                           "KUBETUNE_RESYNC_SECONDS": "3600"}).start()
    yield op
    op.stop()


@pytest.fixture(scope="module")
def api(e2e_cluster: ControlPlane) -> Api:
    return Api(e2e_cluster, NS)


def condition(status: dict, ctype: str) -> dict:
    return next((c for c in status.get("conditions") or [] if c["type"] == ctype), {})


def stalled_reason(status: dict) -> str | None:
    cond = condition(status, "Stalled")
    return cond.get("reason") if cond.get("status") == "True" else None


def warning_events(api: Api, name: str) -> list[k8s.CoreV1Event]:
    events = api.core.list_namespaced_event(api.ns, field_selector=f"involvedObject.name={name}").items
    return [e for e in events if e.type == "Warning"]


@pytest.mark.parametrize(("field", "spec", "expect"), [
    ("cpu", {"resources": {"gpusPerNode": 1, "cpu": "4KiMi", "memory": "8Gi"}}, "spec.resources.cpu"),
    ("memory", {"resources": {"gpusPerNode": 1, "cpu": "2", "memory": ".."}}, "spec.resources.memory"),
    ("queue", {"queueName": "q" * 70}, "spec.queueName"),
    ("gpu", {"resources": {"gpusPerNode": 1, "gpuResourceName": "gpu"}}, "spec.resources.gpuResourceName"),
    ("suspend", {"suspend": "yes"}, "spec.suspend"),
])
def test_what_the_job_api_would_refuse_is_refused_at_apply(operator: OperatorProcess, api: Api, field, spec, expect):
    # The review saw `4KiMi` and a 70-character queueName accepted, then nothing for 75 s.
    with pytest.raises(ApiException) as info:
        api.apply(f"apply-{field}", **spec)
    assert info.value.status == 422, info.value.body
    assert expect in json.loads(info.value.body)["message"]


def test_a_child_the_apiserver_refuses_fails_with_its_message_and_a_fix_in_place_runs(
        operator: OperatorProcess, api: Api, e2e_cluster: ControlPlane):
    # A ValidatingAdmissionPolicy stands for any rule the CRD cannot know (it answers 422, like invalid fields).
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": POLICY},
        "spec": {"failurePolicy": "Fail",
                 "matchConstraints": {"resourceRules": [{"apiGroups": ["batch"], "apiVersions": ["v1"],
                                                         "operations": ["CREATE"], "resources": ["jobs"]}]},
                 "validations": [{"expression": "object.spec.template.spec.containers.all(c, !c.image.contains('forbidden'))",
                                  "message": POLICY_MESSAGE}]},
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": POLICY},
        "spec": {"policyName": POLICY, "validationActions": ["Deny"],
                 "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NS}}}},
    }
    manifest = e2e_cluster.workdir / "spec-errors-policy.yaml"
    manifest.write_text(json.dumps(policy) + "\n---\n" + json.dumps(binding))
    e2e_cluster.kubectl("apply", "-f", str(manifest))
    try:
        _wait_policy_active(api)
        api.apply("refused", images={"trainer": "registry.example.com/forbidden:1"})
        status = api.wait_status("refused", lambda s: s.get("phase") == "Failed", "Failed", timeout=VISIBLE_WITHIN)
        assert stalled_reason(status) == "InvalidSpec", status
        assert POLICY_MESSAGE in status["message"] and "refused-train" in status["message"], status["message"]
        assert condition(status, "Reconciling").get("status") == "False"
        wait_for(lambda: any(POLICY_MESSAGE in (e.message or "") for e in warning_events(api, "refused")),
                 20, "a Warning Event with the apiserver's message")
        assert status["observedGeneration"] == 1

        # Corrected in place: the next generation is tried again and runs.
        api.patch_spec("refused", images={"trainer": "registry.example.com/allowed:1"})
        status = api.wait_status("refused", lambda s: s.get("phase") not in (None, "Failed"), "leaves Failed",
                                 timeout=VISIBLE_WITHIN)
        assert api.job("refused").spec.template.spec.containers[0].image == "registry.example.com/allowed:1"
        assert status["observedGeneration"] == api.ftj("refused")["metadata"]["generation"] == 2
        assert POLICY_MESSAGE not in status["message"]
        assert stalled_reason(status) is None, status
    finally:
        e2e_cluster.kubectl("delete", "--ignore-not-found", "-f", str(manifest))


def _wait_policy_active(api: Api) -> None:
    """The apiserver compiles a new policy asynchronously: wait until it denies a dry-run Job."""
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "policy-probe"},
           "spec": {"template": {"spec": {"restartPolicy": "Never",
                                          "containers": [{"name": "c", "image": "forbidden:1"}]}}}}

    def denied() -> bool:
        try:
            api.batch.create_namespaced_job(api.ns, job, dry_run="All")
        except ApiException as err:
            return err.status == 422 and POLICY_MESSAGE in err.body
        return False

    wait_for(denied, 30, "the admission policy in force")


def test_a_failed_invalid_spec_fixed_in_place_is_reconciled_again(operator: OperatorProcess, api: Api):
    # The review: "fixing a Failed job's spec in place leaves it Failed with the old message".
    api.apply("fixme", dataset={"train": "./train.jsonl"})
    status = api.wait_phase("fixme", "Failed", timeout=VISIBLE_WITHIN)
    assert stalled_reason(status) == "InvalidSpec" and "spec.dataset.train" in status["message"]
    api.patch_spec("fixme", dataset={"train": "s3://data/train.jsonl"})
    status = api.wait_status("fixme", lambda s: s.get("phase") not in (None, "Failed"), "leaves Failed",
                             timeout=VISIBLE_WITHIN)
    assert "spec.dataset.train" not in status["message"]
    assert wait_for(lambda: api.job("fixme"), 30, "the trainer Job").metadata.name == "fixme-train"
    assert status["observedGeneration"] == 2


def test_an_ignored_spec_edit_does_not_advance_observed_generation(operator: OperatorProcess, api: Api):
    api.start_with_pod_annotations("edited", RUN_FOREVER)  # generation 2: suspend applied
    status = api.wait_phase("edited", "Pending", "Validating", "Running")
    assert status["observedGeneration"] == 2, "a suspend change is applied, so it is acted on"
    assert not condition(status, "SpecApplied")

    api.patch_spec("edited", hyperparameters={"learningRate": 0.001})  # generation 3: cannot reach the Job
    status = api.wait_status("edited", lambda s: condition(s, "SpecApplied").get("status") == "False",
                             "SpecApplied=False", timeout=VISIBLE_WITHIN)
    assert status["observedGeneration"] == 2, "kstatus must see the edit as not acted on"
    applied = condition(status, "SpecApplied")
    assert applied["reason"] == "SpecChangeIgnored" and applied["observedGeneration"] == 3
    assert "generation 3 is not applied" in applied["message"]
    assert all(c["observedGeneration"] == 2 for c in status["conditions"] if c["type"] != "SpecApplied")
    wait_for(lambda: "SpecChangeIgnored" in api.event_reasons("edited"), 20, "the SpecChangeIgnored Event")

    api.patch_spec("edited", suspend=True)  # generation 4: suspend is applied, the learning rate still is not
    status = api.wait_phase("edited", "Suspended", timeout=VISIBLE_WITHIN)
    assert status["observedGeneration"] == 2 and condition(status, "SpecApplied").get("status") == "False"

    api.patch_spec("edited", hyperparameters={"learningRate": 2e-4})  # generation 5: back to what the Job runs
    status = api.wait_status("edited", lambda s: s.get("observedGeneration") == 5, "observedGeneration 5",
                             timeout=VISIBLE_WITHIN)
    assert not condition(status, "SpecApplied"), status


def test_a_forbidden_child_waits_visibly_with_bounded_retries_and_recovers(
        operator: OperatorProcess, e2e_cluster: ControlPlane):
    api = Api(e2e_cluster, QUOTA_NS)
    api.core.create_namespaced_resource_quota(QUOTA_NS, k8s.V1ResourceQuota(
        metadata=k8s.V1ObjectMeta(name="no-jobs"), spec=k8s.V1ResourceQuotaSpec(hard={"count/jobs.batch": "0"})))
    # Quota admission enforces only once the quota controller has written the quota's status.
    wait_for(lambda: (api.core.read_namespaced_resource_quota("no-jobs", QUOTA_NS).status.hard or {}).get(
        "count/jobs.batch") == "0", 30, "the quota in force")
    log_start = operator.process.log_path.stat().st_size
    started = time.monotonic()
    api.apply("quota")
    status = api.wait_status("quota", lambda s: stalled_reason(s) == "QuotaExceeded", "Stalled QuotaExceeded",
                             timeout=VISIBLE_WITHIN)
    assert status["phase"] == "Pending" and "exceeded quota" in status["message"], status
    assert condition(status, "Reconciling").get("status") == "False", "Stalled alone, so kstatus reads Failed"
    wait_for(lambda: any(e.reason == "QuotaExceeded" and "exceeded quota" in (e.message or "")
                         for e in warning_events(api, "quota")), 20, "a QuotaExceeded Warning Event")

    # No retry storm: the operator retries with exponential backoff (>= 2.5, 5, 10 s) rather than every 5 s.
    time.sleep(max(0.0, 30 - (time.monotonic() - started)))
    log = operator.process.log_path.read_bytes()[log_start:].decode(errors="replace")
    # reconcile() logs one warning per attempt to create the Job.
    attempts = len(re.findall(r"WARNING .*refused to create Job quota-train \(403\)", log))
    assert 1 <= attempts <= 4, f"{attempts} create attempts of the refused Job in 30 s"

    api.core.delete_namespaced_resource_quota("no-jobs", QUOTA_NS)
    # The next retry (at most ~40 s away at this point) creates the Job.
    api.wait_status("quota", lambda s: s.get("phase") and stalled_reason(s) is None
                    and "exceeded quota" not in s.get("message", ""), "recovered", timeout=90)
    assert wait_for(lambda: api.job("quota"), 30, "the trainer Job").metadata.name == "quota-train"
    api.custom.delete_namespaced_custom_object(GROUP, VERSION, QUOTA_NS, PLURAL, "quota")
