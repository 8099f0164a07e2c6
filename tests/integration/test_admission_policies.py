"""The chart's ValidatingAdmissionPolicies, rendered by `helm template` and enforced by the real
kube-apiserver: who may write which status fields, what the operator's token may run, who may pass
for the operator, and the platform team's guardrails (docs/security.md).

The bindings cover only this module's namespace (admissionPolicies.namespaceSelector), so other
tests sharing the cluster are unaffected; the policies are removed at the end.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from kubetune.api import GROUP, VERSION, FineTuneJobSpec, FineTuneJobStatus
from kubetune.api.finetunejob import Progress
from kubetune.api.modeldeployment import ModelDeploymentSpec
from kubetune.builders.common import Owner
from kubetune.builders.serving.deployment import build_serving_deployment
from kubetune.builders.serving.revision import ServedRevision
from kubetune.builders.trainer import TRAINER_ACCOUNT, build_job, build_trainer_config, build_trainer_identity
from kubetune.finetunejob.status import OPERATOR_FIELDS
from kubetune.guardrails import finetunejob_guardrail_problems
from kubetune.k8s import resource_path
from kubetune.settings import OperatorSettings
from kubetune_trainer.progress import KubernetesStatusReporter
from tests.support.controlplane import ControlPlane, service_account_client
from tests.support.procs import wait_for
from tests.support.tools import REPO

pytestmark = pytest.mark.integration

RELEASE = "kt-policy"  # the chart names the operator's ServiceAccount "<release>-operator"
SYSTEM_NS = "kubetune-policy-system"
OPERATOR_SA = f"{RELEASE}-operator"
SELECTOR_LABEL = "kubetune-policy-test"
ALLOWED_IMAGES = ["registry.corp/kubetune/trainer:*", "ghcr.io/kubetune/trainer:0.1.0"]
ALLOWED_SECRETS = ["kubetune-*"]
DEFAULT_SECRET = "platform-s3"
SETTINGS = OperatorSettings(trainer_image="registry.corp/kubetune/trainer:1")


def helm_template(*args: str) -> list[dict]:
    out = subprocess.run(["helm", "template", RELEASE, str(REPO / "helm" / "kubetune"), "--namespace", SYSTEM_NS,
                          *args], check=True, capture_output=True, text=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


class Cluster:
    """Clients for the admin, the operator's ServiceAccount and a tenant, in one namespace."""

    def __init__(self, cp: ControlPlane, ns: str):
        self.cp, self.ns = cp, ns
        self.admin = cp.api_client()
        self.operator = service_account_client(cp, SYSTEM_NS, OPERATOR_SA, create=False)
        self.tenant = service_account_client(cp, ns, "tenant")

    def custom(self, who: k8s.ApiClient) -> k8s.CustomObjectsApi:
        return k8s.CustomObjectsApi(who)

    def ftj(self, name: str, **spec) -> dict:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneJob", "metadata": {"name": name, "namespace": self.ns},
                "spec": {"baseModel": {"uri": "s3://models/base"}, "dataset": {"train": "s3://data/train.jsonl"},
                         "storage": {"uri": "s3://runs", "credentialsSecret": {"name": "kubetune-s3"}}, **spec}}
        return self.custom(self.tenant).create_namespaced_custom_object(GROUP, VERSION, self.ns, "finetunejobs", body)


