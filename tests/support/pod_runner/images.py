"""Container images the runner can execute: each maps to a local "root filesystem" view.

A LocalImage stands for an image's entrypoint, PATH and ENV: a container's
command is looked up on the image's PATH (the trainer image's `kubetune` is
the project's venv script). Images not mapped here are left to KWOK's scripted
stages (tests/support/kwok.py skips exactly the images in kwok.RUNNER_IMAGES).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .. import kwok

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TRAINER_IMAGE = "kubetune-trainer:local"


@dataclass(frozen=True)
class LocalImage:
    name: str
    path: tuple[str, ...]                     # the image's PATH, searched for the container's command
    env: dict[str, str] = field(default_factory=dict)  # the image's ENV (the pod's env overrides it)
    entrypoint: tuple[str, ...] = ()          # used when the container sets no command

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
