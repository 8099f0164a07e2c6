"""Where a run keeps its checkpoints and outputs: a local directory or s3://.

A checkpoint is a directory of files plus MANIFEST.json, written last and
removed first, so a checkpoint without its manifest (an upload cut short, a
deletion half done) is never taken for complete. S3 calls are retried with
exponential backoff: a storage outage slows the run, it does not kill it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import queue
import re
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

log = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"
CHECKPOINTS = "checkpoints"
_STEP_DIR = re.compile(r"^step-(\d+)$")
T = TypeVar("T")


def cache_root() -> Path:
    return Path(os.environ.get("KUBETUNE_CACHE", Path.home() / ".cache" / "kubetune"))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Storage:
    """Keys are '/'-separated paths under the run's root."""

    def uri(self, key: str = "") -> str:
        raise NotImplementedError

    def put_file(self, local: Path, key: str) -> None:
        raise NotImplementedError

    def put_bytes(self, data: bytes, key: str) -> None:
        raise NotImplementedError

    def get_bytes(self, key: str) -> bytes | None:
        """The object's content, or None if it does not exist."""
        raise NotImplementedError

    def get_file(self, key: str, local: Path) -> None:
        raise NotImplementedError

    def list_dirs(self, prefix: str) -> list[str]:
        """Immediate sub-'directories' of prefix (names only)."""
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def delete_prefix(self, prefix: str) -> None:
        raise NotImplementedError

    def put_json(self, obj: Any, key: str) -> None:
        self.put_bytes(json.dumps(obj, indent=2, default=str).encode(), key)

    def get_json(self, key: str) -> Any | None:
        data = self.get_bytes(key)
        return None if data is None else json.loads(data)


class LocalStorage(Storage):
    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def uri(self, key: str = "") -> str:
        return str(self.root / key) if key else str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / key

    def put_file(self, local: Path, key: str) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.part")
        shutil.copyfile(local, tmp)
        os.replace(tmp, dest)  # atomic: a reader sees the old file or the whole new one

    def put_bytes(self, data: bytes, key: str) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.part")
        tmp.write_bytes(data)
        os.replace(tmp, dest)

    def get_bytes(self, key: str) -> bytes | None:
        p = self._path(key)
        return p.read_bytes() if p.is_file() else None

    def get_file(self, key: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self._path(key), local)

    def list_dirs(self, prefix: str) -> list[str]:
        p = self._path(prefix)
        return sorted(c.name for c in p.iterdir() if c.is_dir()) if p.is_dir() else []

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self._path(prefix), ignore_errors=True)


def _transient(err: Exception) -> bool:
    """Errors worth retrying: the connection, throttling, server-side failures."""
    from botocore.exceptions import ClientError, ConnectionError as BotoConnectionError, HTTPClientError

    from boto3.exceptions import S3UploadFailedError

    if isinstance(err, S3UploadFailedError):
        # upload_file wraps the real cause; judge that instead.
        cause = err.__context__ or err.__cause__
        return cause is not None and _transient(cause)
    if isinstance(err, (BotoConnectionError, HTTPClientError, ConnectionError, TimeoutError)):
        return True
    if isinstance(err, ClientError):
        code = err.response.get("Error", {}).get("Code", "")
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        # NoSuchBucket too: a store restarting (or a bucket being re-created) reports it
        # for a moment; a truly missing bucket still fails once the deadline passes.
        return status >= 500 or code in {"SlowDown", "Throttling", "RequestTimeout", "InternalError", "NoSuchBucket"}
    return False


def with_retries(what: str, fn: Callable[[], T], deadline_s: float, first_delay_s: float = 0.5, max_delay_s: float = 15.0) -> T:
    """Call fn, retrying transient errors with exponential backoff until deadline_s have passed."""
    start, delay = time.monotonic(), first_delay_s
    while True:
        try:
            return fn()
        except Exception as err:  # noqa: BLE001 - filtered by _transient
            if not _transient(err) or time.monotonic() - start + delay > deadline_s:
                raise
            log.warning("%s failed (%s); retrying in %.1fs", what, type(err).__name__, delay)
            time.sleep(delay)
            delay = min(delay * 2, max_delay_s)


class S3Storage(Storage):
    # Long enough to ride out a store restart or a network blip; a checkpoint
    # upload runs in the background, so waiting costs no training time.
    RETRY_DEADLINE_S = float(os.environ.get("KUBETUNE_S3_RETRY_DEADLINE_S", "600"))

    def __init__(self, uri: str, endpoint: str | None = None, region: str | None = None):
        import boto3
        from botocore.config import Config

        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        # Short timeouts and no hidden botocore retries: with_retries owns the policy.
        config = Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 1, "mode": "standard"})
        self.client = boto3.client("s3", endpoint_url=endpoint, region_name=region or "us-east-1", config=config)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{self._key(key)}".rstrip("/")

    def _retry(self, what: str, fn: Callable[[], T]) -> T:
        return with_retries(f"{what} {self.uri()}", fn, self.RETRY_DEADLINE_S)

    def put_file(self, local: Path, key: str) -> None:
        self._retry(f"upload {key} to", lambda: self.client.upload_file(str(local), self.bucket, self._key(key)))

    def put_bytes(self, data: bytes, key: str) -> None:
        self._retry(f"put {key} to", lambda: self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data))

    def get_bytes(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        def get() -> bytes | None:
            try:
                return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
            except ClientError as err:
                if err.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
                    return None
                raise

        return self._retry(f"get {key} from", get)

    def get_file(self, key: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.part")
        self._retry(f"download {key} from", lambda: self.client.download_file(self.bucket, self._key(key), str(tmp)))
        os.replace(tmp, local)

    def list_sizes(self, prefix: str) -> dict[str, int]:
        """Every key under prefix, relative to it, with its size (one listing, no per-object HEAD)."""
        full = self._key(prefix).rstrip("/") + "/"

        def list_all() -> dict[str, int]:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full)
            return {o["Key"][len(full):]: o["Size"] for page in pages for o in page.get("Contents", [])}

        return self._retry(f"list {prefix} in", list_all)

    def list_keys(self, prefix: str) -> list[str]:
        """Every key under prefix, relative to it."""
        return list(self.list_sizes(prefix))

    def list_dirs(self, prefix: str) -> list[str]:
        full = self._key(prefix).rstrip("/") + "/"

        def list_prefixes() -> list[str]:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full, Delimiter="/")
            return sorted(p["Prefix"][len(full):].rstrip("/") for page in pages for p in page.get("CommonPrefixes", []))

        return self._retry(f"list {prefix} in", list_prefixes)

    def delete(self, key: str) -> None:
        self._retry(f"delete {key} from", lambda: self.client.delete_object(Bucket=self.bucket, Key=self._key(key)))

    def delete_prefix(self, prefix: str) -> None:
        for rel in self.list_keys(prefix):
            self.delete(f"{prefix.rstrip('/')}/{rel}")