@pytest.fixture(scope="module")
def cluster(kube_api: ControlPlane, kubetune_crds: list[str]) -> Iterator[Cluster]:
    ns = f"policy-{uuid.uuid4().hex[:6]}"
    kube_api.create_namespace(ns, labels={SELECTOR_LABEL: ns})
    if kube_api.kubectl("get", "namespace", SYSTEM_NS, check=False).returncode != 0:
        kube_api.create_namespace(SYSTEM_NS)
    # Installed as a platform team would: the chart's ServiceAccount, its namespace-scoped Role
    # (the operator's token creates the trainer's Role below, which RBAC lets it only with these
    # rules), the policies and the guardrails.
    docs = helm_template(
        "--set", "watchAllNamespaces=false", "--set", f"watchNamespaces={{{ns}}}",
        "--set", f"admissionPolicies.namespaceSelector.matchLabels.{SELECTOR_LABEL}={ns}",
        "--set", f"guardrails.allowedTrainerImages={{{','.join(ALLOWED_IMAGES)}}}",
        "--set", f"guardrails.allowedSecrets={{{','.join(ALLOWED_SECRETS)}}}",
        "--set", f"defaults.storageCredentialsSecret={DEFAULT_SECRET}",
        "--show-only", "templates/serviceaccount.yaml", "--show-only", "templates/role.yaml",
        "--show-only", "templates/policy-status.yaml", "--show-only", "templates/policy-workloads.yaml",
        "--show-only", "templates/policy-guardrails.yaml",
    )
    manifest = kube_api.workdir / f"{ns}-policies.yaml"
    manifest.write_text(yaml.safe_dump_all(docs))
    kube_api.kubectl("apply", "-f", str(manifest))
    # A tenant who may create Jobs, Deployments and FineTuneJobs and patch their status (as a
    # namespace admin might), so only the policies stand in the way.
    rbac = k8s.RbacAuthorizationV1Api(kube_api.api_client())
    rbac.create_namespaced_role(ns, {"metadata": {"name": "tenant"}, "rules": [
        {"apiGroups": ["batch", "apps"], "resources": ["jobs", "deployments"],
         "verbs": ["create", "update", "patch", "get", "delete"]},
        # What OwnerReferencesPermissionEnforcement asks of whoever sets blockOwnerDeletion.
        {"apiGroups": [GROUP], "resources": ["finetunejobs/finalizers", "modeldeployments/finalizers"], "verbs": ["update"]},
        {"apiGroups": [GROUP], "resources": ["finetunejobs", "modeldeployments", "finetunejobs/status",
                                             "modeldeployments/status"], "verbs": ["create", "get", "patch"]}]})
    rbac.create_namespaced_role_binding(ns, {"metadata": {"name": "tenant"}, "roleRef": {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "tenant"},
        "subjects": [{"kind": "ServiceAccount", "name": "tenant", "namespace": ns}]})
    c = Cluster(kube_api, ns)
    # The apiserver compiles a new policy asynchronously: wait until the guardrail refuses.
    wait_for(lambda: _refused(lambda: c.ftj(f"probe-{uuid.uuid4().hex[:4]}", images={"trainer": "evil/x:1"})),
             30, "the guardrail policy to be enforced")
    yield c
    kube_api.kubectl("delete", "-f", str(manifest), "--ignore-not-found", "--wait=false")
    k8s.CoreV1Api(kube_api.api_client()).delete_namespace(ns)


def _refused(call) -> ApiException | None:
    try:
        call()
    except ApiException as err:
        if err.status in (403, 422):
            return err
        raise
    return None


def refused(call) -> str:
    """The apiserver's message for a request the policies must refuse."""
    err = _refused(call)
    assert err is not None, "the request was admitted"
    return json.loads(err.body)["message"]


# -- status ownership -----------------------------------------------------------------------------

def test_the_chart_guards_exactly_the_operator_owned_status_fields():
    policy = next(d for d in helm_template("--show-only", "templates/policy-status.yaml")
                  if d["kind"] == "ValidatingAdmissionPolicy" and d["metadata"]["name"].endswith("finetunejob-status"))
    guarded = {v["expression"].split("?status.?", 1)[1].split(" ", 1)[0] for v in policy["spec"]["validations"]
               if "?status.?" in v["expression"]}
    aliases = {FineTuneJobStatus.model_fields[name].alias for name in OPERATOR_FIELDS}
    assert guarded == aliases
    # The policy recognises the trainer by the account the operator runs trainer pods as.
    trainer_user = next(v["expression"] for v in policy["spec"]["variables"] if v["name"] == "trainerUser")
    assert f":{TRAINER_ACCOUNT}'" in trainer_user


