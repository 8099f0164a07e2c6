"""The trainer image's install step, run: the wheel with its `trainer` extra in a clean venv.

Dockerfile.trainer installs `.[trainer]` and starts `kubetune trainer-run`; this installs the
same wheel and extra into a cached venv (tests/support/wheel_venvs.py: cold, pip fetches torch
and the rest through its cache, minutes; warm, about a second) and runs that entry point on a
tiny CPU job, reading a TrainerConfig as the operator mounts it.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from kubetune.api.manifest import load_manifest
from kubetune.api.trainer_config import TrainerConfig
from tests.support.wheel_venvs import build_wheel, requirements, wheel_venv

from .tiny import write_job

pytestmark = pytest.mark.trainer


@pytest.mark.timeout(2400)  # a cold venv downloads torch and CUDA libraries
def test_trainer_entry_point_from_a_clean_trainer_venv(tiny_model, tiny_data, tmp_path):
    wheel = build_wheel(tmp_path / "wheel")
    venv = wheel_venv(wheel, ("trainer",))
    print(f"\n[wheel venv] {venv.path}: {'built (cold)' if venv.built else 'reused (warm)'} in {venv.seconds:.1f}s")
    pinned = next(r for r in requirements(wheel, ("trainer",)) if r.startswith("torch=="))
    torch = venv.python("import torch; print(torch.__version__.split('+')[0], torch.__file__)")
    assert torch.returncode == 0, torch.stderr
    version, where = torch.stdout.split()
    assert f"torch=={version}" == pinned and where.startswith(str(venv.path))

    train, val = tiny_data
    manifest = load_manifest(write_job(tmp_path / "job.yaml", tiny_model, train, val, method="lora"),
                             expect_kind="FineTuneJob")
    run = tmp_path / "run"
    config = tmp_path / "config.json"
    # As the operator's pod annotation carries it (builders/trainer/config.py config_annotation_value).
    config.write_text(json.dumps(TrainerConfig(job_name=manifest.name, namespace=manifest.namespace, storage_uri=str(run),
                                               progress_reporter="console", spec=manifest.spec).to_wire()))
    env = venv.env(KUBETUNE_CONFIG=str(config), KUBETUNE_WORK_DIR=str(tmp_path / "work"),
                   KUBETUNE_CACHE=str(tmp_path / "cache"), HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1",
                   OMP_NUM_THREADS="2", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run([str(venv.bin / "kubetune"), "trainer-run"], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == [1, 2, 3, 4, 5, 6]
    adapter = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "LORA" and adapter["r"] == 4
    assert (run / "adapter" / "adapter_model.safetensors").stat().st_size > 0
    assert Path(run / "reports" / "evaluation.json").is_file()
