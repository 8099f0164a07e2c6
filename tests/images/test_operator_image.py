"""The operator image, built from Dockerfile.operator, runs against the test cluster and reconciles.

It runs as the image's own USER (no --user: a wrong USER in the Dockerfile must show), on a
read-only root filesystem, with the chart's ServiceAccount RBAC through a TokenRequest kubeconfig
mounted read-only. `--network host` is how it reaches the apiserver on 127.0.0.1.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import requests
import yaml

from tests.e2e.finetunejob_api import Api, create_tenant_namespace
from tests.e2e.operator_process import install_operator_rbac, operator_kubeconfig
from tests.support.controlplane import ControlPlane
from tests.support.images_fixtures import Images, process_uid_gid
from tests.support.procs import free_port, wait_for

pytestmark = pytest.mark.images

# The chart's Deployment pins this uid (helm/kubetune/templates/deployment.yaml runAsUser).
OPERATOR_UID = 65532


def _container_kubeconfig(cluster: ControlPlane, tmp_path: Path) -> tuple[Path, Path]:
    """The operator's kubeconfig and the cluster CA, readable by the image's user, the CA path as
    the container sees it."""
    kubeconfig = yaml.safe_load(operator_kubeconfig(cluster, tmp_path / "host.kubeconfig").read_text())
    kubeconfig["clusters"][0]["cluster"]["certificate-authority"] = "/etc/kubetune/ca.crt"
    path, ca = tmp_path / "kubeconfig", tmp_path / "ca.crt"
    path.write_text(yaml.safe_dump(kubeconfig))
    ca.write_bytes(Path(cluster.pki.ca_cert).read_bytes())
    for f in (path, ca):
        f.chmod(0o644)  # the mounted files only; tmp_path itself stays private
    return path, ca


def test_operator_image_reconciles_a_finetunejob_as_its_non_root_user_on_a_read_only_root(
        built_images: Images, e2e_cluster: ControlPlane, kubetune_crds: list[str], tmp_path: Path):
    assert built_images.config(built_images.operator)["User"] == f"{OPERATOR_UID}:{OPERATOR_UID}"
    install_operator_rbac(e2e_cluster)
    kubeconfig, ca = _container_kubeconfig(e2e_cluster, tmp_path)
    liveness, metrics = free_port(), free_port()
    run_args = [
        "--read-only", "--network", "host",
        "-v", f"{kubeconfig}:/etc/kubetune/kubeconfig:ro", "-v", f"{ca}:/etc/kubetune/ca.crt:ro",
        "-e", "KUBECONFIG=/etc/kubetune/kubeconfig",
        "-e", f"KUBETUNE_TRAINER_IMAGE={built_images.trainer}",
        "-e", "KUBETUNE_DEFAULT_STORAGE_URI=s3://platform/runs",
    ]
    with built_images.container(built_images.operator, run_args,
                                ["--all-namespaces", f"--metrics-port={metrics}", f"--liveness-port={liveness}"]) as op:

        def healthy() -> bool:
            assert op.running(), op.logs()
            try:
                return requests.get(f"http://127.0.0.1:{liveness}/healthz", timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        wait_for(healthy, 120, "the operator container's /healthz", on_timeout=op.logs)
        assert process_uid_gid(op.main_pid()) == (OPERATOR_UID, OPERATOR_UID)
        # The root filesystem refuses writes even from root, so nothing the operator does relies on one.
        probe = built_images.podman("exec", "--user", "0", op.name, "touch", "/usr/probe", check=False)
        assert probe.returncode != 0 and "Read-only file system" in probe.stderr, probe

        ns = f"img-{uuid.uuid4().hex[:8]}"
        create_tenant_namespace(e2e_cluster, ns, "image-test-secret")
        api = Api(e2e_cluster, ns)
        uid = api.apply("from-image")["metadata"]["uid"]
        job = wait_for(lambda: api.jobs_of("from-image") or None, 60, "the FineTuneJob's Job", on_timeout=op.logs)[0]
        assert job.metadata.owner_references[0].uid == uid
        container = job.spec.template.spec.containers[0]
        assert container.image == built_images.trainer and container.command == ["kubetune", "trainer-run"]
        assert "kubetune_" in requests.get(f"http://127.0.0.1:{metrics}/metrics", timeout=5).text
        assert op.running(), op.logs()