def _trainer_identity(cluster: Cluster) -> None:
    """The namespace's trainer ServiceAccount, Role and RoleBinding, created by the operator's token
    as in production (RBAC lets it grant only what it holds)."""
    for obj in build_trainer_identity(cluster.ns):
        try:
            _create(cluster.operator, obj)
        except ApiException as err:
            if err.status != 409:
                raise


def _recorded_ftj(cluster: Cluster, name: str) -> Owner:
    """A FineTuneJob whose status names its trainer Job, as the operator writes it once the Job exists."""
    owner = Owner(name=name, namespace=cluster.ns, uid=cluster.ftj(name)["metadata"]["uid"])
    cluster.custom(cluster.operator).patch_namespaced_custom_object_status(
        GROUP, VERSION, cluster.ns, "finetunejobs", name,
        {"status": {"phase": "Running", "message": "training", "trainerJob": owner.job_name}})
    return owner


def _pod_token(cluster: Cluster, pod_name: str) -> k8s.CustomObjectsApi:
    """The token a kubelet would give a pod of that name running as the trainer account."""
    pod = k8s.CoreV1Api(cluster.admin).create_namespaced_pod(cluster.ns, {
        "metadata": {"name": pod_name},
        "spec": {"serviceAccountName": TRAINER_ACCOUNT, "automountServiceAccountToken": False,
                 "containers": [{"name": "trainer", "image": "registry.corp/kubetune/trainer:1"}]}})
    api = service_account_client(cluster.cp, cluster.ns, TRAINER_ACCOUNT, create=False,
                                 bound_pod=(pod.metadata.name, pod.metadata.uid))
    return cluster.custom(api)


def _status(cluster: Cluster, name: str) -> dict:
    return cluster.custom(cluster.operator).get_namespaced_custom_object(
        GROUP, VERSION, cluster.ns, "finetunejobs", name)["status"]


def test_the_trainer_token_patches_progress_but_not_the_operators_fields(cluster: Cluster):
    _trainer_identity(cluster)
    owner = _recorded_ftj(cluster, "owned")
    trainer = _pod_token(cluster, f"{owner.job_name}-b2x7q")
    KubernetesStatusReporter("owned", cluster.ns, api=trainer).report(Progress(step=3, total_steps=10, percent=30), force=True)
    status = _status(cluster, "owned")
    assert status["progress"]["step"] == 3 and status["phase"] == "Running"
    for field, value in [("phase", "Succeeded"), ("message", "all good"), ("observedGeneration", 9),
                         ("conditions", [{"type": "Ready", "status": "True", "reason": "Forged", "message": "",
                                          "lastTransitionTime": "2024-01-01T00:00:00Z"}]),
                         ("artifacts", {"adapterUri": "s3://elsewhere/adapter"}), ("trainerJob", "other-train")]:
        message = refused(lambda: trainer.patch_namespaced_custom_object_status(
            GROUP, VERSION, cluster.ns, "finetunejobs", "owned", {"status": {field: value}}))
        assert f"status.{field} of a FineTuneJob is written only by the kubetune operator" in message
    # Removing a field is a change too.
    refused(lambda: trainer.patch_namespaced_custom_object_status(
        GROUP, VERSION, cluster.ns, "finetunejobs", "owned", {"status": {"phase": None}}))
    assert _status(cluster, "owned")["phase"] == "Running"


