"""Pod status as a kubelet reports it, from the runner's view of each container (pure functions)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

# The kubelet's limits: a message file is read up to 4096 bytes; the log fallback
# takes at most the last 80 lines and 2048 bytes.
MAX_MESSAGE_BYTES = 4096
FALLBACK_LINES = 80
FALLBACK_BYTES = 2048


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ContainerState:
    name: str
    image: str
    waiting: tuple[str, str] | None = ("ContainerCreating", "")  # (reason, message)
    started_at: str | None = None
    exit_code: int | None = None
    finished_at: str | None = None
    message: str = ""
    extra: dict = field(default_factory=dict)
    probed_ready: bool = True  # the readiness probe's last answer (True when there is no probe)

    @property
    def terminated(self) -> bool:
        return self.exit_code is not None

    @property
    def running(self) -> bool:
        return self.started_at is not None and not self.terminated

    def wire(self) -> dict:
        status = {"name": self.name, "image": self.image, "imageID": f"local://{self.image}",
                  "restartCount": 0, "ready": self.running and self.probed_ready,
                  "started": self.started_at is not None and not self.terminated}
        if self.terminated:
            term = {"exitCode": self.exit_code, "reason": "Completed" if self.exit_code == 0 else "Error",
                    "startedAt": self.started_at, "finishedAt": self.finished_at}
            if self.message:
                term["message"] = self.message
            status["state"] = {"terminated": term}
        elif self.started_at is not None:
            status["state"] = {"running": {"startedAt": self.started_at}}
        else:
            reason, message = self.waiting or ("ContainerCreating", "")
            status["state"] = {"waiting": {"reason": reason, **({"message": message} if message else {})}}
        return status


def phase(containers: list[ContainerState]) -> str:
    """restartPolicy Never: Running while any container started and runs, then Succeeded or Failed."""
    if containers and all(c.terminated for c in containers):
        return "Succeeded" if all(c.exit_code == 0 for c in containers) else "Failed"
    if any(c.started_at for c in containers):
        return "Running"
    return "Pending"


def pod_status(containers: list[ContainerState], pod_ip: str | None, host_ip: str, start_time: str) -> dict:
    """The status patch body (conditions merge by type, so the scheduler's and the apiserver's stay)."""
    ph = phase(containers)
    t = now()
    if ph == "Running" and all(c.running and c.probed_ready for c in containers):
        ready, reason = "True", None
    elif ph in ("Succeeded", "Failed"):
        ready, reason = "False", "PodCompleted" if ph == "Succeeded" else "PodFailed"
    else:
        ready, reason = "False", "ContainersNotReady"
    conditions = [{"type": "Initialized", "status": "True", "lastTransitionTime": start_time}]
    for ctype in ("ContainersReady", "Ready"):
        cond = {"type": ctype, "status": ready, "lastTransitionTime": t}
        if reason:
            cond["reason"] = reason
        conditions.append(cond)
    status = {"phase": ph, "conditions": conditions, "hostIP": host_ip, "hostIPs": [{"ip": host_ip}],
              "startTime": start_time, "containerStatuses": [c.wire() for c in containers]}
    if pod_ip:
        status["podIP"] = pod_ip
        status["podIPs"] = [{"ip": pod_ip}]
    return status


def termination_message(message_file: Path, log_file: Path, policy: str, exit_code: int) -> str:
    """The container's terminationMessagePath, or its log tail under FallbackToLogsOnError."""
    try:
        text = message_file.read_bytes()[:MAX_MESSAGE_BYTES].decode(errors="replace")
    except OSError:
        text = ""
    if text.strip() or policy != "FallbackToLogsOnError" or exit_code == 0:
        return text
    try:
        lines = log_file.read_bytes().splitlines()[-FALLBACK_LINES:]
    except OSError:
        return ""
    return b"\n".join(lines)[-FALLBACK_BYTES:].decode(errors="replace")
