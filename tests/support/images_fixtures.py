"""The images built from the repo's Dockerfiles (hack/images.sh) and podman calls that run them.

`built_images` (session): what hack/images.sh printed, from $KUBETUNE_IMAGES when hack/test.sh
already ran it, else by running it here (cached: seconds when nothing changed; cold: minutes,
see docs/images.md). Every podman call goes through `Images.podman`, which selects the
containers.conf the script wrote (runc, ulimits this machine allows).
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from .tools import REPO


@dataclass(frozen=True)
class Images:
    containers_conf: Path
    operator: str
    trainer: str

    @classmethod
    def parse(cls, text: str) -> "Images":
        fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
        missing = {"containers_conf", "operator", "trainer"} - fields.keys()
        if missing:
            raise ValueError(f"hack/images.sh output lacks {sorted(missing)}: {text!r}")
        return cls(Path(fields["containers_conf"]), fields["operator"], fields["trainer"])

    def podman(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["podman", *args], env={**os.environ, "CONTAINERS_CONF": str(self.containers_conf)},
                              capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} exited {done.returncode}: {done.stderr[-3000:]}")
        return done

    def config(self, image: str) -> dict:
        """The image's OCI config (User, Entrypoint, Cmd, Env)."""
        return json.loads(self.podman("image", "inspect", image).stdout)[0]["Config"]

    @contextmanager
    def container(self, image: str, run_args: list[str], args: list[str] = ()) -> Iterator["Container"]:
        """A detached container, removed (logs kept for the assertion messages) on exit."""
        name = f"kubetune-test-{uuid.uuid4().hex[:8]}"
        self.podman("run", "-d", "--name", name, *run_args, image, *args)
        try:
            yield Container(self, name)
        finally:
            self.podman("rm", "-f", "-t", "5", name, check=False)


@dataclass(frozen=True)
class Container:
    images: Images
    name: str

    def logs(self) -> str:
        done = self.images.podman("logs", self.name, check=False)
        return (done.stdout + done.stderr)[-4000:]

    def main_pid(self) -> int:
        return int(self.images.podman("inspect", "--format", "{{.State.Pid}}", self.name).stdout)

    def running(self) -> bool:
        return self.images.podman("inspect", "--format", "{{.State.Running}}", self.name).stdout.strip() == "true"


def process_uid_gid(pid: int) -> tuple[int, int]:
    """Effective uid and gid of a host-visible process (/proc/<pid>/status)."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(status["Uid"].split()[1]), int(status["Gid"].split()[1])


@pytest.fixture(scope="session")
def built_images() -> Images:
    text = os.environ.get("KUBETUNE_IMAGES")
    if not text:
        text = subprocess.run(["bash", str(REPO / "hack" / "images.sh")], check=True, stdout=subprocess.PIPE,
                              text=True, timeout=3600).stdout
    return Images.parse(text)
