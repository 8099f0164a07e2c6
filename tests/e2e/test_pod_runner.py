"""The pod runner as a kubelet: env, volumes, token, status, config errors, deletion (plain pods).

The FineTuneJob scenarios are in test_real_training.py; these pin the
runner's own contract with small Python containers of the trainer image.
"""

from __future__ import annotations

import json
import textwrap
import uuid

import pytest
from kubernetes import client as k8s
from kubernetes import watch

from tests.support.controlplane import ControlPlane
from tests.support.pod_runner import TRAINER_IMAGE, PodRunner
from tests.support.procs import wait_for

pytestmark = pytest.mark.e2e

NS = "pod-runner-e2e"

# Reads what a kubelet provides and answers with it as JSON, then writes its termination message.
PROBE = textwrap.dedent("""\
    import json, os, pathlib, signal, sys, time
    sa = pathlib.Path("/var/run/secrets/kubernetes.io/serviceaccount")
    from kubernetes import client, config
    config.load_incluster_config()
    me = client.CoreV1Api().read_namespaced_pod(os.environ["POD_NAME"], open(sa / "namespace").read())
    out = {"env": {k: os.environ.get(k) for k in ("FROM_SECRET", "FROM_CM", "POD_NAME", "POD_IP", "LABEL", "EXPANDED", "CM_ALL_A")},
           "config": pathlib.Path("/etc/probe/greeting").read_text(), "uid": me.metadata.uid,
           "hostname": os.uname().nodename}
    print(json.dumps(out), flush=True)
    if os.environ.get("WAIT"):
        signal.signal(signal.SIGTERM, lambda *_: (open("/dev/termination-log", "w").write("got SIGTERM"), sys.exit(3)))
        time.sleep(600)
    code = int(os.environ.get("EXIT", "0"))
    if code == 0:
        pathlib.Path("/dev/termination-log").write_text("probe done")
    sys.exit(code)
""")


