"""The operator's privileges, end to end: the namespace-scoped install, and least privilege proven
by removing each rule of helm/kubetune/rbac/operator-rules.yaml in turn (docs/security.md has the table).

Both run the operator as the chart's own ServiceAccount under a release name of their own, so the
cluster-wide ClusterRole other e2e modules bind to "kubetune-operator" grants them nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from kubetune.api import GROUP, VERSION
from tests.e2e.operator_process import CHART, NAMESPACE, OperatorProcess, render_operator_rbac
from tests.support.controlplane import ControlPlane, service_account_client
from tests.support.procs import wait_for

pytestmark = pytest.mark.e2e

ENV = {"KUBETUNE_TRAINER_IMAGE": "registry.corp/kubetune/trainer:e2e", "KUBETUNE_RESYNC_SECONDS": "3",
       "KUBETUNE_ROLLOUT_TICK_SECONDS": "1", "KUBETUNE_DEFAULT_STORAGE_URI": "s3://platform/runs"}
PARALLEL_RUNS = 3
STEP_TIMEOUT = 30  # seconds one check may take on a busy 2-core machine before it counts as broken


def ftj_body(name: str, ns: str, **spec) -> dict:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneJob", "metadata": {"name": name, "namespace": ns},
            "spec": {"baseModel": {"uri": "s3://models/tiny"}, "dataset": {"train": "s3://data/train.jsonl"},
                     "resources": {"gpusPerNode": 1, "cpu": "2", "memory": "8Gi"}, **spec}}


def md_body(name: str, ns: str) -> dict:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": name, "namespace": ns},
            "spec": {"model": {"uri": "s3://models/merged-v1"},
                     "serving": {"mode": "merged", "replicas": 1, "gpus": 1, "cpu": "2", "memory": "8Gi"},
                     "rollout": {"steps": [{"weight": 50, "pauseSeconds": 1}], "scaleDownDelaySeconds": 0,
                                 "trafficRouting": {"gatewayParentRefs": [{"name": "gw", "namespace": "gateways"}]}},
                     "analysis": {"metrics": []}}}


class Scenario:
    """The operator's whole job in one namespace, as ordered checks; each sequence stops at its first
    failing check. FineTuneJobs and the ModelDeployment run side by side to keep a pass short."""

    def __init__(self, cluster: ControlPlane, ns: str, timeout: float = STEP_TIMEOUT):
        self.ns, self.timeout = ns, timeout
        api = cluster.api_client()
        self.custom, self.batch = k8s.CustomObjectsApi(api), k8s.BatchV1Api(api)
        self.core, self.apps = k8s.CoreV1Api(api), k8s.AppsV1Api(api)

    def _wait(self, probe: Callable[[], object], what: str) -> None:
        wait_for(probe, self.timeout, what, interval=0.5)  # errors such as 404 count as "not yet"

    @staticmethod
    def _check(holds: bool, what: str) -> None:
        if not holds:
            raise TimeoutError(f"unexpected: {what}")  # a failed check, like a wait that ran out

    def _get(self, plural: str, name: str) -> dict:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, plural, name)

    def finetunejob_checks(self) -> list[tuple[str, Callable[[], None]]]:
        ns = self.ns
        ftj = lambda: self._get("finetunejobs", "train")  # noqa: E731
        return [
            ("FineTuneJob: trainer identity (ServiceAccount, Role, RoleBinding) and Job created",
             lambda: (self.custom.create_namespaced_custom_object(GROUP, VERSION, ns, "finetunejobs", ftj_body("train", ns)),
                      self._wait(lambda: self.batch.read_namespaced_job("train-train", ns), "the trainer Job"))),
            ("FineTuneJob: status written", lambda: self._wait(lambda: ftj().get("status", {}).get("phase"), "a phase")),
            ("FineTuneJob: Succeeded (Job watched, pods read)",
             lambda: self._wait(lambda: ftj().get("status", {}).get("phase") == "Succeeded", "phase Succeeded")),
            ("FineTuneJob: no handler state written into it (its status is the operator's only write)",
             lambda: self._check(not any(k.startswith("kubetune.io/") for k in ftj()["metadata"].get("annotations") or {}),
                                 f"annotations {ftj()['metadata'].get('annotations')}")),
            ("FineTuneJob: Event for the phase change",
             lambda: self._wait(lambda: self.core.list_namespaced_event(
                 ns, field_selector="involvedObject.name=train").items, "an Event")),
            ("FineTuneJob: spec.suspend reaches the Job",
             lambda: (self.custom.create_namespaced_custom_object(GROUP, VERSION, ns, "finetunejobs",
                                                                  ftj_body("held", ns, suspend=True)),
                      self._wait(lambda: self._get("finetunejobs", "held").get("status", {}).get("phase") == "Suspended",
                                 "phase Suspended"),
                      self.custom.patch_namespaced_custom_object(GROUP, VERSION, ns, "finetunejobs", "held",
                                                                 {"spec": {"suspend": False}}),
                      self._wait(lambda: self.batch.read_namespaced_job("held-train", ns).spec.suspend is False,
                                 "the Job unsuspended"))),
        ]

    def modeldeployment_checks(self) -> list[tuple[str, Callable[[], None]]]:
        ns = self.ns
        md = lambda: self._get("modeldeployments", "bot")  # noqa: E731
        first: dict = {}

        def stable() -> str | None:
            return (md().get("status", {}).get("stable") or {}).get("revision")

        def created():
            self.custom.create_namespaced_custom_object(GROUP, VERSION, ns, "modeldeployments", md_body("bot", ns))
            self._wait(lambda: self.apps.list_namespaced_deployment(ns).items, "a serving Deployment")

        def replaced():
            first["revision"] = stable()
            self.custom.patch_namespaced_custom_object(GROUP, VERSION, ns, "modeldeployments", "bot",
                                                       {"spec": {"model": {"uri": "s3://models/merged-v2"}}})
            self._wait(lambda: stable() not in (None, first["revision"]), "the second revision promoted")

        def retired():
            old = f"bot-{first['revision']}"
            self._wait(lambda: old not in {d.metadata.name for d in self.apps.list_namespaced_deployment(ns).items}
                       and old not in {s.metadata.name for s in self.core.list_namespaced_service(ns).items},
                       "the replaced revision's Deployment and Service deleted")

        return [
            ("ModelDeployment: serving Deployment created", created),
            ("ModelDeployment: status written", lambda: self._wait(lambda: md().get("status", {}).get("phase"), "a phase")),
            ("ModelDeployment: Healthy, revision and client Services created",
             lambda: self._wait(lambda: md().get("status", {}).get("phase") == "Healthy"
                                and self.core.read_namespaced_service("bot", ns), "Healthy with a client Service")),
            ("ModelDeployment: HTTPRoute created",
             lambda: self._wait(lambda: self.custom.get_namespaced_custom_object(
                 "gateway.networking.k8s.io", "v1", ns, "httproutes", "bot"), "the HTTPRoute")),
            ("ModelDeployment: kopf's handling recorded in annotations",
             lambda: self._wait(lambda: any(k.startswith("kubetune.io/") for k in md()["metadata"].get("annotations", {})),
                                "kopf's annotations")),
            ("ModelDeployment: a new revision promoted (Service and HTTPRoute re-pointed)", replaced),
            ("ModelDeployment: the replaced revision deleted", retired),
        ]

    def run(self) -> list[str]:
        """The first failing check of each sequence (empty: everything worked)."""
        def sequence(checks: list[tuple[str, Callable[[], None]]]) -> str | None:
            for name, check in checks:
                try:
                    check()
                except (TimeoutError, ApiException):
                    return name
            return None

        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(sequence, [self.finetunejob_checks(), self.modeldeployment_checks()]))
        return [r for r in results if r is not None]


# -- the namespace-scoped install -------------------------------------------------------------------

SCOPED = "kt-scoped"


@pytest.fixture(scope="module")
def scoped(e2e_cluster: ControlPlane, kubetune_crds: list[str], gateway_api_crds: list[str]) -> Iterator[tuple[str, str]]:
    """An operator installed namespace-scoped for one namespace; and a namespace it does not watch."""
    watched = e2e_cluster.create_namespace(f"scoped-{uuid.uuid4().hex[:6]}")
    other = e2e_cluster.create_namespace(f"unwatched-{uuid.uuid4().hex[:6]}")
    op = OperatorProcess(e2e_cluster, env={**ENV, "KUBETUNE_ALLOWED_TRAINER_IMAGES": "registry.corp/kubetune/*"},
                         release=SCOPED, namespaces=[watched]).start()
    yield watched, other
    op.stop()


def test_the_namespace_scoped_chart_has_no_cluster_wide_grant():
    out = subprocess.run(["helm", "template", SCOPED, str(CHART), "--namespace", NAMESPACE,
                          "--set", "watchAllNamespaces=false", "--set", "watchNamespaces={team-a,team-b}"],
                         check=True, capture_output=True, text=True).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    kinds = [(d["kind"], d["metadata"].get("namespace")) for d in docs]
    assert not any(kind in ("ClusterRole", "ClusterRoleBinding") for kind, _ in kinds), kinds
    assert {ns for kind, ns in kinds if kind in ("Role", "RoleBinding")} == {"team-a", "team-b"}
    args = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args and "--all-namespaces" not in args


def test_the_operator_takes_namespace_names_not_patterns():
    """A pattern would make kopf watch Namespace objects: a cluster-wide read a Role cannot grant."""
    res = subprocess.run([sys.executable, "-m", "kubetune.cli", "operator", "--namespace", "team-*"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "not patterns: team-*" in res.stderr


def test_a_namespace_scoped_operator_reconciles_its_namespace_only(e2e_cluster: ControlPlane, scoped: tuple[str, str]):
    watched, other = scoped
    custom = k8s.CustomObjectsApi(e2e_cluster.api_client())
    custom.create_namespaced_custom_object(GROUP, VERSION, other, "finetunejobs", ftj_body("elsewhere", other))
    assert not Scenario(e2e_cluster, watched, timeout=60).run()  # everything works where it is installed
    # By now the operator has long had its chance with the other namespace's job.
    elsewhere = custom.get_namespaced_custom_object(GROUP, VERSION, other, "finetunejobs", "elsewhere")
    assert "status" not in elsewhere and not k8s.BatchV1Api(e2e_cluster.api_client()).list_namespaced_job(other).items


def test_the_namespace_scoped_token_is_refused_outside_its_namespaces(e2e_cluster: ControlPlane, scoped: tuple[str, str]):
    watched, other = scoped
    token = service_account_client(e2e_cluster, NAMESPACE, f"{SCOPED}-operator", create=False)
    batch, custom, core = k8s.BatchV1Api(token), k8s.CustomObjectsApi(token), k8s.CoreV1Api(token)
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "x"}, "spec": {"template": {"spec": {
        "restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}}
    batch.list_namespaced_job(watched)  # allowed where it is installed: the 403s below are about scope
    for call in (lambda: batch.list_job_for_all_namespaces(), lambda: batch.list_namespaced_job(other),
                 lambda: batch.create_namespaced_job(other, job),
                 lambda: custom.list_namespaced_custom_object(GROUP, VERSION, other, "finetunejobs"),
                 lambda: custom.list_cluster_custom_object(GROUP, VERSION, "finetunejobs"),
                 lambda: core.list_namespace(), lambda: core.create_namespaced_service_account(
                     "kube-system", {"metadata": {"name": "x"}})):
        with pytest.raises(ApiException) as err:
            call()
        assert err.value.status == 403


def test_the_operator_refuses_an_image_outside_the_allow_list(e2e_cluster: ControlPlane, scoped: tuple[str, str]):
    """The operator's own guardrail check, for clusters without the admission policy (none is installed here)."""
    watched, _ = scoped
    custom = k8s.CustomObjectsApi(e2e_cluster.api_client())
    custom.create_namespaced_custom_object(GROUP, VERSION, watched, "finetunejobs",
                                           ftj_body("foreign", watched, images={"trainer": "docker.io/someone/x:1"}))

    def failed():
        st = custom.get_namespaced_custom_object(GROUP, VERSION, watched, "finetunejobs", "foreign").get("status") or {}
        return st if st.get("phase") == "Failed" else None

    status = wait_for(failed, 60, "the FineTuneJob Failed")
    stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
    assert stalled["reason"] == "InvalidSpec" and "spec.images.trainer" in status["message"], status
    assert "docker.io/someone/x:1" in status["message"]
    with pytest.raises(ApiException) as err:
        k8s.BatchV1Api(e2e_cluster.api_client()).read_namespaced_job("foreign-train", watched)
    assert err.value.status == 404


