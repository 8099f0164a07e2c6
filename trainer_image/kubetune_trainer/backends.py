"""Where a run keeps its files: a local directory or s3://, behind one small interface.

S3 calls are retried with exponential backoff: a storage outage slows the run, it does
not kill it. A store that only reads sources (a download) may be stopped by SIGTERM
during its backoff; the run's own store never is (its last upload is the checkpoint).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

from . import stop

log = logging.getLogger(__name__)

T = TypeVar("T")


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


def with_retries(what: str, fn: Callable[[], T], deadline_s: float, first_delay_s: float = 0.5, max_delay_s: float = 15.0,
                 phase: str | None = None) -> T:
    """Call fn, retrying transient errors with exponential backoff until deadline_s have passed.

    With `phase`, a SIGTERM ends the backoff at once (stop.Preempted): a download from a store
    that is down must not keep a stopping pod until SIGKILL. Checkpoint uploads pass no phase:
    the last checkpoint is exactly what a stopping trainer still has to write."""
    start, delay = time.monotonic(), first_delay_s
    while True:
        try:
            return fn()
        except Exception as err:  # noqa: BLE001 - filtered by _transient
            if not _transient(err) or time.monotonic() - start + delay > deadline_s:
                raise
            log.warning("%s failed (%s); retrying in %.1fs", what, type(err).__name__, delay)
            if phase is None:
                time.sleep(delay)
            else:
                stop.sleep(delay, phase)
            delay = min(delay * 2, max_delay_s)


class S3Storage(Storage):
    # Long enough to ride out a store restart or a network blip; a checkpoint
    # upload runs in the background, so waiting costs no training time.
    RETRY_DEADLINE_S = float(os.environ.get("KUBETUNE_S3_RETRY_DEADLINE_S", "600"))

    def __init__(self, uri: str, endpoint: str | None = None, region: str | None = None, phase: str | None = None):
        """`phase`: this store only reads sources (a download), so a SIGTERM may cut its retries short."""
        import boto3
        from botocore.config import Config

        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        self.bucket, self.prefix, self.phase = bucket, prefix.strip("/"), phase
        # Short timeouts and no hidden botocore retries: with_retries owns the policy.
        config = Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 1, "mode": "standard"})
        self.client = boto3.client("s3", endpoint_url=endpoint, region_name=region or "us-east-1", config=config)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{self._key(key)}".rstrip("/")

    def _retry(self, what: str, fn: Callable[[], T]) -> T:
        return with_retries(f"{what} {self.uri()}", fn, self.RETRY_DEADLINE_S, phase=self.phase)

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