@pytest.fixture(scope="module")
def ns(e2e_cluster: ControlPlane) -> str:
    e2e_cluster.create_namespace(NS)
    core = k8s.CoreV1Api(e2e_cluster.api_client())
    # The probe reads its own pod: the default ServiceAccount may get pods in this namespace.
    rbac = k8s.RbacAuthorizationV1Api(e2e_cluster.api_client())
    rbac.create_namespaced_role(NS, {"metadata": {"name": "pod-reader"},
                                     "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]})
    rbac.create_namespaced_role_binding(NS, {
        "metadata": {"name": "pod-reader"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": NS}]})
    core.create_namespaced_config_map(NS, k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name="probe"),
                                                          data={"greeting": "hello from a ConfigMap", "A": "all-a"}))
    return NS


def probe_pod(name: str, secret: str = "probe-secret", env: dict[str, str] | None = None, image: str = TRAINER_IMAGE) -> dict:
    extra = [{"name": k, "value": v} for k, v in (env or {}).items()]
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "probe"}},
        "spec": {
            "restartPolicy": "Never", "terminationGracePeriodSeconds": 20,
            "nodeSelector": {"type": "kwok"}, "tolerations": [{"operator": "Exists"}],
            "containers": [{
                "name": "probe", "image": image, "command": ["python", "-c", PROBE],
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "envFrom": [{"configMapRef": {"name": "probe"}, "prefix": "CM_ALL_"}],
                "env": [
                    {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": secret, "key": "token"}}},
                    {"name": "FROM_CM", "valueFrom": {"configMapKeyRef": {"name": "probe", "key": "greeting"}}},
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "LABEL", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                    {"name": "EXPANDED", "value": "name=$(POD_NAME)"},
                    *extra,
                ],
                "volumeMounts": [{"name": "cfg", "mountPath": "/etc/probe", "readOnly": True}],
            }],
            "volumes": [{"name": "cfg", "configMap": {"name": "probe", "items": [{"key": "greeting", "path": "greeting"}]}}],
        },
    }


def container_state(core: k8s.CoreV1Api, name: str) -> dict:
    pod = core.read_namespaced_pod(name, NS)
    statuses = pod.status.container_statuses or []
    return k8s.ApiClient().sanitize_for_serialization(statuses[0].state) if statuses else {}


def test_pod_runs_with_kubelet_env_volumes_and_token(e2e_cluster, pod_runner: PodRunner, ns):
    core = k8s.CoreV1Api(e2e_cluster.api_client())
    name = f"probe-{uuid.uuid4().hex[:6]}"
    # A missing Secret: the container waits with the kubelet's reason and message, and nothing runs.
    core.create_namespaced_pod(NS, probe_pod(name))
    waiting = wait_for(lambda: container_state(core, name).get("waiting", {}).get("reason") == "CreateContainerConfigError"
                       and container_state(core, name)["waiting"], 30, "CreateContainerConfigError",
                       on_timeout=pod_runner.describe)
    assert waiting["message"] == 'secret "probe-secret" not found'
    assert core.read_namespaced_pod(name, NS).status.phase == "Pending"
    assert pod_runner.run_of(NS, name).processes == {}
    # The key missing: a kubelet's other message.
    core.create_namespaced_secret(NS, k8s.V1Secret(metadata=k8s.V1ObjectMeta(name="probe-secret"), string_data={"other": "x"}))
    wait_for(lambda: container_state(core, name).get("waiting", {}).get("message")
             == f"couldn't find key token in Secret {NS}/probe-secret", 30, "missing-key message")
    # Fixed: the retry starts it (as a kubelet does, no pod re-creation).
    core.patch_namespaced_secret("probe-secret", NS, {"stringData": {"token": "s3cr3t"}})
    pod = wait_for(lambda: (p := core.read_namespaced_pod(name, NS)).status.phase == "Succeeded" and p, 90,
                   "probe Succeeded", on_timeout=pod_runner.describe)
    out = json.loads(pod_runner.logs(NS, name).strip().splitlines()[-1])
    assert out["env"] == {"FROM_SECRET": "s3cr3t", "FROM_CM": "hello from a ConfigMap", "POD_NAME": name,
                          "POD_IP": pod.status.pod_ip, "LABEL": "probe", "EXPANDED": f"name={name}", "CM_ALL_A": "all-a"}
    assert out["config"] == "hello from a ConfigMap"
    assert out["uid"] == pod.metadata.uid  # it read itself with its own projected token
    assert out["hostname"] == name
    term = pod.status.container_statuses[0].state.terminated
    assert (term.exit_code, term.reason, term.message) == (0, "Completed", "probe done")
    assert {c.type: c.status for c in pod.status.conditions}["Ready"] == "False"


def test_failure_exit_code_and_log_fallback(e2e_cluster, pod_runner: PodRunner, ns):
    core = k8s.CoreV1Api(e2e_cluster.api_client())
    core.create_namespaced_secret(NS, k8s.V1Secret(metadata=k8s.V1ObjectMeta(name="s2"), string_data={"token": "t"}))
    name = f"probe-{uuid.uuid4().hex[:6]}"
    # It writes no message file: the log tail becomes the message (FallbackToLogsOnError).
    core.create_namespaced_pod(NS, probe_pod(name, secret="s2", env={"EXIT": "7"}))
    pod = wait_for(lambda: (p := core.read_namespaced_pod(name, NS)).status.phase == "Failed" and p, 90, "probe Failed",
                   on_timeout=pod_runner.describe)
    term = pod.status.container_statuses[0].state.terminated
    assert (term.exit_code, term.reason) == (7, "Error")
    assert '"FROM_SECRET": "t"' in term.message


def test_delete_sends_sigterm_and_reports_the_exit_before_removal(e2e_cluster, pod_runner: PodRunner, ns):
    core = k8s.CoreV1Api(e2e_cluster.api_client())
    core.create_namespaced_secret(NS, k8s.V1Secret(metadata=k8s.V1ObjectMeta(name="s3"), string_data={"token": "t"}))
    name = f"probe-{uuid.uuid4().hex[:6]}"
    core.create_namespaced_pod(NS, probe_pod(name, secret="s3", env={"WAIT": "1"}))
    wait_for(lambda: core.read_namespaced_pod(name, NS).status.phase == "Running" and pod_runner.logs(NS, name), 90,
             "probe running", on_timeout=pod_runner.describe)
    # KWOK leaves runner pods alone: the IP is the runner's (KWOK's pod-ready stage uses 10.244.0.0/16),
    # and KWOK's pod-delete stage would remove the pod before the process reported its exit.
    assert core.read_namespaced_pod(name, NS).status.pod_ip.startswith("10.245.")
    w = watch.Watch()
    core.delete_namespaced_pod(name, NS)
    last = None
    for event in w.stream(core.list_namespaced_pod, NS, field_selector=f"metadata.name={name}", timeout_seconds=60):
        last = event
        if event["type"] == "DELETED":
            w.stop()
    assert last is not None and last["type"] == "DELETED"
    term = last["object"].status.container_statuses[0].state.terminated
    assert (term.exit_code, term.message) == (3, "got SIGTERM")
