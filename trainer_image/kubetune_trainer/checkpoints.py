"""The checkpoint protocol: a directory of files plus MANIFEST.json, written last and removed first.

A checkpoint without its manifest (an upload cut short, a deletion half done) is never
taken for complete. Uploads run on a background thread, in order, so training does not
wait for storage; pruning keeps the newest few and the best.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import re
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import stop
from .backends import Storage

log = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"
CHECKPOINTS = "checkpoints"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class CheckpointInfo:
    step: int
    key: str
    manifest: dict[str, Any]


def checkpoint_key(step: int) -> str:
    return f"{CHECKPOINTS}/step-{step:08d}"


def upload_checkpoint(storage: Storage, local_dir: Path, step: int, extra: dict[str, Any]) -> CheckpointInfo:
    """Upload every file, then the manifest (with sizes and hashes) last."""
    key = checkpoint_key(step)
    files = sorted(p for p in local_dir.rglob("*") if p.is_file())
    entries = {}
    for p in files:
        rel = p.relative_to(local_dir).as_posix()
        storage.put_file(p, f"{key}/{rel}")
        entries[rel] = {"size": p.stat().st_size, "sha256": sha256_file(p)}
    manifest = {"step": step, "completedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "files": entries, **extra}
    storage.put_json(manifest, f"{key}/{MANIFEST}")
    return CheckpointInfo(step, key, manifest)


def complete_checkpoints(storage: Storage) -> list[CheckpointInfo]:
    """Checkpoints whose manifest exists, oldest first. Directories without one are ignored."""
    found = []
    for name in storage.list_dirs(CHECKPOINTS):
        m = _STEP_DIR.match(name)
        if not m:
            continue
        key = f"{CHECKPOINTS}/{name}"
        manifest = storage.get_json(f"{key}/{MANIFEST}")
        if manifest is None:
            log.warning("ignoring %s: no %s (incomplete upload)", storage.uri(key), MANIFEST)
            continue
        found.append(CheckpointInfo(int(m.group(1)), key, manifest))
    return sorted(found, key=lambda c: c.step)


def download_checkpoint(storage: Storage, ckpt: CheckpointInfo, local_dir: Path, workers: int = 8) -> Path:
    """Fetch a complete checkpoint in parallel and verify each file against the manifest."""
    if local_dir.exists():
        shutil.rmtree(local_dir)

    def fetch(rel: str) -> None:
        stop.check("checkpoint download")
        target = local_dir / rel
        storage.get_file(f"{ckpt.key}/{rel}", target)
        want = ckpt.manifest["files"][rel]
        if target.stat().st_size != want["size"] or sha256_file(target) != want["sha256"]:
            raise IOError(f"{storage.uri(ckpt.key)}/{rel} does not match its manifest")

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(fetch, ckpt.manifest["files"]))
    return local_dir


def prune_checkpoints(storage: Storage, keep_last: int, best_step: int | None) -> list[int]:
    """Delete all but the newest keep_last complete checkpoints and the best; manifest goes first."""
    ckpts = complete_checkpoints(storage)
    keep = {c.step for c in ckpts[-keep_last:]} | ({best_step} if best_step is not None else set())
    removed = []
    for c in ckpts:
        if c.step not in keep:
            storage.delete(f"{c.key}/{MANIFEST}")  # from here on it is not a checkpoint any more
            storage.delete_prefix(c.key)
            removed.append(c.step)
    return removed


class CheckpointUploader:
    """Uploads checkpoints on a background thread, in order, so training does not wait for storage.

    After a checkpoint is safely in storage, older ones are pruned there and the
    local copy is deleted (the newest and the best stay on disk).
    """

    def __init__(self, storage: Storage, keep_last: int, on_complete: Callable[[CheckpointInfo], None] | None = None):
        self.storage, self.keep_last, self.on_complete = storage, keep_last, on_complete
        self.best_step: int | None = None
        self.error: BaseException | None = None
        self._queue: queue.Queue[tuple[Path, int, dict[str, Any]] | None] = queue.Queue()
        self._local: list[Path] = []
        self._thread = threading.Thread(target=self._run, name="checkpoint-uploader", daemon=True)
        self._thread.start()

    def submit(self, local_dir: Path, step: int, extra: dict[str, Any]) -> None:
        if self.error is not None:
            raise RuntimeError(f"checkpoint upload failed: {self.error}") from self.error
        self._queue.put((local_dir, step, extra))

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            local_dir, step, extra = item
            try:
                info = upload_checkpoint(self.storage, local_dir, step, extra)
                prune_checkpoints(self.storage, self.keep_last, self.best_step)
                self._local.append(local_dir)
                self._clean_local()
                if self.on_complete:
                    self.on_complete(info)
                log.info("checkpoint step %d complete at %s", step, self.storage.uri(info.key))
            except BaseException as err:  # noqa: BLE001 - surfaced on the training thread
                log.error("checkpoint step %d upload failed: %s", step, err)
                self.error = err
            finally:
                self._queue.task_done()

    def _clean_local(self) -> None:
        best = f"checkpoint-{self.best_step}" if self.best_step is not None else None
        for d in self._local[:-1]:
            if d.name != best:
                shutil.rmtree(d, ignore_errors=True)
        self._local = [d for d in self._local[:-1] if d.exists()] + self._local[-1:]

    def wait(self) -> None:
        """Block until every submitted checkpoint is uploaded; raise if one failed."""
        self._queue.join()
        if self.error is not None:
            raise RuntimeError(f"checkpoint upload failed: {self.error}") from self.error

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