def test_a_trainer_token_writes_only_the_finetunejob_whose_job_runs_its_pod(cluster: Cluster):
    """One trainer account serves the namespace; the status policy keeps each token to its own job."""
    _trainer_identity(cluster)
    mine = _recorded_ftj(cluster, "mine")
    _recorded_ftj(cluster, "other")
    # "mine-train-x"'s Job is "mine-train-x-train": its pods' names start with "mine-train-" too.
    lookalike = _recorded_ftj(cluster, "mine-train-x")
    progress = {"status": {"progress": {"step": 1, "totalSteps": 10, "percent": 10}}}

    def patch(api: k8s.CustomObjectsApi, name: str) -> None:
        api.patch_namespaced_custom_object_status(GROUP, VERSION, cluster.ns, "finetunejobs", name, progress)

    single, rank1 = _pod_token(cluster, f"{mine.job_name}-k9t2m"), _pod_token(cluster, f"{mine.job_name}-1-x4z7r")
    patch(single, "mine")
    patch(rank1, "mine")  # an Indexed Job's pod: "<job>-<index>-<random>"
    assert _status(cluster, "mine")["progress"]["step"] == 1
    message = refused(lambda: patch(single, "other"))
    assert f"the trainer token of pod {mine.job_name}-k9t2m may write the status of the FineTuneJob" in message
    refused(lambda: patch(_pod_token(cluster, f"{lookalike.job_name}-q2w5z"), "mine"))
    assert "progress" not in _status(cluster, "other")
    # Reads are not admission-checked, so the Role grants none: 403 from RBAC, even for its own.
    for call in (lambda: single.get_namespaced_custom_object(GROUP, VERSION, cluster.ns, "finetunejobs", "mine"),
                 lambda: single.get_namespaced_custom_object_status(GROUP, VERSION, cluster.ns, "finetunejobs", "other"),
                 lambda: single.list_namespaced_custom_object(GROUP, VERSION, cluster.ns, "finetunejobs")):
        with pytest.raises(ApiException) as err:
            call()
        assert err.value.status == 403
    # Not bound to a pod (someone allowed to mint tokens for the account): nothing to tie it to.
    unbound = cluster.custom(service_account_client(cluster.cp, cluster.ns, TRAINER_ACCOUNT, create=False))
    assert "(none: not a pod-bound token)" in refused(lambda: patch(unbound, "mine"))
    # A FineTuneJob whose trainer Job the operator has not recorded yet accepts no trainer writes.
    cluster.ftj("unrecorded")
    refused(lambda: patch(_pod_token(cluster, "unrecorded-train-p5s8d"), "unrecorded"))


def test_only_the_operator_writes_modeldeployment_status(cluster: Cluster):
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": "md", "namespace": cluster.ns},
            "spec": {"model": {"uri": "s3://models/merged"}, "serving": {"mode": "merged"}}}
    cluster.custom(cluster.tenant).create_namespaced_custom_object(GROUP, VERSION, cluster.ns, "modeldeployments", body)
    cluster.custom(cluster.operator).patch_namespaced_custom_object_status(
        GROUP, VERSION, cluster.ns, "modeldeployments", "md", {"status": {"phase": "Progressing"}})
    message = refused(lambda: cluster.custom(cluster.tenant).patch_namespaced_custom_object_status(
        GROUP, VERSION, cluster.ns, "modeldeployments", "md", {"status": {"phase": "Healthy"}}))
    assert "written only by the kubetune operator" in message


# -- what the operator's token may run ------------------------------------------------------------

def _create(who: k8s.ApiClient, obj: dict, dry_run: bool = False) -> dict:
    meta = obj["metadata"]
    query = [("dryRun", "All")] if dry_run else []
    return who.call_api(resource_path(obj["apiVersion"], obj["kind"], meta["namespace"]), "POST", body=obj,
                        query_params=query, header_params={"Content-Type": "application/json", "Accept": "application/json"},
                        auth_settings=["BearerToken"], _return_http_data_only=True, response_type="object")


def trainer_job(cluster: Cluster, name: str, real_owner: bool = False) -> tuple[Owner, dict]:
    """The Job the operator would build; with real_owner its FineTuneJob exists, so a Job that is
    really created is not garbage-collected (when the session's controller-manager runs) as an orphan."""
    spec = FineTuneJobSpec.model_validate({"baseModel": {"uri": "s3://m/b"}, "dataset": {"train": "s3://d/t"},
                                           "storage": {"uri": "s3://runs"}})
    uid = cluster.ftj(name)["metadata"]["uid"] if real_owner else str(uuid.uuid4())
    owner = Owner(name=name, namespace=cluster.ns, uid=uid)
    return owner, build_job(owner, build_trainer_config(owner, spec, SETTINGS), SETTINGS)


