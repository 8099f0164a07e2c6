"""Exact resume after SIGKILL, SIGTERM → complete checkpoint + exit 75, and incomplete checkpoints ignored."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kubetune.api.trainer_config import EXIT_PREEMPTED
from kubetune.cli import main

from .tiny import build_tiny_model, write_job

pytestmark = pytest.mark.trainer

STEPS = 40
EVERY = 5


@pytest.fixture(scope="module")
def slower_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Wide enough that 40 steps take several seconds: there is time to interrupt a run.
    return build_tiny_model(tmp_path_factory.mktemp("model64"), hidden=64, layers=2)


def start(job: Path, out: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "kubetune_trainer", "train", "-f", str(job), "--output-dir", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def complete_steps(out: Path) -> list[int]:
    root = out / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(int(p.name.split("-")[1]) for p in root.iterdir() if (p / "MANIFEST.json").is_file())


def wait_for_checkpoint(proc: subprocess.Popen, out: Path, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        steps = complete_steps(out)
        if steps:
            return steps[-1]
        assert proc.poll() is None, f"trainer exited early ({proc.returncode}):\n{proc.stdout.read()}"
        time.sleep(0.02)
    raise AssertionError("no complete checkpoint appeared")


def step_losses(out: Path) -> list[tuple[int, float]]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [(m["step"], m["loss"]) for m in map(json.loads, lines) if "loss" in m]


def test_resume_after_sigkill_matches_uninterrupted_run(slower_model, tiny_data, tmp_path):
    train, val = tiny_data
    job = write_job(tmp_path / "job.yaml", slower_model, train, val, method="lora", maxSteps=STEPS,
                    storage={"uri": "unused", "checkpointIntervalSteps": EVERY, "checkpointsKept": 2})

    straight = tmp_path / "straight"
    proc = start(job, straight)
    assert proc.wait(timeout=300) == 0, proc.stdout.read()
    reference = step_losses(straight)
    assert [s for s, _ in reference] == list(range(1, STEPS + 1))

    interrupted = tmp_path / "interrupted"
    proc = start(job, interrupted)
    wait_for_checkpoint(proc, interrupted)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    last_complete = complete_steps(interrupted)[-1]
    assert last_complete < STEPS, "the run finished before it could be killed"

    proc = start(job, interrupted)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    assert f"resuming from the complete checkpoint at step {last_complete}" in output

    resumed = step_losses(interrupted)
    # Every step exactly once: none before the checkpoint repeated, none lost.
    assert [s for s, _ in resumed] == list(range(1, STEPS + 1))
    for (step, want), (_, got) in zip(reference, resumed):
        assert got == pytest.approx(want, abs=1e-5), f"step {step}: {got} != {want}"


def test_sigterm_saves_a_complete_checkpoint_and_exits_75(slower_model, tiny_data, tmp_path):
    train, val = tiny_data
    job = write_job(tmp_path / "job.yaml", slower_model, train, val, method="lora", maxSteps=STEPS,
                    storage={"uri": "unused", "checkpointIntervalSteps": STEPS})
    out = tmp_path / "run"
    proc = start(job, out)
    # Wait until training is under way (the first metrics line), then preempt.
    deadline = time.monotonic() + 120
    while not ((out / ".work" / "metrics.jsonl").is_file() and (out / ".work" / "metrics.jsonl").read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() is not None else "timeout"
        time.sleep(0.02)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=30)  # the default Kubernetes grace period
    assert proc.returncode == EXIT_PREEMPTED, output
    assert time.monotonic() - sent < 30
    # The stop's checkpoint is the newest, at the step the log names. Under load the signal can land
    # after the first evaluation (evalSteps 3), whose new best eval loss is kept as a checkpoint too.
    stopped_at = int(re.search(r"SIGTERM: saving a checkpoint at step (\d+)", output).group(1))
    steps = complete_steps(out)
    assert steps and steps[-1] == stopped_at and 1 <= stopped_at < STEPS, (steps, output)
    assert all(s == stopped_at or s % 3 == 0 for s in steps), steps  # nothing but best-eval checkpoints besides
    for step in steps:
        manifest = json.loads((out / "checkpoints" / f"step-{step:08d}" / "MANIFEST.json").read_text())
        for rel, meta in manifest["files"].items():
            assert (out / "checkpoints" / f"step-{step:08d}" / rel).stat().st_size == meta["size"]
    assert {"adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json"} <= set(manifest["files"])


def test_checkpoint_without_manifest_is_never_resumed_from(tiny_model, tiny_data, tmp_path, capsys):
    train, val = tiny_data
    job = write_job(tmp_path / "job.yaml", tiny_model, train, val, method="lora", maxSteps=6,
                    storage={"uri": "unused", "checkpointIntervalSteps": 2, "checkpointsKept": 10})
    out = tmp_path / "run"
    assert main(["train", "-f", str(job), "--output-dir", str(out)]) == 0
    # Every 2 steps, plus step 3: each new best eval loss (evalSteps 3) is saved so it can be kept.
    assert complete_steps(out) == [2, 3, 4, 6]
    # Simulate an upload cut short: the newest two lose their manifests (and one a file).
    for step in (4, 6):
        (out / "checkpoints" / f"step-{step:08d}" / "MANIFEST.json").unlink()
    (out / "checkpoints" / "step-00000006" / "optimizer.pt").write_bytes(b"partial")
    capsys.readouterr()
    assert main(["train", "-f", str(job), "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "resuming from the complete checkpoint at step 3" in printed
    assert [s for s, _ in step_losses(out)] == [1, 2, 3, 4, 5, 6]
