"""The operator image's install step, run: the wheel installed without extras into a clean venv.

Dockerfile.operator builds the wheel and `pip install`s it with no extras; this does the same into
a cached venv (tests/support/wheel_venvs.py) and runs that venv's `kubetune operator` against the
test apiserver as the chart's ServiceAccount (namespace-scoped RBAC rendered from the chart, a
TokenRequest token). No torch is installed, and none is needed to reconcile a FineTuneJob.
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid

import pytest
import requests
from kubernetes import client as k8s

from kubetune.api import GROUP, VERSION
from tests.e2e.operator_process import install_operator_rbac, operator_kubeconfig
from tests.support.controlplane import ControlPlane
from tests.support.procs import ManagedProcess, free_port, wait_for
from tests.support.wheel_venvs import WheelVenv, build_wheel, requirements, wheel_venv

pytestmark = pytest.mark.integration

RELEASE = "wheelop"  # its own ServiceAccount and Role: other modules' grants play no part


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory):
    return build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="module")
def operator_venv(wheel) -> WheelVenv:
    venv = wheel_venv(wheel)
    print(f"\n[wheel venv] {venv.path}: {'built (cold)' if venv.built else 'reused (warm)'} in {venv.seconds:.1f}s")
    return venv


def test_the_wheel_declares_no_torch_outside_the_trainer_extra(wheel):
    def names(extras: tuple[str, ...]) -> set[str]:
        return {re.split(r"[<>=!~ \[;]", r, maxsplit=1)[0].lower() for r in requirements(wheel, extras)}

    assert {"kopf", "kubernetes", "boto3"} <= names(())
    assert not {"torch", "transformers", "peft", "bitsandbytes", "accelerate"} & names(())
    assert {"torch", "transformers", "peft"} <= names(("trainer",))


def test_clean_venv_has_the_cli_and_no_torch(operator_venv: WheelVenv):
    no_torch = operator_venv.python("import torch")
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    # The package comes from the wheel in this venv, not from the checkout.
    where = operator_venv.python("import json, kubetune, kubetune_trainer; print(json.dumps([kubetune.__file__, kubetune_trainer.__file__]))")
    assert where.returncode == 0, where.stderr
    assert all(p.startswith(str(operator_venv.path)) for p in json.loads(where.stdout))
    check = operator_venv.python("import subprocess, sys; sys.exit(subprocess.call([sys.executable, '-m', 'pip', 'check']))")
    assert check.returncode == 0, check.stdout + check.stderr
    # The CLI imports the trainer's commands lazily: `kubetune --help` works without torch.
    helped = subprocess.run([str(operator_venv.bin / "kubetune"), "--help"], env=operator_venv.env(), capture_output=True,
                            text=True, timeout=60)
    assert helped.returncode == 0 and "operator" in helped.stdout and "trainer-run" in helped.stdout, helped.stderr


def test_operator_from_the_clean_venv_reconciles_a_finetunejob(kube_api: ControlPlane, kubetune_crds, operator_venv, tmp_path):
    ns = kube_api.create_namespace(f"wheel-{uuid.uuid4().hex[:5]}")
    install_operator_rbac(kube_api, RELEASE, namespaces=[ns])
    kubeconfig = operator_kubeconfig(kube_api, tmp_path / "operator.kubeconfig", f"{RELEASE}-operator")
    metrics, health = free_port(), free_port()
    proc = ManagedProcess(f"wheel-operator-{ns}", [str(operator_venv.bin / "kubetune"), "operator", f"--namespace={ns}",
                                                   f"--metrics-port={metrics}", f"--liveness-port={health}"],
                          kube_api.log_dir, cwd=tmp_path,
                          env=operator_venv.env(KUBECONFIG=str(kubeconfig), KUBETUNE_RESYNC_SECONDS="3",
                                                KUBETUNE_TRAINER_IMAGE="registry.corp/kubetune/trainer:wheel",
                                                KUBETUNE_DEFAULT_STORAGE_URI="s3://platform/runs"))
    kube_api.processes[proc.name] = proc  # its log is shown on failure; stopped at teardown
    proc.start()
    try:
        def healthy() -> bool:
            proc.check_alive()
            return requests.get(f"http://127.0.0.1:{health}/healthz", timeout=2).status_code == 200

        wait_for(healthy, 90, "the wheel operator's /healthz", on_timeout=proc.describe)
        custom = k8s.CustomObjectsApi(kube_api.api_client())
        custom.create_namespaced_custom_object(GROUP, VERSION, ns, "finetunejobs", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneJob", "metadata": {"name": "tiny", "namespace": ns},
            "spec": {"baseModel": {"uri": "s3://models/tiny"}, "dataset": {"train": "s3://data/train.jsonl"},
                     "resources": {"gpusPerNode": 0, "cpu": "1", "memory": "2Gi"}}})
        batch = k8s.BatchV1Api(kube_api.api_client())
        job = wait_for(lambda: batch.read_namespaced_job("tiny-train", ns), 90, "the trainer Job", on_timeout=proc.describe)
        assert job.spec.template.spec.containers[0].image == "registry.corp/kubetune/trainer:wheel"
        phase = wait_for(lambda: custom.get_namespaced_custom_object(GROUP, VERSION, ns, "finetunejobs", "tiny")
                         .get("status", {}).get("phase"), 60, "a status phase", on_timeout=proc.describe)
        assert phase in ("Pending", "Running"), phase  # no controller-manager here: the Job's pods never run
        assert 'kubetune_reconciles_total{' in requests.get(f"http://127.0.0.1:{metrics}/metrics", timeout=5).text
        proc.check_alive()
    finally:
        proc.stop()
        kube_api.processes.pop(proc.name, None)
