"""Storage, in three parts; this module names them all for older imports.

- backends.py: the Storage interface, LocalStorage, S3Storage and its retry policy;
- checkpoints.py: the checkpoint protocol (manifest last), pruning, the background uploader;
- sources.py: model and data locations (path, pkg://, s3://, hf://) and the download cache.
"""

from .backends import LocalStorage, S3Storage, Storage, _transient, open_storage, with_retries
from .checkpoints import (
    CHECKPOINTS,
    MANIFEST,
    CheckpointInfo,
    CheckpointUploader,
    checkpoint_key,
    complete_checkpoints,
    download_checkpoint,
    prune_checkpoints,
    sha256_file,
    upload_checkpoint,
)
from .sources import cache_root, download_prefix, resolve_uri

__all__ = [
    "LocalStorage",
    "S3Storage",
    "Storage",
    "_transient",
    "open_storage",
    "with_retries",
    "CHECKPOINTS",
    "MANIFEST",
    "CheckpointInfo",
    "CheckpointUploader",
    "checkpoint_key",
    "complete_checkpoints",
    "download_checkpoint",
    "prune_checkpoints",
    "sha256_file",
    "upload_checkpoint",
    "cache_root",
    "download_prefix",
    "resolve_uri",
]
