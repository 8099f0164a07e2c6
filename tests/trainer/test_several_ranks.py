"""Two ranks under `accelerate launch` (gloo on CPU), started as the pod starts them: `kubetune trainer-run`
with NUM_PROCESSES=2. The pod's main process must exit 75 on preemption and 65 on bad input whatever the
launcher does, every rank must stop at the same step, and one rank alone writes (docs/trainer.md,
Several ranks)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from kubetune.api.manifest import load_manifest
from kubetune.api.trainer_config import CONFIG_ENV, EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, EXIT_PREEMPTED, TrainerConfig
from kubetune_trainer.supervisor import pod_exit_code

from .tiny import build_tiny_model, task_examples, write_job, write_jsonl

pytestmark = pytest.mark.trainer

STEPS = 24


@pytest.fixture(scope="module")
def slower_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Wide enough that a step takes a noticeable time: there is time to interrupt a run.
    return build_tiny_model(tmp_path_factory.mktemp("model64"), hidden=64, layers=2)


@pytest.fixture(autouse=True)
def _no_rank_outlives_its_test():
    yield
    for pod in Pod.started:
        pod.kill()
    Pod.started.clear()


class Pod:
    """`kubetune trainer-run` as the trainer pod runs it, with two local ranks."""

    started: list["Pod"] = []

    def __init__(self, tmp: Path, job: Path, run_dir: Path, env: dict | None = None):
        tmp.mkdir(parents=True, exist_ok=True)
        manifest = load_manifest(job, expect_kind="FineTuneJob")
        cfg = TrainerConfig(job_name="tiny", namespace="default", storage_uri=str(run_dir), progress_reporter="console",
                            spec=manifest.spec)
        self.config = tmp / "config.json"
        self.config.write_text(cfg.model_dump_json(by_alias=True))
        self.work, self.run_dir, self.log = tmp / "work", run_dir, tmp / "pod.log"
        self.termination = tmp / "termination-log"
        self.termination.write_text("")
        with self.log.open("a") as out:  # a file, not a pipe: nobody has to drain it while the test waits
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kubetune_trainer", "trainer-run"], cwd=tmp,
                stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, CONFIG_ENV: str(self.config), "KUBETUNE_WORK_DIR": str(self.work),
                     "KUBETUNE_CACHE": str(tmp / "cache"), "KUBETUNE_TERMINATION_LOG": str(self.termination),
                     "NUM_MACHINES": "1", "NUM_PROCESSES": "2", "MACHINE_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                     "OMP_NUM_THREADS": "1", **(env or {})},
            )
        Pod.started.append(self)

    def output(self) -> str:
        return self.log.read_text()

    def wait_for(self, what: str, done, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert self.proc.poll() is None, f"the pod exited ({self.proc.returncode}) before {what}:\n{self.output()}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{self.output()}"
            time.sleep(0.05)

    def wait(self, timeout: float = 300) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the pod did not exit in {timeout}s:\n{self.output()}") from None


    def processes(self) -> list[int]:
        """This pod's processes: the main one, the launcher and the ranks (each in its own session)."""
        return pids_with({f"KUBETUNE_WORK_DIR={self.work}"})

    def kill(self) -> None:
        for pid in self.processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=30)


def pids_with(env_entries: set[str]) -> list[int]:
    want = {e.encode() for e in env_entries}
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and want <= set((proc / "environ").read_bytes().split(b"\0")):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def complete_steps(run_dir: Path) -> list[int]:
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(int(p.name.split("-")[1]) for p in root.iterdir() if (p / "MANIFEST.json").is_file())


def losses(metrics_jsonl: Path) -> list[tuple[int, float]]:
    return [(m["step"], m["loss"]) for m in map(json.loads, metrics_jsonl.read_text().splitlines()) if "loss" in m]


def two_ranks_formed(output: str) -> bool:
    return "distributed: process 0 of 2 (gloo)" in output and "distributed: process 1 of 2 (gloo)" in output


def training_job(tmp: Path, model: Path, train: Path) -> Path:
    """No validation data at all: no evaluation saves, so a preemption checkpoint is the only one."""
    job = write_job(tmp / "job.yaml", model, train, None, method="lora", maxSteps=STEPS,
                    storage={"uri": "unused", "checkpointIntervalSteps": STEPS, "checkpointsKept": 5})
    doc = yaml.safe_load(job.read_text())
    doc["spec"]["dataset"]["validationSplit"] = 0
    job.write_text(yaml.safe_dump(doc))
    return job