@pytest.mark.parametrize("name", ["short", "a-finetunejob-name-long-enough-that-its-trainer-job-name-is-hashed"])
def test_the_operator_creates_trainer_jobs_that_run_as_the_trainer_account(cluster: Cluster, name: str):
    owner, job = trainer_job(cluster, name)
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == TRAINER_ACCOUNT
    _create(cluster.operator, job, dry_run=True)


@pytest.mark.parametrize("account", ["default", "cluster-admin-sa", "victim-trainer"])
def test_the_operator_token_cannot_run_a_job_as_another_account(cluster: Cluster, account: str):
    _, job = trainer_job(cluster, "victim")
    job["spec"]["template"]["spec"]["serviceAccountName"] = account
    message = refused(lambda: _create(cluster.operator, job, dry_run=True))
    assert f'runs as the namespace\'s trainer ServiceAccount {TRAINER_ACCOUNT}, not "{account}"' in message


def test_the_operator_token_cannot_use_the_deprecated_account_field_or_drop_the_owner(cluster: Cluster):
    _, job = trainer_job(cluster, "victim")
    del job["spec"]["template"]["spec"]["serviceAccountName"]
    job["spec"]["template"]["spec"]["serviceAccount"] = "cluster-admin-sa"  # the apiserver copies it over
    assert 'not "cluster-admin-sa"' in refused(lambda: _create(cluster.operator, job, dry_run=True))
    _, job = trainer_job(cluster, "victim")
    job["metadata"]["ownerReferences"] = []
    assert "exactly one controller ownerReference" in refused(lambda: _create(cluster.operator, job, dry_run=True))


def serving_deployment(cluster: Cluster) -> dict:
    spec = ModelDeploymentSpec.model_validate({"model": {"uri": "s3://models/merged"}, "serving": {"mode": "merged"}})
    owner = Owner(name="bot", namespace=cluster.ns, uid=str(uuid.uuid4()), kind="ModelDeployment")
    rev = ServedRevision(revision="r1", mode="merged", model_uri="s3://models/merged", base_model_uri=None,
                         lora_rank=None, storage=None)
    return build_serving_deployment(owner, spec, rev, 1, SETTINGS)


def test_serving_deployments_from_the_operator_mount_no_token(cluster: Cluster):
    _create(cluster.operator, serving_deployment(cluster), dry_run=True)
    token_volume = {"name": "t", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}}
    for change in ({"serviceAccountName": "cluster-admin-sa"}, {"automountServiceAccountToken": True},
                   {"volumes": [*serving_deployment(cluster)["spec"]["template"]["spec"]["volumes"], token_volume]}):
        dep = serving_deployment(cluster)
        dep["spec"]["template"]["spec"].update(change)
        assert "mounts no token" in refused(lambda: _create(cluster.operator, dep, dry_run=True)), change


# -- nobody else passes for the operator ----------------------------------------------------------

def test_a_tenant_cannot_forge_a_job_labelled_as_the_operators(cluster: Cluster):
    _, job = trainer_job(cluster, "forged")
    # Without blockOwnerDeletion, which OwnerReferencesPermissionEnforcement would refuse first.
    for ref in job["metadata"]["ownerReferences"]:
        ref.pop("blockOwnerDeletion", None)
    message = refused(lambda: _create(cluster.tenant, job, dry_run=True))
    assert "only the kubetune operator" in message and "creates jobs labelled" in message
    dep = serving_deployment(cluster)
    for ref in dep["metadata"]["ownerReferences"]:
        ref.pop("blockOwnerDeletion", None)
    assert "creates deployments labelled" in refused(lambda: _create(cluster.tenant, dep, dry_run=True))
    # The same Job without the label is the tenant's own business; relabelling it later is refused.
    del job["metadata"]["labels"]["app.kubernetes.io/managed-by"]
    job["metadata"]["ownerReferences"] = []
    job["metadata"]["name"] = "tenants-own"
    _create(cluster.tenant, job)
    batch = k8s.BatchV1Api(cluster.tenant)
    refused(lambda: batch.patch_namespaced_job("tenants-own", cluster.ns,
                                               {"metadata": {"labels": {"app.kubernetes.io/managed-by": "kubetune-operator"}}}))


