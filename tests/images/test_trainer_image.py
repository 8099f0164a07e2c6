"""The trainer image, built from Dockerfile.trainer, runs its real entrypoint on a tiny CPU job.

`kubetune trainer-run` (the image's ENTRYPOINT, no command given) reads $KUBETUNE_CONFIG as the
operator writes it (build_trainer_config, carried in the Job's pod annotation and written where the
Job's downwardAPI volume puts it) with the env the Job gives its container (build_job), as the image's USER,
on a read-only root with a tmpfs for the pod's /scratch emptyDir. Its network is a namespace of
the test's own with only a loopback device: the S3 server (moto, on the host's loopback) is
reachable there through a relay on the same port, and nothing else is.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from kubetune.api.manifest import load_manifest
from kubetune.api.trainer_config import CONFIG_PATH
from kubetune.builders.common import Owner
from kubetune.builders.trainer.config import CONFIG_ANNOTATION, build_trainer_config
from kubetune.builders.trainer.job import build_job
from kubetune.settings import OperatorSettings
from tests.support.images_fixtures import Images
from tests.support.netns import Forwarder, NetNamespace
from tests.support.s3_fixtures import CREDENTIALS, S3Server
from tests.trainer.tiny import write_job

pytestmark = pytest.mark.images


def _shared_copy(sources: dict[str, Path], target: Path) -> Path:
    """Copies of the tiny model and data that the image's non-root user can read (pytest's own
    directories are private to root)."""
    for name, source in sources.items():
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, target / name)
    for path in [target, *target.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return target


@pytest.mark.timeout(1200)
def test_trainer_image_runs_a_tiny_job_that_checkpoints_to_s3_with_only_loopback(
        built_images: Images, s3_server: S3Server, s3_bucket: str, tiny_model: Path, tiny_data: tuple[Path, Path],
        tmp_path: Path):
    settings = OperatorSettings(trainer_image=built_images.trainer)
    # The operator's pods pin this uid (runAsUser): it must be the image's USER.
    assert built_images.config(built_images.trainer)["User"] == f"{settings.trainer_uid}:{settings.trainer_uid}"

    train, val = tiny_data
    shared = _shared_copy({"model": tiny_model, "train.jsonl": train, "val.jsonl": val}, tmp_path / "shared")
    manifest = load_manifest(write_job(
        tmp_path / "job.yaml", Path("/data/model"), Path("/data/train.jsonl"), Path("/data/val.jsonl"), maxSteps=4,
        storage={"uri": f"s3://{s3_bucket}/runs", "endpoint": s3_server.endpoint_url, "checkpointIntervalSteps": 2}),
        expect_kind="FineTuneJob")
    owner = Owner(name="tiny", namespace="images", uid=str(uuid.uuid4()))
    config = build_trainer_config(owner, manifest.spec, settings)
    # No apiserver in this network: progress goes to the log instead of the FineTuneJob's status.
    config = config.model_copy(update={"progress_reporter": "console"})
    config_dir = tmp_path / "config"
    config_dir.mkdir(mode=0o755)
    template = build_job(owner, config, settings)["spec"]["template"]
    # What the kubelet makes of the Job's downwardAPI volume: the pod's config annotation as a file.
    (item,) = next(v for v in template["spec"]["volumes"] if v["name"] == "config")["downwardAPI"]["items"]
    (config_dir / item["path"]).write_text(template["metadata"]["annotations"][CONFIG_ANNOTATION])
    (config_dir / item["path"]).chmod(0o644)

    container = template["spec"]["containers"][0]
    assert container["command"] == built_images.config(built_images.trainer)["Entrypoint"]
    env = [f"{e['name']}={e['value']}" for e in container["env"] if "value" in e]
    env += [f"{k}={v}" for k, v in CREDENTIALS.items()]  # the secretKeyRef credentials; the endpoint comes from the config
    run_args = ["--network", "PLACEHOLDER", "--read-only", "--tmpfs", "/scratch:rw,mode=1777",
                "-v", f"{config_dir}:{CONFIG_PATH.rsplit('/', 1)[0]}:ro", "-v", f"{shared}:/data:ro",
                "-e", "OMP_NUM_THREADS=2", "-e", "TOKENIZERS_PARALLELISM=false",
                *[arg for e in env for arg in ("-e", e)]]

    ns = NetNamespace(cidrs=()).create()
    relay = None
    try:
        # The S3 server's endpoint, unchanged, inside the namespace: a relay on the same port.
        relay = Forwarder(ns, s3_server.port, None, s3_server.port).start()
        run_args[1] = f"ns:{ns.path}"
        name = f"kubetune-trainer-{uuid.uuid4().hex[:8]}"
        done = subprocess.run(["podman", "run", "--rm", "--name", name, *run_args, built_images.trainer],
                              env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CONTAINERS_CONF": str(built_images.containers_conf)},
                              capture_output=True, text=True, timeout=1000)
    finally:
        if relay is not None:
            relay.close()
        ns.close()
    output = done.stdout[-4000:] + done.stderr[-4000:]
    assert done.returncode == 0, output

    client = s3_server.client()
    prefix = config.storage_uri.removeprefix(f"s3://{s3_bucket}/") + "/"
    keys = {o["Key"].removeprefix(prefix) for o in client.list_objects_v2(Bucket=s3_bucket, Prefix=prefix)["Contents"]}
    assert {"adapter/adapter_model.safetensors", "metrics.jsonl", "reports/evaluation.json"} <= keys, sorted(keys)
    assert "checkpoints/step-00000004/MANIFEST.json" in keys, sorted(keys)
    metrics = client.get_object(Bucket=s3_bucket, Key=prefix + "metrics.jsonl")["Body"].read().decode()
    assert [json.loads(line)["step"] for line in metrics.splitlines() if "loss" in json.loads(line)] == [1, 2, 3, 4]