def rank_pid(work: Path, rank: int) -> int:
    """The pid of one rank of this pod (the launcher starts them; their environment names them)."""
    pids = pids_with({f"RANK={rank}", f"KUBETUNE_WORK_DIR={work}"})
    assert len(pids) == 1, f"{len(pids)} processes with RANK={rank} for {work}"
    return pids[0]


def started_training(pod: "Pod") -> bool:
    path = pod.work / "metrics.jsonl"
    return path.is_file() and bool(path.read_text())


def test_sigterm_to_the_pod_stops_every_rank_at_one_step_and_resume_is_exact(slower_model, tiny_data, tmp_path):
    job = training_job(tmp_path, slower_model, tiny_data[0])

    straight = Pod(tmp_path / "straight", job, tmp_path / "straight-run", env={"KUBETUNE_LOG_LEVEL": "INFO"})
    assert straight.wait() == EXIT_OK, straight.output()
    reference = losses(straight.run_dir / "metrics.jsonl")
    assert two_ranks_formed(straight.output())
    # One writer: every step once in the metrics (two writers would append each step twice),
    # the final checkpoint uploaded once, one summary.
    assert [s for s, _ in reference] == list(range(1, STEPS + 1))
    assert straight.output().count(f"checkpoint step {STEPS} complete") == 1, straight.output()
    assert straight.output().count("Done in") == 1

    run_dir = tmp_path / "run"
    first = Pod(tmp_path / "first", job, run_dir)
    first.wait_for("the first training step", lambda: started_training(first))
    sent = time.monotonic()
    first.proc.send_signal(signal.SIGTERM)  # the kubelet signals the container's main process only
    assert first.wait(timeout=60) == EXIT_PREEMPTED, first.output()
    assert time.monotonic() - sent < 60
    steps = complete_steps(run_dir)
    assert len(steps) == 1 and 1 <= steps[0] < STEPS, steps
    manifest = json.loads((run_dir / "checkpoints" / f"step-{steps[0]:08d}" / "MANIFEST.json").read_text())
    # Both ranks' RNG states are in the checkpoint: rank 0 uploaded only after rank 1 had written its part.
    assert {"adapter_model.safetensors", "optimizer.pt", "rng_state_0.pth", "rng_state_1.pth"} <= set(manifest["files"])
    reports = sorted(json.loads(p.read_text())["code"] for p in (first.work / "exit-codes").glob("rank-*.json"))
    assert reports == [EXIT_PREEMPTED, EXIT_PREEMPTED]  # both ranks stopped cleanly, neither was killed
    assert "Traceback" not in first.output()
    assert "preempted: complete checkpoint at step" in first.termination.read_text()

    second = Pod(tmp_path / "second", job, run_dir)
    assert second.wait() == EXIT_OK, second.output()
    assert f"resuming from the complete checkpoint at step {steps[0]}" in second.output()
    resumed = losses(run_dir / "metrics.jsonl")
    assert [s for s, _ in resumed] == list(range(1, STEPS + 1))  # every step once: none lost, none repeated
    for (step, want), (_, got) in zip(reference, resumed):
        assert got == pytest.approx(want, abs=1e-5), f"step {step}: {got} != {want}"


def test_sigterm_to_one_rank_stops_every_rank_at_the_same_step(slower_model, tiny_data, tmp_path):
    """One node drained: only its ranks get SIGTERM. The others learn it at the next step's
    agreement; without it they would wait in a collective for a rank that has left."""
    job = training_job(tmp_path, slower_model, tiny_data[0])
    pod = Pod(tmp_path / "pod", job, tmp_path / "run")
    pod.wait_for("the first training step", lambda: started_training(pod))
    os.kill(rank_pid(pod.work, 1), signal.SIGTERM)
    assert pod.wait(timeout=90) == EXIT_PREEMPTED, pod.output()
    steps = complete_steps(tmp_path / "run")
    assert len(steps) == 1 and steps[0] < STEPS, steps
    reports = sorted(json.loads(p.read_text())["code"] for p in (pod.work / "exit-codes").glob("rank-*.json"))
    assert reports == [EXIT_PREEMPTED, EXIT_PREEMPTED]


def test_bad_dataset_exits_65_without_a_traceback(tiny_model, tmp_path):
    rows = task_examples(20, seed=3)
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    with train.open("a") as f:
        f.write('{"messages": [{"role": "bot", "content": "hi"}]}\n')
    job = write_job(tmp_path / "job.yaml", tiny_model, train, None, maxSteps=4)
    pod = Pod(tmp_path, job, tmp_path / "run")
    assert pod.wait() == EXIT_BAD_INPUT, pod.output()
    out = pod.output()
    assert "Traceback" not in out and "ChildFailedError" not in out, out
    assert out.count("bad input, nothing trained") == 1, out  # the rank that found it says so, once
    assert "unknown role 'bot'" in out
    headline = pod.termination.read_text().splitlines()[-1]  # the line the operator quotes in status
    assert headline.startswith("bad data: ") and "train.jsonl:21: messages[0].role: unknown role 'bot'" in headline