def test_a_tenant_may_update_the_operators_job_but_not_repoint_it(cluster: Cluster):
    owner, job = trainer_job(cluster, "queued", real_owner=True)
    job["spec"]["suspend"] = True
    _create(cluster.operator, job)
    batch = k8s.BatchV1Api(cluster.tenant)
    # What Kueue does to a queued Job: allowed.
    batch.patch_namespaced_job(owner.job_name, cluster.ns, {"spec": {"suspend": False}})
    other = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneJob", "name": "someone-else",
             "uid": str(uuid.uuid4()), "controller": False}
    message = refused(lambda: batch.patch_namespaced_job(
        owner.job_name, cluster.ns, {"metadata": {"ownerReferences": [owner.owner_reference(), other]}}))
    assert "adds an owner reference" in message


# -- guardrails ------------------------------------------------------------------------------------

@pytest.mark.parametrize("images, secret, token, offending", [
    ({"trainer": "docker.io/someone/trainer:latest"}, "kubetune-s3", None, "docker.io/someone/trainer:latest"),
    ({"trainer": "ghcr.io/kubetune/trainer:0.1.0-evil"}, "kubetune-s3", None, "ghcr.io/kubetune/trainer:0.1.0-evil"),
    ({}, "database-password", None, "database-password"),
    ({}, "kubetune-s3", "ci-deploy-key", "ci-deploy-key"),
    ({"trainer": "registry.corp/kubetune/trainer:2.0"}, "kubetune-s3", "kubetune-hf", None),
    ({"trainer": "ghcr.io/kubetune/trainer:0.1.0"}, DEFAULT_SECRET, None, None),
    ({}, "kubetune-s3", None, None),
])
def test_guardrails_are_enforced_at_apply_and_by_the_operator(cluster: Cluster, images, secret, token, offending):
    base = {"uri": "s3://models/base", **({"tokenSecret": {"name": token}} if token else {})}
    spec = {"images": images, "baseModel": base, "storage": {"uri": "s3://runs", "credentialsSecret": {"name": secret}}}
    settings = OperatorSettings.from_env({"KUBETUNE_ALLOWED_TRAINER_IMAGES": ",".join(ALLOWED_IMAGES),
                                          "KUBETUNE_ALLOWED_SECRETS": ",".join(ALLOWED_SECRETS),
                                          "KUBETUNE_DEFAULT_STORAGE_SECRET": DEFAULT_SECRET})
    operator_problems = finetunejob_guardrail_problems(
        FineTuneJobSpec.model_validate({"dataset": {"train": "s3://d/t"}, **spec}), settings)
    name = f"guard-{uuid.uuid4().hex[:6]}"
    if offending is None:
        cluster.ftj(name, **spec)
        assert operator_problems == []
    else:
        message = refused(lambda: cluster.ftj(name, **spec))
        assert f'"{offending}"' in message and ("is not allowed on this cluster" in message or "may not be referenced" in message)
        # The operator refuses the same spec for the same value (clusters without the policy).
        assert len(operator_problems) == 1 and f"'{offending}'" in operator_problems[0]


def test_modeldeployment_guardrails(cluster: Cluster):
    def md(**serving) -> dict:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment",
                "metadata": {"name": f"md-{uuid.uuid4().hex[:6]}", "namespace": cluster.ns},
                "spec": {"model": {"uri": "s3://models/merged", "storage": {"credentialsSecret": {"name": "kubetune-s3"}}},
                         "serving": {"mode": "merged", **serving}}}
        return cluster.custom(cluster.tenant).create_namespaced_custom_object(GROUP, VERSION, cluster.ns, "modeldeployments", body)

    md(pullerImage="registry.corp/kubetune/trainer:3")
    assert "spec.serving.pullerImage" in refused(lambda: md(pullerImage="docker.io/someone/puller:1"))