def open_storage(uri: str, endpoint: str | None = None, region: str | None = None) -> Storage:
    if uri.startswith("s3://"):
        return S3Storage(uri, endpoint, region)
    return LocalStorage(Path(uri.removeprefix("file://")))


# --- checkpoints -------------------------------------------------------------------------------


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


# --- model and data locations ------------------------------------------------------------------


def resolve_uri(uri: str, base_dir: Path | None = None, endpoint: str | None = None, region: str | None = None) -> Path:
    """A local path for a model or data URI, downloading s3:// and hf:// into the local cache.

    pkg://package/file is a file shipped in an installed Python package (the quickstart's GGUF);
    relative paths are relative to base_dir (the manifest's directory).
    """
    if uri.startswith("pkg://"):
        package, _, rel = uri.removeprefix("pkg://").partition("/")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"{uri}: Python package {package!r} is not installed")
        path = Path(list(spec.submodule_search_locations)[0]) / rel
        if not path.exists():
            raise FileNotFoundError(f"{uri}: {path} does not exist")
        return path
    if uri.startswith("s3://"):
        return _download_s3(uri, endpoint, region)
    if uri.startswith("hf://"):
        return _download_hf(uri)
    path = Path(uri.removeprefix("file://"))
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not path.exists():
        raise FileNotFoundError(f"{uri}: {path} does not exist")
    return path.resolve()


def _download_hf(uri: str) -> Path:
    """hf://org/name is a model repository; hf://org/name/path/file.jsonl is a file of a dataset repository."""
    from huggingface_hub import hf_hub_download, snapshot_download

    org, _, rest = uri.removeprefix("hf://").partition("/")
    name, _, filename = rest.partition("/")
    token = os.environ.get("HF_TOKEN")
    try:
        if filename:
            return Path(hf_hub_download(f"{org}/{name}", filename, repo_type="dataset", token=token))
        return Path(snapshot_download(f"{org}/{name}", token=token))
    except Exception as err:  # noqa: BLE001 - offline, unknown repo, gated: all mean "cannot get it"
        raise FileNotFoundError(
            f"{uri}: cannot download from the Hugging Face hub ({type(err).__name__}: {err}); "
            "use s3:// or a path where the hub is unreachable"
        ) from err


def _download_s3(uri: str, endpoint: str | None, region: str | None, workers: int = 8) -> Path:
    """Download an object or a whole prefix in parallel into the cache; unchanged objects are reused."""
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    store = S3Storage(f"s3://{bucket}", endpoint, region)
    target = cache_root() / "s3" / bucket / key
    size = _object_size(store, key) if key and not key.endswith("/") else None
    if size is not None:
        if not (target.is_file() and target.stat().st_size == size):
            store.get_file(key, target)
        return target
    if not download_prefix(store, key, target, workers):
        raise FileNotFoundError(f"{uri}: no such object or prefix")
    return target


def download_prefix(store: "S3Storage", prefix: str, target: Path, workers: int = 8) -> dict[str, int]:
    """Every object under prefix into target, in parallel; files already there with the listed size
    are kept (a restarted download resumes). Returns {relative path: size}; empty when nothing is there.
    A key that would land outside target (`..`) is refused before anything is written."""
    prefix = prefix.strip("/")
    sizes = {rel: n for rel, n in store.list_sizes(prefix).items() if rel and not rel.endswith("/")}
    root = target.resolve()
    for rel in sizes:
        if not (root / rel).resolve().is_relative_to(root):
            raise ValueError(f"object key {rel!r} would be written outside {target}")

    def fetch(rel: str) -> None:
        dest = root / rel
        if not (dest.is_file() and dest.stat().st_size == sizes[rel]):
            store.get_file(f"{prefix}/{rel}" if prefix else rel, dest)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(fetch, sizes))
    return sizes


def _object_size(store: S3Storage, key: str) -> int | None:
    from botocore.exceptions import ClientError

    def head() -> int | None:
        try:
            return store.client.head_object(Bucket=store.bucket, Key=key)["ContentLength"]
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in {"NoSuchKey", "404", "NotFound"}:
                return None
            raise

    return with_retries(f"head s3://{store.bucket}/{key}", head, store.RETRY_DEADLINE_S)