def test_sigterm_while_the_model_downloads_exits_75(tiny_data, tmp_path):
    """The model's store is unreachable (a closed port): the download retries with backoff, which
    SIGTERM must cut short instead of holding the pod until SIGKILL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # nothing listens here once the socket is closed
    train, _ = tiny_data
    job = write_job(tmp_path / "job.yaml", Path("unused"), train, None, maxSteps=4,
                    storage={"uri": "unused", "endpoint": f"http://127.0.0.1:{closed}", "checkpointIntervalSteps": 4})
    doc = yaml.safe_load(job.read_text())
    doc["spec"]["baseModel"]["uri"] = "s3://models/tiny"
    job.write_text(yaml.safe_dump(doc))
    pod = Pod(tmp_path, job, tmp_path / "run",
              env={"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test-secret", "KUBETUNE_LOG_LEVEL": "WARNING"})
    pod.wait_for("a download retry", lambda: "retrying in" in pod.output())
    sent = time.monotonic()
    pod.proc.send_signal(signal.SIGTERM)
    assert pod.wait(timeout=60) == EXIT_PREEMPTED, pod.output()
    assert time.monotonic() - sent < 30  # the backoff (up to 15 s a wait, 10 min in all) was cut short
    assert "stopped by SIGTERM during download" in pod.output()
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_sigterm_while_the_base_model_is_scored_exits_75(tiny_model, tiny_data, tmp_path):
    train, val = tiny_data
    job = write_job(tmp_path / "job.yaml", tiny_model, train, val, maxSteps=4)
    pod = Pod(tmp_path, job, tmp_path / "run", env={"KUBETUNE_HOLD_PHASE": "base-model scoring"})
    pod.wait_for("base-model scoring", lambda: "holding in base-model scoring" in pod.output())
    pod.proc.send_signal(signal.SIGTERM)
    assert pod.wait(timeout=60) == EXIT_PREEMPTED, pod.output()
    assert "stopped by SIGTERM during base-model scoring" in pod.output()
    assert not (tmp_path / "run" / "reports" / "base-scores.json").exists()  # no partial score kept
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("codes, launcher, terminated, pod", [
    ([0, 0], 0, False, EXIT_OK),
    ([0], 0, False, EXIT_FAILED),                     # a rank that never reported
    ([65, 1], 1, False, EXIT_BAD_INPUT),              # bad input wins over what the launcher says
    ([75, 75], 1, True, EXIT_PREEMPTED),
    ([75, 65], 1, False, EXIT_BAD_INPUT),             # a retry would read the same data
    ([], 1, True, EXIT_PREEMPTED),                    # SIGTERM before any rank could report
    ([1, 0], 1, False, EXIT_FAILED),
])
def test_the_pod_exit_code_is_what_the_ranks_reported(codes, launcher, terminated, pod):
    reports = [{"rank": i, "code": c, "message": ""} for i, c in enumerate(codes)]
    assert pod_exit_code(reports, 2, launcher, terminated) == pod


def test_the_launcher_gives_stopping_ranks_more_than_any_grace_period(tmp_path, monkeypatch):
    """accelerate hands torch.distributed.run no shutdown timeout, so torch reads
    TORCH_ELASTIC_SHUTDOWN_TIMEOUT (30 s when unset) and SIGKILLs ranks still saving after that.
    Replays accelerate's multi-GPU launcher (accelerate/commands/launch.py) on the pod's command."""
    import torch.distributed.run as distrib_run
    from accelerate.commands.launch import _filter_args, launch_command_parser

    from kubetune_trainer.launch import launch_command
    from kubetune_trainer.supervisor import SHUTDOWN_TIMEOUT_S, launcher_env

    cmd = launch_command({"NUM_MACHINES": "1", "NUM_PROCESSES": "2", "MACHINE_RANK": "0"})
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"]
    args = launch_command_parser().parse_args(cmd[3:])
    torch_args = _filter_args(args, distrib_run.get_args_parser(),
                              ["--training_script", args.training_script, "--training_script_args", args.training_script_args])
    monkeypatch.delenv("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", raising=False)
    for key, value in launcher_env(tmp_path).items():  # the environment the supervisor gives the launcher
        if os.environ.get(key) != value:
            monkeypatch.setenv(key, value)
    config, *_ = distrib_run.config_from_args(torch_args)
    assert config.shutdown_timeout == SHUTDOWN_TIMEOUT_S >= 3600
