"""Model and data locations: a path, pkg://, s3:// or hf://, made local (downloads go to the cache)."""

from __future__ import annotations

import importlib.util
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import stop
from .backends import S3Storage, with_retries


def cache_root() -> Path:
    return Path(os.environ.get("KUBETUNE_CACHE", Path.home() / ".cache" / "kubetune"))


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
    store = S3Storage(f"s3://{bucket}", endpoint, region, phase="download")
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
        if store.phase:
            stop.check(store.phase)
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

    return with_retries(f"head s3://{store.bucket}/{key}", head, store.RETRY_DEADLINE_S, phase=store.phase)
