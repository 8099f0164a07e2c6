"""Who does what when several processes train together, and how they agree.

One process (world size 1) is its own rank 0 and every method here is free. With
several (`accelerate launch` sets RANK, LOCAL_RANK, WORLD_SIZE), the process group is
started before any work, so that:
- the local main process (LOCAL_RANK 0: one per pod) alone prepares the pod's shared
  files (work directory, downloads into the cache, the resume checkpoint) while the
  others wait, then they read what it prepared (`main_first`);
- global rank 0 alone writes to storage: reports, checkpoints, metrics (`is_main`);
- every phase ends in an agreement (`agree`: an all-reduce MAX of each rank's outcome), so
  bad input found by one rank, or a SIGTERM seen by one, is acted on by all at the same point
  instead of leaving the others blocked in a collective.

Each rank also writes the exit code it intends into the work directory (`write_exit`), for the
pod's main process (`supervisor.py`), which the launcher in between would otherwise hide.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, TypeVar

from . import stop
from .errors import BadInput

T = TypeVar("T")

# Outcomes in order of precedence: the MAX over ranks is what everyone does. Bad input wins over
# a stop (a retry would read the same data) and a crash over both (a bug must surface).
OK, PREEMPTED, BAD_INPUT, FAILED = 0, 1, 2, 3
# How long a rank waits in a collective for the others: longer than a large model's download,
# which the waiting ranks spend in the first agreement.
TIMEOUT_ENV = "KUBETUNE_DIST_TIMEOUT_S"
EXIT_DIR = "exit-codes"


class OtherRankFailed(Exception):
    """Another rank's outcome, agreed on: this rank stops the same way (its own state is fine)."""

    def __init__(self, outcome: int):
        super().__init__({PREEMPTED: "stopped by SIGTERM (every rank at the same point)",
                          BAD_INPUT: "another rank found bad input",
                          FAILED: "another rank failed"}[outcome])
        self.outcome = outcome


def outcome_of(err: BaseException | None) -> int:
    if err is None:
        return OK
    if isinstance(err, OtherRankFailed):
        return err.outcome
    if isinstance(err, stop.Preempted):
        return PREEMPTED
    if isinstance(err, BadInput):
        return BAD_INPUT
    return FAILED


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Global rank 0: the one writer to storage."""
        return self.rank == 0

    @property
    def is_local_main(self) -> bool:
        """The first process of this pod: the one writer of the pod's own files."""
        return self.local_rank == 0

    @classmethod
    def start(cls, env: dict[str, str] | None = None) -> "Ranks":
        """This process's place, starting the process group now when there are several.

        accelerate's PartialState is the same state transformers' Trainer uses later, so the
        Trainer joins this group rather than making another; gloo on CPU, nccl on GPUs.
        """
        env = dict(os.environ if env is None else env)
        world = int(env.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch
        from accelerate import PartialState

        timeout = timedelta(seconds=float(env.get(TIMEOUT_ENV, "7200")))
        state = PartialState(cpu=not torch.cuda.is_available(), timeout=timeout)
        return cls(state.process_index, state.num_processes, state.local_process_index)

    def agree(self, *outcomes: int) -> list[int]:
        """Every rank's values, element-wise MAX over ranks (a collective: every rank must call it)."""
        if self.world == 1:
            return list(outcomes)
        import torch
        import torch.distributed as dist
        from accelerate import PartialState

        t = torch.tensor(outcomes, dtype=torch.int64, device=PartialState().device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [int(v) for v in t.tolist()]

    def settle(self, err: BaseException | None, stop_counts: bool = True) -> None:
        """Agree on the outcome of a phase; raise this rank's own error, or the agreed one.
        `stop_counts`: a SIGTERM seen while waiting stops here (not when the caller handles it)."""
        own = outcome_of(err)
        if stop_counts and stop.requested() and own == OK:
            own = PREEMPTED  # a SIGTERM seen while waiting for the others counts here
        (agreed,) = self.agree(own)
        if err is not None and own == agreed:
            raise err
        if agreed != OK:
            raise OtherRankFailed(agreed)

    def main_first(self, fn: Callable[[], T]) -> T:
        """The pod's local main runs fn first (downloads, cache files); the others wait, then run
        it on what it prepared. Every rank leaves with the same outcome."""
        value: Any = None
        for turn in (True, False):
            err = None
            if self.is_local_main == turn:
                try:
                    value = fn()
                except Exception as e:  # noqa: BLE001 - settled below, re-raised on this rank
                    err = e
            self.settle(err)
        return value

    def main_only(self, fn: Callable[[], T], stop_counts: bool = True) -> T | None:
        """Global rank 0 runs fn (a write to storage, base-model scoring); the others wait for it."""
        value, err = None, None
        if self.is_main:
            try:
                value = fn()
            except Exception as e:  # noqa: BLE001 - settled below, re-raised on this rank
                err = e
        self.settle(err, stop_counts)
        return value


def exit_file(work_dir: Path, rank: int) -> Path:
    return work_dir / EXIT_DIR / f"rank-{rank}.json"


def write_exit(work_dir: Path, rank: int, code: int, message: str) -> None:
    """What this rank means to exit with, for the pod's main process (written last, atomically)."""
    path = exit_file(work_dir, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps({"rank": rank, "code": code, "message": message}))
    os.replace(tmp, path)
