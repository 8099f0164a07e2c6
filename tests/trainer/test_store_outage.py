"""The S3 store dies (SIGKILL) while a checkpoint uploads and comes back with its data (versitygw).

What the trainer promises (docs/trainer.md, Storage layout): an outage slows uploads, it does not
stop training; a checkpoint without its manifest is never complete; a new run resumes from the
newest complete checkpoint, exactly (same losses as an uninterrupted run).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kubetune_trainer import storage as st
from tests.support.s3_fixtures import VersityServer, create_bucket

from .tiny import build_tiny_model, write_job

pytestmark = pytest.mark.trainer

STEPS = 40
EVERY = 5
RUN = "runs/default/tiny"  # <storage.uri>/<namespace>/<name>, as the operator lays it out


@pytest.fixture(scope="module")
def slower_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Wide enough that 40 steps take several seconds: there is time to act during the run.
    return build_tiny_model(tmp_path_factory.mktemp("model64"), hidden=64, layers=2)


@pytest.fixture(scope="module")
def reference_losses(slower_model: Path, tiny_data, tmp_path_factory: pytest.TempPathFactory) -> list[tuple[int, float]]:
    """Per-step losses of an uninterrupted run (local storage: the store does not change the maths)."""
    d = tmp_path_factory.mktemp("reference")
    job = write_job(d / "job.yaml", slower_model, *tiny_data, maxSteps=STEPS,
                    storage={"uri": "unused", "checkpointIntervalSteps": EVERY})
    log = d / "trainer.log"
    proc = start_trainer(job, d / "work", log, env={"KUBETUNE_CACHE": str(d / "cache")},
                         extra=["--output-dir", str(d / "run")])
    assert proc.wait(timeout=600) == 0, log.read_text()
    losses = losses_of((d / "run" / "metrics.jsonl").read_text())
    assert [s for s, _ in losses] == list(range(1, STEPS + 1))
    return losses


def start_trainer(job: Path, work: Path, log: Path, env: dict | None = None, extra: list[str] = ()) -> subprocess.Popen:
    with log.open("a") as out:  # a file, not a pipe: nobody has to drain it while the test waits
        return subprocess.Popen(
            [sys.executable, "-m", "kubetune_trainer", "train", "-f", str(job), "--work-dir", str(work), *extra],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        )


def losses_of(metrics_jsonl: str) -> list[tuple[int, float]]:
    return [(m["step"], m["loss"]) for m in map(json.loads, metrics_jsonl.splitlines()) if "loss" in m]


def steps_done(work: Path) -> int:
    path = work / "metrics.jsonl"
    return max((s for s, _ in losses_of(path.read_text())), default=0) if path.is_file() else 0


def s3_job(tmp_path: Path, model: Path, tiny_data, server: VersityServer, bucket: str) -> Path:
    return write_job(tmp_path / "job.yaml", model, *tiny_data, maxSteps=STEPS,
                     storage={"uri": f"s3://{bucket}/runs", "endpoint": server.endpoint_url,
                              "checkpointIntervalSteps": EVERY, "checkpointsKept": 20})


def run_storage(server: VersityServer, bucket: str) -> st.S3Storage:
    store = st.S3Storage(f"s3://{bucket}/{RUN}", server.endpoint_url)
    store.client = server.client()
    return store


def kill_store_mid_checkpoint(server: VersityServer, bucket: str, proc: subprocess.Popen, log: Path,
                              after_step: int) -> int:
    """SIGKILL the store while a checkpoint after `after_step` is half uploaded; return its step.

    Watches the server's own directory (versitygw keeps object `k` at DATA_DIR/bucket/k and writes
    an object in flight to an unnamed temp file): a step directory holding files but no
    MANIFEST.json is a checkpoint upload in progress. If the manifest lands between the look and
    the kill, the store is brought back and the next checkpoint is tried.
    """
    root = server.data_dir / bucket / RUN / "checkpoints"
    missed: set[int] = set()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"trainer exited ({proc.returncode}) before the store was killed:\n{log.read_text()}"
        for d in sorted(root.iterdir()) if root.is_dir() else []:
            step = int(d.name.split("-")[1])
            try:
                uploading = step > after_step and step not in missed and any(d.iterdir()) \
                    and not (d / st.MANIFEST).exists()
            except FileNotFoundError:
                continue  # pruned while we looked
            if not uploading:
                continue
            server.kill()
            if not (d / st.MANIFEST).exists():
                return step
            missed.add(step)
            server.start()
        time.sleep(0.002)
    raise AssertionError(f"never caught a checkpoint mid-upload (missed {sorted(missed)}):\n{log.read_text()}")


def test_store_killed_mid_checkpoint_upload_training_carries_on(persistent_s3, slower_model, tiny_data,
                                                                 reference_losses, tmp_path):
    bucket = create_bucket(persistent_s3)
    job = s3_job(tmp_path, slower_model, tiny_data, persistent_s3, bucket)
    work, log = tmp_path / "work", tmp_path / "trainer.log"
    proc = start_trainer(job, work, log, env=persistent_s3.env)
    try:
        half = kill_store_mid_checkpoint(persistent_s3, bucket, proc, log, after_step=EVERY)
        at_kill = steps_done(work)
        # Down until the uploader has hit the dead store and training has gone on without it
        # (uploads run on their own thread, which may be idle for a moment on a busy machine).
        deadline = time.monotonic() + 120
        while not ("retrying" in log.read_text() and steps_done(work) >= min(at_kill + 2, STEPS)):
            assert proc.poll() is None, f"the trainer died while the store was down:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"no retry or no training progress while the store was down:\n{log.read_text()}"
            time.sleep(0.05)
        assert not (persistent_s3.data_dir / bucket / RUN / st.checkpoint_key(half) / st.MANIFEST).exists()
        persistent_s3.start()
        assert proc.wait(timeout=600) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    store = run_storage(persistent_s3, bucket)
    # Every checkpoint, the interrupted one included, is complete and matches its manifest byte for byte.
    complete = st.complete_checkpoints(store)
    assert set(range(EVERY, STEPS + 1, EVERY)) | {half} <= {c.step for c in complete}
    for c in complete:
        st.download_checkpoint(store, c, tmp_path / "verify" / str(c.step))  # raises on a size or sha256 mismatch
    losses = losses_of(store.get_bytes("metrics.jsonl").decode())
    assert [s for s, _ in losses] == list(range(1, STEPS + 1))
    for (step, want), (_, got) in zip(reference_losses, losses):
        assert got == pytest.approx(want, abs=1e-5), f"step {step}: {got} != {want}"


def test_resume_after_store_outage_uses_last_complete_checkpoint(persistent_s3, slower_model, tiny_data,
                                                                  reference_losses, tmp_path):
    bucket = create_bucket(persistent_s3)
    job = s3_job(tmp_path, slower_model, tiny_data, persistent_s3, bucket)
    log = tmp_path / "trainer.log"
    proc = start_trainer(job, tmp_path / "work-1", log, env=persistent_s3.env)
    try:
        half = kill_store_mid_checkpoint(persistent_s3, bucket, proc, log, after_step=EVERY)
    finally:
        proc.send_signal(signal.SIGKILL)  # the pod dies too, before the upload can finish
        proc.wait(timeout=30)
    persistent_s3.start()

    store = run_storage(persistent_s3, bucket)
    assert f"step-{half:08d}" in store.list_dirs("checkpoints")  # half of it is there ...
    complete = [c.step for c in st.complete_checkpoints(store)]
    assert half not in complete  # ... and it is not taken for a checkpoint
    last_complete = complete[-1]
    assert EVERY <= last_complete < half

    proc = start_trainer(job, tmp_path / "work-2", log, env=persistent_s3.env)
    try:
        assert proc.wait(timeout=600) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert f"resuming from the complete checkpoint at step {last_complete}" in log.read_text()
    # The run that resumed rewrote the half-uploaded checkpoint completely.
    redone = next(c for c in st.complete_checkpoints(store) if c.step == half)
    st.download_checkpoint(store, redone, tmp_path / "verify")
    losses = losses_of(store.get_bytes("metrics.jsonl").decode())
    assert [s for s, _ in losses] == list(range(1, STEPS + 1))  # every step once: none lost, none repeated
    for (step, want), (_, got) in zip(reference_losses, losses):
        assert got == pytest.approx(want, abs=1e-5), f"step {step}: {got} != {want}"
    assert losses[-1][1] == pytest.approx(reference_losses[-1][1], abs=1e-5)
