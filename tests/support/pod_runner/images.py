"""Container images the runner can execute: each maps to a local "root filesystem" view.

A LocalImage stands for an image's entrypoint, PATH and ENV: a container's
command is looked up on the image's PATH (the trainer image's `kubetune` is
the project's venv script). Images not mapped here are left to KWOK's scripted
stages (tests/support/kwok.py skips exactly the images in kwok.RUNNER_IMAGES).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .. import kwok

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TRAINER_IMAGE = "kubetune-trainer:local"
VLLM_STANDIN_IMAGE = "kubetune-vllm-standin:local"
OPERATOR_IMAGE = "kubetune-operator:local"


@dataclass(frozen=True)
class LocalImage:
    name: str
    path: tuple[str, ...]                     # the image's PATH, searched for the container's command
    env: dict[str, str] = field(default_factory=dict)  # the image's ENV (the pod's env overrides it)
    entrypoint: tuple[str, ...] = ()          # used when the container sets no command
    # Env the image's process derives from its pod (what a real image would read through the
    # downward API or learn at run time), e.g. the stand-in's revision and the IP it binds.
    from_pod: Callable[[dict, str], dict[str, str]] | None = field(default=None, compare=False)

    def argv(self, container: dict, env: dict[str, str]) -> list[str]:
        """command + args as the runtime builds them ($(VAR) expanded), command[0] found on PATH."""
        from .resolve import expand

        command = [expand(c, env) for c in container.get("command") or []] or list(self.entrypoint)
        args = [expand(a, env) for a in container.get("args") or []]
        if not command:
            raise ValueError(f"image {self.name}: container {container['name']} has no command and the image no entrypoint")
        exe = command[0]
        if "/" not in exe:
            found = shutil.which(exe, path=env.get("PATH") or os.pathsep.join(self.path))
            if found is None:
                raise FileNotFoundError(f'exec: "{exe}": executable file not found in $PATH')
            exe = found
        return [exe, *command[1:], *args]


def trainer_image(venv: Path, name: str = TRAINER_IMAGE, threads: int = 1) -> LocalImage:
    """Dockerfile.trainer's view: the project's venv first on PATH (its `kubetune` is the trainer's)."""
    if name not in kwok.RUNNER_IMAGES:
        raise ValueError(f"{name}: KWOK would also play this image's pods; add it to kwok.RUNNER_IMAGES")
    bin_dir = str(venv / "bin")
    return LocalImage(name, (bin_dir, *SYSTEM_PATH.split(":")), env={
        "PATH": f"{bin_dir}:{SYSTEM_PATH}",
        # The test machine is small and shared: one math thread per trainer process.
        "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1", "LANG": "C.UTF-8",
    })


def vllm_standin_image(bin_dir: Path, repo: Path, name: str = VLLM_STANDIN_IMAGE, load_seconds: float = 3.0) -> LocalImage:
    """The vllm/vllm-openai image's view, played by tests/support/vllm_standin.py.

    `vllm serve MODEL --served-model-name N --host H --port P ...` (the command the operator
    builds) runs the stand-in on the pod's IP: pods share one network namespace here, so the
    stand-in binds its pod IP where vLLM would bind 0.0.0.0. Its revision is the pod's label.
    """
    if name not in kwok.RUNNER_IMAGES:
        raise ValueError(f"{name}: KWOK would also play this image's pods; add it to kwok.RUNNER_IMAGES")
    bin_dir.mkdir(parents=True, exist_ok=True)
    shim = bin_dir / "vllm"
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} -m tests.support.vllm_standin \"$@\"\n")
    shim.chmod(0o755)

    def from_pod(pod: dict, pod_ip: str) -> dict[str, str]:
        labels = pod["metadata"].get("labels") or {}
        return {"STANDIN_HOST": pod_ip, "STANDIN_REVISION": labels.get("kubetune.io/revision", "unknown"),
                "PYTHONPATH": str(repo)}

    return LocalImage(name, (str(bin_dir), *SYSTEM_PATH.split(":")),
                      env={"PATH": f"{bin_dir}:{SYSTEM_PATH}", "PYTHONUNBUFFERED": "1", "LANG": "C.UTF-8",
                           # A pod is not ready at once, as vLLM is not while it loads the model.
                           "STANDIN_LOAD_SECONDS": str(load_seconds)},
                      from_pod=from_pod)


def operator_image(venv: Path, name: str = OPERATOR_IMAGE) -> LocalImage:
    """Dockerfile.operator's view: `venv` holds the wheel installed without extras, and the image's
    ENTRYPOINT ["kubetune", "operator"] runs when the pod (the chart's Deployment) sets no command."""
    if name not in kwok.RUNNER_IMAGES:
        raise ValueError(f"{name}: KWOK would also play this image's pods; add it to kwok.RUNNER_IMAGES")
    bin_dir = str(venv / "bin")
    return LocalImage(name, (bin_dir, *SYSTEM_PATH.split(":")), entrypoint=("kubetune", "operator"),
                      env={"PATH": f"{bin_dir}:{SYSTEM_PATH}", "PYTHONUNBUFFERED": "1", "LANG": "C.UTF-8"})
