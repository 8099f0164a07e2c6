"""One pod's files and processes on this machine.

Each container runs in its own mount and UTS namespace (`unshare`): the pod's
volumes, /etc/hosts and termination-message file are bind-mounted at the
container's real paths, so in-pod code needs no test-only paths (e.g.
/var/run/secrets/kubernetes.io/serviceaccount for load_incluster_config()).
Processes run as root in the runner's network namespace: the machine's own, or one the
test bed made (then pod IPs are real addresses there).

A bind mount needs a mount point. Paths that do not exist on this machine
(/scratch, /etc/kubetune, ...) are created once as empty directories or files
and left in place: other runners' namespaces may still have mounts on them,
and removing a mount point would detach those. Pod contents never land there.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

from .images import LocalImage
from .resolve import Volume

DEFAULT_MESSAGE_PATH = "/dev/termination-log"


def _mount_point(path: str, is_file: bool) -> None:
    p = Path(path)
    if p.exists():
        return
    if is_file:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.touch()
    else:
        p.mkdir(parents=True, exist_ok=True)


class ContainerProcess:
    def __init__(self, name: str, log: Path, message_file: Path, policy: str, proc: subprocess.Popen):
        self.name, self.log, self.message_file, self.policy, self.proc = name, log, message_file, policy, proc
        self.signalled_at: float | None = None
        self.killed = False

    def poll(self) -> int | None:
        code = self.proc.poll()
        if code is None:
            return None
        return 128 - code if code < 0 else code  # killed by signal N: 128+N, as container runtimes report

    def send(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass


class PodSandbox:
    def __init__(self, root: Path, pod: dict):
        self.root, self.pod = root, pod
        self.volumes_dir = root / "volumes"
        self.hosts_file = root / "etc-hosts"
        root.mkdir(parents=True, exist_ok=True)

    @property
    def hostname(self) -> str:
        return self.pod["spec"].get("hostname") or self.pod["metadata"]["name"]

    def log_path(self, container: str) -> Path:
        return self.root / "containers" / f"{container}.log"

    def write_volumes(self, volumes: list[Volume]) -> None:
        for vol in volumes:
            target = self.volumes_dir / vol.name
            target.mkdir(parents=True, exist_ok=True)
            for rel, data in vol.files.items():
                f = target / rel
                f.parent.mkdir(parents=True, exist_ok=True)
                f.write_bytes(data)

    def write_hosts(self, names: list[str]) -> bool:
        """/etc/hosts with this pod's and its subdomain peers' names on loopback. Written in place:
        the bind-mounted inode must stay the same for running containers to see new peers."""
        text = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n" + "".join(f"127.0.0.1\t{n}\n" for n in names)
        if self.hosts_file.is_file() and self.hosts_file.read_text() == text:
            return False
        with open(self.hosts_file, "w") as f:
            f.write(text)
        return True

    def _script(self, container: dict) -> Path:
        cdir = self.root / "containers" / container["name"]
        cdir.mkdir(parents=True, exist_ok=True)
        message = cdir / "termination-log"
        message.touch()
        binds: list[tuple[Path, str, bool]] = [(self.hosts_file, "/etc/hosts", True)]
        binds.append((message, container.get("terminationMessagePath") or DEFAULT_MESSAGE_PATH, False))
        for m in container.get("volumeMounts") or []:
            src = self.volumes_dir / m["name"]
            if m.get("subPath"):
                src = src / m["subPath"]
            binds.append((src, m["mountPath"], bool(m.get("readOnly"))))
        lines = ["set -e", f"hostname {shlex.quote(self.hostname[:63])}"]
        for src, dst, ro in binds:
            _mount_point(dst, src.is_file())
            lines.append(f"mount --bind {shlex.quote(str(src))} {shlex.quote(dst)}")
            if ro:
                lines.append(f"mount -o remount,bind,ro {shlex.quote(dst)}")
        lines.append(f"cd {shlex.quote(container.get('workingDir') or '/')}")
        lines.append('exec "$@"')
        script = cdir / "enter.sh"
        script.write_text("\n".join(lines) + "\n")
        return script

    def start(self, container: dict, image: LocalImage, env: dict[str, str], wrap=None) -> ContainerProcess:
        """wrap(argv) -> argv: e.g. NetNamespace.command, to start the container in a network namespace."""
        argv = image.argv(container, env)
        script = self._script(container)
        log = self.log_path(container["name"])
        command = ["unshare", "--mount", "--uts", "--propagation", "private", "/bin/sh", str(script), *argv]
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                wrap(command) if wrap else command,
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=self.root,
                start_new_session=True,  # its own process group: signals reach every process it starts
            )
        return ContainerProcess(container["name"], log, self.root / "containers" / container["name"] / "termination-log",
                                container.get("terminationMessagePolicy") or "File", proc)
