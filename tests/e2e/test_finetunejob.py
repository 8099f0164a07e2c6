"""FineTuneJob end to end on the simulated cluster, with the operator as its own ServiceAccount.

KWOK plays the kubelet: trainer pods run on fake GPU nodes and end as the
pod template's annotations say (tests/support/kwok.py). A Job's template is
mutable only while the Job is suspended and has not started, so tests that
need a particular pod outcome create the FineTuneJob suspended, annotate
the Job's template, then unsuspend — the same path Kueue uses.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from kubetune.api import GROUP, VERSION
from kubetune.api.finetunejob import Progress
from kubetune.builders.trainer import CONFIG_ANNOTATION, TRAINER_ACCOUNT
from kubetune_trainer.progress import KubernetesStatusReporter
from tests.e2e.finetunejob_api import PLURAL, Api, create_tenant_namespace
from tests.e2e.operator_process import OperatorProcess, install_status_policy
from tests.support import kwok
from tests.support.controlplane import ControlPlane, service_account_client
from tests.support.procs import wait_for

pytestmark = pytest.mark.e2e

NS = "ftj-e2e"
SECRET_VALUE = "e2e-secret-value-never-copied"
RUN_FOREVER = {kwok.RUN_DURATION: "87600h"}


@pytest.fixture(scope="module")
def operator(e2e_cluster: ControlPlane, kubetune_crds: list[str]) -> Iterator[OperatorProcess]:
    create_tenant_namespace(e2e_cluster, NS, SECRET_VALUE)
    op = OperatorProcess(e2e_cluster, env=operator_env(resync_seconds=600)).start()
    yield op
    op.stop()


def operator_env(resync_seconds: int) -> dict[str, str]:
    # A long resync for the module's operator: what the tests see must come from events and
    # from the startup pass (or they fail when those are removed); the resync has its own test.
    return {"KUBETUNE_TRAINER_IMAGE": "kubetune-trainer:e2e", "KUBETUNE_DEFAULT_STORAGE_URI": "s3://platform/runs",
            "KUBETUNE_RESYNC_SECONDS": str(resync_seconds)}


@pytest.fixture(scope="module")
def api(e2e_cluster: ControlPlane) -> Api:
    return Api(e2e_cluster, NS)


def test_finetunejob_runs_on_a_gpu_node_and_succeeds(operator: OperatorProcess, api: Api, e2e_cluster: ControlPlane):
    uid = api.apply("happy")["metadata"]["uid"]
    job = wait_for(lambda: api.job("happy"), 30, "Job")
    # The trainer config rides in the pod template's annotation (no ConfigMap), mounted by the downward API.
    annotation = job.spec.template.metadata.annotations[CONFIG_ANNOTATION]
    assert json.loads(annotation)["storageUri"] == f"s3://runs/e2e/ftj-e2e/happy/{uid}"  # this incarnation's run
    assert SECRET_VALUE not in annotation
    assert not [cm.metadata.name for cm in api.core.list_namespaced_config_map(NS).items
                if cm.metadata.name.startswith("happy")]
    assert job.metadata.owner_references[0].kind == "FineTuneJob"
    env = {e.name: e for e in job.spec.template.spec.containers[0].env}
    assert env["AWS_SECRET_ACCESS_KEY"].value_from.secret_key_ref.name == "s3-creds"
    status = api.wait_phase("happy", "Succeeded")
    pods = api.pods_of("happy")
    assert len(pods) == 1 and pods[0].spec.node_name in e2e_cluster.nodes["gpu"]
    assert status["artifacts"]["adapterUri"] == f"s3://runs/e2e/ftj-e2e/happy/{uid}/adapter"
    assert status["artifacts"]["evaluationReportUri"].endswith("/reports/evaluation.json")
    assert api.condition(status, "Ready")["status"] == "True"
    assert api.condition(status, "Stalled")["status"] == "False"
    assert all(c["observedGeneration"] == api.ftj("happy")["metadata"]["generation"] for c in status["conditions"])
    assert status["completionTime"] and status["attempts"] == 1
    # An Event per transition, ending with the success.
    wait_for(lambda: "Succeeded" in api.event_reasons("happy"), 20, "the Succeeded event")
    # No secret value anywhere the operator writes.
    assert SECRET_VALUE not in json.dumps(api.ftj("happy"))
    assert SECRET_VALUE not in operator.process.log_path.read_text()
    wait_for(lambda: 'kubetune_finetunejobs{phase="Succeeded"}' in operator.metrics(), 10, "phase gauge")
    assert "kubetune_reconcile_duration_seconds_bucket" in operator.metrics()


def test_failing_pod_is_retried_then_fails_stalled(operator: OperatorProcess, api: Api):
    api.start_with_pod_annotations("crash", {kwok.EXIT_CODE: "1"}, backoffLimit=1)
    status = api.wait_phase("crash", "Failed", timeout=90)
    assert status["attempts"] == 2  # the first attempt and one retry
    assert "BackoffLimitExceeded" in status["message"]
    assert "trainer exited 1" in status["message"]
    stalled = api.condition(status, "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "BackoffLimitExceeded")
    assert api.condition(status, "Reconciling")["status"] == "False"
    wait_for(lambda: "Failed" in api.event_reasons("crash"), 20, "the Failed event")


def test_bad_input_fails_at_once(operator: OperatorProcess, api: Api):
    api.start_with_pod_annotations("bad-data", {kwok.EXIT_CODE: "65"}, backoffLimit=3)
    status = api.wait_phase("bad-data", "Failed", timeout=60)
    assert status["attempts"] == 1
    assert api.condition(status, "Stalled")["reason"] == "PodFailurePolicy"
    assert "rejected its input (exit 65)" in status["message"]


def test_preemption_and_disruption_do_not_use_up_retries(operator: OperatorProcess, api: Api):
    # backoffLimit 0: any counted failure would fail the job at once.
    api.start_with_pod_annotations("preempted", {kwok.EXIT_CODE: "75"}, backoffLimit=0)
    status = api.wait_status("preempted", lambda s: (s.get("attempts") or 0) >= 3, "three preempted attempts", 90)
    assert status["phase"] != "Failed"
    assert "not counted against backoffLimit" in status["message"]
    assert not api.job("preempted").status.failed
    assert not [c for c in api.job("preempted").status.conditions or [] if c.type == "Failed"]
    api.custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "preempted")  # ends the loop

    # A disruption (the evictor or the scheduler's preemption sets DisruptionTarget; we play it).
    api.start_with_pod_annotations("disrupted", RUN_FOREVER, backoffLimit=0)
    pod = wait_for(lambda: next((p for p in api.pods_of("disrupted") if p.status.phase == "Running"), None), 30,
                   "a running pod")
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    api.core.patch_namespaced_pod_status(pod.metadata.name, NS, {"status": {
        "phase": "Failed",
        "conditions": [{"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
                        "lastTransitionTime": now}],
        "containerStatuses": [{"name": "trainer", "image": "kubetune-trainer:e2e", "imageID": "", "ready": False,
                               "restartCount": 0, "state": {"terminated": {
                                   "exitCode": 137, "reason": "Error", "startedAt": now, "finishedAt": now}}}],
    }})
    status = api.wait_status("disrupted", lambda s: (s.get("attempts") or 0) >= 2, "a replacement pod", 60)
    assert status["phase"] != "Failed"
    assert "disrupted (PreemptionByScheduler)" in status["message"]
    assert not api.job("disrupted").status.failed
    api.custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "disrupted")


def test_suspend_resume_and_delete(operator: OperatorProcess, api: Api):
    api.start_with_pod_annotations("pausable", RUN_FOREVER)
    api.wait_phase("pausable", "Validating", "Running")
    api.patch_spec("pausable", suspend=True)
    status = api.wait_phase("pausable", "Suspended")
    assert api.condition(status, "Reconciling")["status"] == "False"
    assert api.job("pausable").spec.suspend is True
    wait_for(lambda: not api.pods_of("pausable"), 30, "pods removed while suspended")
    api.patch_spec("pausable", suspend=False)
    api.wait_phase("pausable", "Validating", "Running")
    assert api.job("pausable").spec.suspend is False
    assert len(api.jobs_of("pausable")) == 1
    assert "Suspended" in api.event_reasons("pausable")
    assert "SpecChangeIgnored" not in api.event_reasons("pausable")  # suspend is applied, not ignored
    api.patch_spec("pausable", hyperparameters={"learningRate": 0.001})
    wait_for(lambda: "SpecChangeIgnored" in api.event_reasons("pausable"), 20, "a warning about the ignored change")
    # Deleting never waits on the operator (no finalizers); GC removes the children.
    assert not api.ftj("pausable")["metadata"].get("finalizers")
    operator.stop()
    try:
        api.custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "pausable")
        wait_for(lambda: not [o for o in api.custom.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)["items"]
                              if o["metadata"]["name"] == "pausable"], 10, "the FineTuneJob gone without the operator")
        wait_for(lambda: not api.jobs_of("pausable"), 60, "the Job garbage-collected")
    finally:
        operator.start()


def test_two_nodes_make_an_indexed_job_with_rank_wiring(operator: OperatorProcess, api: Api, e2e_cluster: ControlPlane):
    api.start_with_pod_annotations("multi", RUN_FOREVER, resources={"nodes": 2, "gpusPerNode": 4, "cpu": "4",
                                                                     "memory": "16Gi"})
    svc = api.core.read_namespaced_service("multi-train", NS)
    assert svc.spec.cluster_ip == "None"
    job = api.job("multi")
    assert (job.spec.completion_mode, job.spec.completions, job.spec.parallelism) == ("Indexed", 2, 2)
    pod_spec = job.spec.template.spec
    assert pod_spec.subdomain == "multi-train"
    env = {e.name: e for e in pod_spec.containers[0].env}
    assert env["MASTER_ADDR"].value == "multi-train-0.multi-train.ftj-e2e.svc"
    assert env["NUM_MACHINES"].value == "2" and env["NUM_PROCESSES"].value == "8"
    assert env["MACHINE_RANK"].value_from.field_ref.field_path == (
        "metadata.annotations['batch.kubernetes.io/job-completion-index']")
    pods = wait_for(lambda: (lambda ps: ps if len(ps) == 2 and all(p.status.phase == "Running" for p in ps) else None)(
        api.pods_of("multi")), 30, "two running pods")
    indexes = sorted(p.metadata.annotations["batch.kubernetes.io/job-completion-index"] for p in pods)
    assert indexes == ["0", "1"]
    assert sorted(p.spec.hostname for p in pods) == ["multi-train-0", "multi-train-1"]
    assert all(p.spec.node_name in e2e_cluster.nodes["gpu"] for p in pods)
    # The Service resolves the ranks: both pods are its endpoints.
    discovery = k8s.DiscoveryV1Api(api.cluster.api_client())

    def endpoints() -> int:
        slices = discovery.list_namespaced_endpoint_slice(NS, label_selector="kubernetes.io/service-name=multi-train")
        return sum(len(s.endpoints or []) for s in slices.items)

    wait_for(lambda: endpoints() == 2, 30, "two endpoints behind the headless Service")
    api.custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "multi")


def test_operator_restart_leaves_one_job_and_converges(operator: OperatorProcess, api: Api):
    api.start_with_pod_annotations("restart-run", {kwok.RUN_DURATION: "8s"})
    api.start_with_pod_annotations("restart-fail", {kwok.EXIT_CODE: "1", kwok.RUN_DURATION: "6s"}, backoffLimit=0)
    api.start_with_pod_annotations("restart-jobless", RUN_FOREVER)
    api.wait_phase("restart-run", "Validating", "Running")
    api.wait_phase("restart-jobless", "Validating", "Running")
    operator.stop()
    try:
        api.apply("restart-new")  # created while the operator is down
        # Deleted by hand while the operator is down: no event will tell it; only its startup pass can.
        api.batch.delete_namespaced_job("restart-jobless-train", NS, propagation_policy="Background")
        time.sleep(8)  # both trainer pods finish meanwhile
        assert not api.jobs_of("restart-jobless") and not api.pods_of("restart-jobless")
    finally:
        operator.start()
    api.wait_phase("restart-run", "Succeeded")
    api.wait_phase("restart-fail", "Failed")
    api.wait_phase("restart-new", "Succeeded")
    api.wait_phase("restart-jobless", "Succeeded")  # a new Job (no KWOK annotations: done in 1 s)
    for name in ("restart-run", "restart-fail", "restart-new", "restart-jobless"):
        assert len(api.jobs_of(name)) == 1
    # A second restart with nothing to do changes nothing.
    before = {n: api.ftj(n)["status"] for n in ("restart-run", "restart-fail")}
    operator.stop()
    operator.start()
    time.sleep(3)
    assert {n: api.ftj(n)["status"] for n in before} == before


def test_operator_restart_mid_suspend_and_multi_node_converges(operator: OperatorProcess, api: Api):
    api.start_with_pod_annotations("restart-pause", RUN_FOREVER)
    api.wait_phase("restart-pause", "Validating", "Running")
    api.apply("restart-multi", resources={"nodes": 2, "gpusPerNode": 4, "cpu": "4", "memory": "16Gi"})
    wait_for(lambda: api.jobs_of("restart-multi"), 30, "the multi-node Job")
    operator.stop()
    try:
        api.patch_spec("restart-pause", suspend=True)  # the user suspends while the operator is down
    finally:
        operator.start()
    status = api.wait_phase("restart-pause", "Suspended")
    assert api.job("restart-pause").spec.suspend is True
    assert status["observedGeneration"] == api.ftj("restart-pause")["metadata"]["generation"]
    api.wait_phase("restart-multi", "Succeeded")
    assert len(api.jobs_of("restart-pause")) == 1 and len(api.jobs_of("restart-multi")) == 1
    services = api.core.list_namespaced_service(NS, label_selector="app.kubernetes.io/instance=restart-multi").items
    assert len(services) == 1 and services[0].spec.cluster_ip == "None"
    for name in ("restart-pause", "restart-multi"):
        api.custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)


def test_a_stale_status_is_repaired_by_the_periodic_resync(operator: OperatorProcess, api: Api,
                                                           e2e_cluster: ControlPlane):
    # This operator resyncs every 3 s. The job is created after it started (so its startup pass is
    # over), and the corrupted status stands in for a lost Job event: nothing on the watch streams
    # triggers a reconcile, so only the resync can repair it.
    operator.stop()
    resyncing = OperatorProcess(e2e_cluster, env=operator_env(resync_seconds=3)).start()
    try:
        api.start_with_pod_annotations("stale", RUN_FOREVER)
        api.wait_phase("stale", "Validating", "Running")
        api.custom.patch_namespaced_custom_object_status(GROUP, VERSION, NS, PLURAL, "stale",
                                                         {"status": {"phase": "Pending", "message": "stale"}})
        status = api.wait_status("stale", lambda s: s.get("phase") == "Validating" and s.get("message") != "stale",
                                 "the resync to restore the phase", timeout=20)
        assert api.condition(status, "Reconciling")["status"] == "True"
        assert len(api.jobs_of("stale")) == 1
        assert 'kubetune_reconciles_total{kind="FineTuneJob",trigger="resync"}' in resyncing.metrics()
        api.custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "stale")
    finally:
        resyncing.stop()
        e2e_cluster.processes["kubetune-operator"] = operator.process  # its log is the one to show on failure
        operator.start()


def test_relative_paths_fail_with_a_message(operator: OperatorProcess, api: Api):
    api.apply("laptop-paths", dataset={"train": "./data/train.jsonl"})
    status = api.wait_phase("laptop-paths", "Failed")
    assert status["message"].startswith("spec.dataset.train: relative path './data/train.jsonl'")
    assert api.condition(status, "Stalled")["reason"] == "InvalidSpec"
    assert not api.jobs_of("laptop-paths")


def test_trainer_reports_progress_with_its_own_minimal_credentials(operator: OperatorProcess, api: Api,
                                                                     e2e_cluster: ControlPlane):
    api.start_with_pod_annotations("progress", RUN_FOREVER)
    api.apply("neighbour", suspend=True)
    api.wait_phase("progress", "Validating", "Running")
    # The trainer's identity: the namespace's trainer ServiceAccount the pod runs as, with a token
    # bound to the pod (as the kubelet asks for it), which the chart's status policy ties to this job.
    pod = next(p for p in api.pods_of("progress") if p.status.phase == "Running")
    assert pod.spec.service_account_name == TRAINER_ACCOUNT
    assert api.ftj("progress")["status"]["trainerJob"] == api.job("progress").metadata.name
    trainer = k8s.CustomObjectsApi(service_account_client(e2e_cluster, NS, TRAINER_ACCOUNT, create=False,
                                                          bound_pod=(pod.metadata.name, pod.metadata.uid)))
    policy = install_status_policy(e2e_cluster, NS)
    t0 = time.monotonic()
    # The trainer's own reporter, as `kubetune trainer-run` builds it, on that identity.
    reporter = KubernetesStatusReporter("progress", NS, api=trainer)
    reporter.report(Progress(step=40, total_steps=100, epoch=1.2, percent=40, train_loss=1.234, eval_loss=1.5,
                             tokens_per_second=2400.0, eta_seconds=600), force=True)

    def columns() -> list[str] | None:
        out = e2e_cluster.kubectl("get", "ftj", "progress", "-n", NS, "--no-headers").stdout.split()
        # NAME PHASE PROGRESS STEP LOSS EVAL ETA AGE
        return out if out[1:7] == ["Running", "40", "40", "1.234", "1.5", "600"] else None

    wait_for(columns, 30, "kubectl get ftj to show Running, 40%, the losses")
    assert time.monotonic() - t0 < 30
    assert api.ftj("progress")["status"]["phase"] == "Running"  # the operator kept its fields

    def forbidden(call) -> bool:
        try:
            call()
        except ApiException as err:
            return err.status == 403
        return False

    core = k8s.CoreV1Api(trainer.api_client)
    assert forbidden(lambda: trainer.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "neighbour"))
    # RBAC lets the namespace's trainer account patch any FineTuneJob status; the policy does not
    # (compiled asynchronously: dry runs, which admission sees and nothing stores, until it is in force).
    wait_for(lambda: forbidden(lambda: trainer.patch_namespaced_custom_object_status(
        GROUP, VERSION, NS, PLURAL, "neighbour", {"status": {"progress": {"step": 1}}}, dry_run="All")), 30,
        "the status policy to refuse the trainer's patch of another FineTuneJob")
    assert forbidden(lambda: trainer.patch_namespaced_custom_object_status(
        GROUP, VERSION, NS, PLURAL, "neighbour", {"status": {"progress": {"step": 1}}}))
    policy.remove()
    assert "progress" not in (api.ftj("neighbour").get("status") or {})
    assert forbidden(lambda: trainer.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL))
    assert forbidden(lambda: trainer.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "progress",
                                                                    {"spec": {"suspend": True}}))
    assert forbidden(lambda: core.read_namespaced_secret("s3-creds", NS))
    assert forbidden(lambda: core.list_namespaced_secret(NS))
    assert forbidden(lambda: trainer.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "progress"))  # no reads at all

    # The trainer crashes and its last log line prints the credentials it got from the Secret; the
    # kubelet copies it into the pod status (FallbackToLogsOnError), where the operator reads the
    # last words it puts into status.message and Events. The value must not get any further.
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    last_words = (f"Traceback (most recent call last):\nbotocore.exceptions.ClientError: SignatureDoesNotMatch; "
                  f"env {{'AWS_ACCESS_KEY_ID': 'e2e', 'AWS_SECRET_ACCESS_KEY': '{SECRET_VALUE}'}}")
    api.core.patch_namespaced_pod_status(pod.metadata.name, NS, {"status": {
        "phase": "Failed",
        "containerStatuses": [{"name": "trainer", "image": "kubetune-trainer:e2e", "imageID": "", "ready": False,
                               "restartCount": 0, "state": {"terminated": {
                                   "exitCode": 1, "reason": "Error", "message": last_words,
                                   "startedAt": now, "finishedAt": now}}}],
    }})
    status = api.wait_status("progress", lambda s: "SignatureDoesNotMatch" in (s.get("message") or ""),
                             "the crash's last words in the message", timeout=30)
    wait_for(lambda: any("SignatureDoesNotMatch" in (e.message or "") for e in api.core.list_namespaced_event(
        NS, field_selector="involvedObject.name=progress").items), 20, "an Event with the last words")
    events = [e.message or "" for e in api.core.list_namespaced_event(NS, field_selector="involvedObject.name=progress").items]
    leaks = {"status": json.dumps(api.ftj("progress")), "events": json.dumps(events),
             "operator log": operator.process.log_path.read_text()}
    assert [where for where, text in leaks.items() if SECRET_VALUE in text] == []
    assert "'AWS_SECRET_ACCESS_KEY': <redacted>" in status["message"]  # masked, the rest kept
    api.custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "progress")
