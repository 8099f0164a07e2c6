"""Several GPUs or several nodes: re-run `trainer-run` under `accelerate launch`.

The operator describes the topology in the pod's environment (NUM_MACHINES,
NUM_PROCESSES, MACHINE_RANK from the Indexed Job's completion index,
MASTER_ADDR/MASTER_PORT of rank 0 behind the headless Service). accelerate
turns that into torch.distributed's RANK/WORLD_SIZE/LOCAL_RANK for each worker
process; a process that already has RANK is a worker and trains.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping


class TopologyError(ValueError):
    """The environment describes an impossible topology (a bad pod spec)."""


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as err:
        raise TopologyError(f"{name}={raw!r} is not an integer") from err
    if value < 0:
        raise TopologyError(f"{name}={value} is negative")
    return value


def launch_command(env: Mapping[str, str], python: str = sys.executable) -> list[str] | None:
    """The `accelerate launch` command for this pod, or None to train in this process."""
    if "RANK" in env or "LOCAL_RANK" in env:
        return None  # already a distributed worker
    machines = _int(env, "NUM_MACHINES", 1)
    processes = _int(env, "NUM_PROCESSES", 1)
    if machines < 1 or processes < machines:
        raise TopologyError(f"NUM_PROCESSES={processes} must be >= NUM_MACHINES={machines} >= 1")
    if processes == 1:
        return None
    if processes % machines:
        raise TopologyError(f"NUM_PROCESSES={processes} is not a multiple of NUM_MACHINES={machines}")
    rank = _int(env, "MACHINE_RANK", 0)
    if rank >= machines:
        raise TopologyError(f"MACHINE_RANK={rank} must be below NUM_MACHINES={machines}")
    cmd = [python, "-m", "accelerate.commands.launch", "--multi_gpu",
           "--num_machines", str(machines), "--num_processes", str(processes), "--machine_rank", str(rank)]
    if machines > 1:
        if not env.get("MASTER_ADDR"):
            raise TopologyError("MASTER_ADDR is required when NUM_MACHINES > 1")
        cmd += ["--main_process_ip", env["MASTER_ADDR"], "--main_process_port", str(_int(env, "MASTER_PORT", 29500)),
                "--rdzv_backend", "static"]
    return cmd + ["--module", "kubetune_trainer", "trainer-run"]