# -- least privilege: each rule removed in turn ------------------------------------------------------

RULES_RELEASE = "kt-rules"
# Rules only some clusters need, which the scenario here (no Kueue) cannot exercise: each with the
# test that runs the operator under the chart's rules where it is needed, and fails without it.
NEEDED_ELSEWHERE = {
    "kueue.x-k8s.io/workloads: list,watch": "tests/e2e/test_kueue.py (Kueue's reason in a queued job's status)",
}


def rule_key(rule: dict) -> str:
    groups = ",".join(g or "core" for g in rule["apiGroups"])
    return f"{groups}/{','.join(rule['resources'])}: {','.join(rule['verbs'])}"


def operator_rules() -> list[dict]:
    docs = [d for d in yaml.safe_load_all(render_operator_rbac(RULES_RELEASE, ["placeholder"])) if d]
    return next(d for d in docs if d["kind"] == "Role")["rules"]


def owner_references_enforced(cluster: ControlPlane, ns: str) -> bool:
    """Whether the apiserver runs the OwnerReferencesPermissionEnforcement admission plugin (off by
    default; OpenShift and hardened clusters turn it on): only then does blockOwnerDeletion on a child
    need `update` on the owner's finalizers."""
    account = f"probe-{uuid.uuid4().hex[:6]}"
    rbac = k8s.RbacAuthorizationV1Api(cluster.api_client())
    rbac.create_namespaced_role(ns, {"metadata": {"name": account}, "rules": [
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]}]})
    rbac.create_namespaced_role_binding(ns, {"metadata": {"name": account}, "roleRef": {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account},
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": ns}]})
    core = k8s.CoreV1Api(service_account_client(cluster, ns, account))
    owner = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneJob", "name": "x", "uid": str(uuid.uuid4()),
             "controller": True, "blockOwnerDeletion": True}
    try:
        core.create_namespaced_config_map(ns, {"metadata": {"name": account, "ownerReferences": [owner]}}, dry_run="All")
    except ApiException as err:
        if err.status == 403:
            return True
        raise
    return False


def removals(rules: list[dict], per_verb: bool) -> list[tuple[str, list[dict]]]:
    """(what was removed, the remaining rules): each rule in turn, or with per_verb each verb of each rule."""
    out = []
    for i, rule in enumerate(rules):
        rest = rules[:i] + rules[i + 1:]
        if not per_verb or len(rule["verbs"]) == 1:
            out.append((rule_key(rule), rest))
            continue
        for verb in rule["verbs"]:
            fewer = {**rule, "verbs": [v for v in rule["verbs"] if v != verb]}
            out.append((f"{rule_key({**rule, 'verbs': [verb]})}", rules[:i] + [fewer] + rules[i + 1:]))
    return out


def run_with(cluster: ControlPlane, rules: list[dict], label: str) -> list[str]:
    """The scenario against an operator holding exactly `rules` in a fresh namespace; the failing checks."""
    if cluster.kubectl("get", "namespace", NAMESPACE, check=False).returncode != 0:
        cluster.create_namespace(NAMESPACE)
    ns = cluster.create_namespace(f"rules-{label}-{uuid.uuid4().hex[:4]}")
    release = f"{RULES_RELEASE}-{label}"  # its own ServiceAccount and kubeconfig: runs go side by side
    docs = [d for d in yaml.safe_load_all(render_operator_rbac(release, [ns])) if d]
    for doc in docs:
        if doc["kind"] == "Role":
            doc["rules"] = rules
    manifest = cluster.workdir / f"{ns}-rbac.yaml"
    manifest.write_text(yaml.safe_dump_all(docs))
    cluster.kubectl("apply", "-f", str(manifest))
    op = OperatorProcess(cluster, env=ENV, release=release, namespaces=[ns], install_rbac=False)
    try:
        try:
            op.start()
        except (TimeoutError, RuntimeError):
            return ["the operator starts"]
        return Scenario(cluster, ns).run()
    finally:
        op.stop()
        k8s.CoreV1Api(cluster.api_client()).delete_namespace(ns)  # frees the fake GPUs


def test_every_operator_rule_is_needed(e2e_cluster: ControlPlane, kubetune_crds: list[str], gateway_api_crds: list[str]):
    """KUBETUNE_RBAC_PER_VERB=1 removes single verbs instead of whole rules (about three times as long)."""
    rules = operator_rules()
    baseline = run_with(e2e_cluster, rules, "all")
    assert baseline == [], f"the scenario fails with every rule granted: {baseline}"
    probe_ns = e2e_cluster.create_namespace(f"ownerref-probe-{uuid.uuid4().hex[:4]}")
    enforced = owner_references_enforced(e2e_cluster, probe_ns)
    per_verb = os.environ.get("KUBETUNE_RBAC_PER_VERB") == "1"
    # A few operators at once, each in its own namespace with its own Role: most runs wait out a
    # check's timeout, so side by side they take a fraction of the time on two cores.
    with ThreadPoolExecutor(max_workers=PARALLEL_RUNS) as pool:
        runs = {key: pool.submit(run_with, e2e_cluster, rest, str(n))
                for n, (key, rest) in enumerate(removals(rules, per_verb))}
        table = {key: run.result() for key, run in runs.items()}
    report = "\n".join(f"| `{key}` | {'; '.join(broken) or '(nothing)'} |" for key, broken in table.items())
    print(f"\nremoved -> first failing checks (OwnerReferencesPermissionEnforcement: {enforced}):\n{report}")
    (e2e_cluster.workdir / "rbac-rule-table.md").write_text(report + "\n")
    unneeded = [key for key, broken in table.items() if not broken and key not in NEEDED_ELSEWHERE
                and not (key.endswith("/finalizers: update") and not enforced)]
    assert not unneeded, f"rules nothing needs (remove them from operator-rules.yaml): {unneeded}\n{report}"
