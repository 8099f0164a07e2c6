"""The pod's main process when several ranks train: it runs `accelerate launch` as a child.

Left to itself the launcher (torch.distributed.run under accelerate) would be the pod's
main process, and it hides what the ranks meant:
- any rank's non-zero exit becomes its own exit 1 and a ChildFailedError traceback, so bad
  input (65) would be retried and a preemption (75) counted as a failure;
- on SIGTERM it signals the ranks, waits TORCH_ELASTIC_SHUTDOWN_TIMEOUT (30 s by default),
  then SIGKILLs them, which can cut the preemption checkpoint short.

So this process forwards SIGTERM to the launcher, gives the launcher a shutdown timeout longer
than any termination grace period (the kubelet's SIGKILL is the real bound), sends the
launcher's own output to a log file (shown only when something unexpected happened), and exits
with the code the ranks wrote (ranks.write_exit): 65 if any rank found bad input, else 75 if any
stopped for SIGTERM (a rank reports 75 only once rank 0's checkpoint is complete), 0 if all
finished, 1 otherwise. The ranks' own output goes straight to the pod log (worker_output).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from kubetune.api.trainer_config import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, EXIT_PREEMPTED

from .ranks import EXIT_DIR

LAUNCHER_LOG = "launcher.log"
# Longer than any sensible terminationGracePeriodSeconds: the launcher must never be the one
# that kills a rank still writing its checkpoint.
SHUTDOWN_TIMEOUT_S = 24 * 3600
WORKER_ENV = "KUBETUNE_WORKER_OF_SUPERVISOR"


def pod_exit_code(reports: list[dict], ranks_expected: int, launcher_code: int, terminated: bool) -> int:
    """One exit code for the pod from what its ranks reported."""
    codes = [r["code"] for r in reports]
    if EXIT_BAD_INPUT in codes:
        return EXIT_BAD_INPUT
    if EXIT_PREEMPTED in codes:
        return EXIT_PREEMPTED
    if len(codes) == ranks_expected and all(c == EXIT_OK for c in codes) and launcher_code == 0:
        return EXIT_OK
    # SIGTERM before the ranks could report (still starting, or killed): nothing was taken for
    # complete that is not (checkpoints have their manifest last), so a retry is safe and owed.
    return EXIT_PREEMPTED if terminated else EXIT_FAILED


def read_reports(work_dir: Path) -> list[dict]:
    reports = []
    for path in sorted((work_dir / EXIT_DIR).glob("rank-*.json")):
        try:
            reports.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue  # a rank killed mid-write left nothing usable
    return reports


def launcher_env(work_dir: Path) -> dict[str, str]:
    """The launcher's environment: ours, plus a shutdown timeout it cannot beat the kubelet with."""
    return {**os.environ, "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT_S), WORKER_ENV: "1",
            "KUBETUNE_WORK_DIR": str(work_dir)}


def supervise(cmd: list[str], work_dir: Path, local_ranks: int) -> tuple[int, str]:
    """Run the launcher to the end; return (the pod's exit code, the message to leave)."""
    shutil.rmtree(work_dir / EXIT_DIR, ignore_errors=True)  # reports of an earlier attempt on this pod
    work_dir.mkdir(parents=True, exist_ok=True)
    terminated, forwarded = False, False
    proc: subprocess.Popen | None = None

    def forward_once() -> None:
        # Once only: a second SIGTERM interrupts torch elastic's graceful shutdown of the ranks
        # (its handler raises again inside the wait), and it would exit with the ranks still saving.
        nonlocal forwarded
        if proc is not None and not forwarded:
            forwarded = True
            proc.send_signal(signal.SIGTERM)

    def forward(_signum: int, _frame: object) -> None:
        nonlocal terminated
        terminated = True
        forward_once()

    previous = signal.signal(signal.SIGTERM, forward)  # before the launcher exists: no SIGTERM is lost
    try:
        with (work_dir / LAUNCHER_LOG).open("w") as log:
            # The launcher's stderr (its warnings, its tracebacks) goes to the log; each rank puts its
            # own stderr back on the pod's stdout (worker_output).
            proc = subprocess.Popen(cmd, stderr=log, env=launcher_env(work_dir))
            if terminated:  # SIGTERM arrived while it was being started
                forward_once()
            launcher_code = proc.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
    reports = read_reports(work_dir)
    code = pod_exit_code(reports, local_ranks, launcher_code, terminated)
    if code == EXIT_FAILED:  # unexpected: show what the launcher saw (a rank's crash report, an OOM kill)
        sys.stderr.write((work_dir / LAUNCHER_LOG).read_text(errors="replace")[-20000:])
    chosen = sorted((r for r in reports if r["code"] == code), key=lambda r: r["rank"])
    message = chosen[0]["message"] if chosen else ("stopped by SIGTERM" if terminated else
                                                   f"the launcher exited {launcher_code}; see the pod log")
    return code, message


def worker_output() -> None:
    """In a rank started by the supervisor: stderr back onto stdout, which is the pod log.

    The launcher's stderr is the supervisor's log file and a rank inherits it; the rank's
    warnings and errors belong in the pod log, not there.
    """
    if os.environ.get(WORKER_ENV):
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(1, 2)
