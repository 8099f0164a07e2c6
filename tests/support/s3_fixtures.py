"""A real S3-compatible server for tests: moto's standalone server in its own process.

It is a separate process (not moto's in-process mocks) so that code under test
talks real HTTP to it, and so fault tests can `stop()` it mid-upload and
`start()` it again on the same port. moto keeps objects in memory: a restart
comes back empty (buckets included), so fault tests must re-create the bucket
(`s3_server.start(); s3_bucket...` or `ensure_bucket`) before checking resume.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import requests
from botocore.config import Config

from .procs import ManagedProcess, free_port, wait_for

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "kubetune-test",
    "AWS_SECRET_ACCESS_KEY": "kubetune-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class S3Server:
    def __init__(self, log_dir: Path, port: int | None = None):
        self.port = port or free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self.process = ManagedProcess(
            "moto-s3", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)], log_dir
        )

    @property
    def env(self) -> dict[str, str]:
        """Environment for a process (trainer, operator) that should use this server."""
        return {**CREDENTIALS, "AWS_ENDPOINT_URL_S3": self.endpoint_url, "AWS_ENDPOINT_URL": self.endpoint_url}

    def start(self, timeout: float = 30) -> "S3Server":
        self.process.start()

        def answers() -> bool:
            self.process.check_alive()
            # moto's own API answers once the server is up (no S3 auth needed).
            return requests.get(f"{self.endpoint_url}/moto-api/data.json", timeout=2).status_code == 200

        wait_for(answers, timeout, f"moto S3 server on {self.endpoint_url}", on_timeout=self.process.describe)
        return self

    def stop(self) -> None:
        """Stop the server; requests fail with connection errors until start()."""
        self.process.stop()

    @property
    def running(self) -> bool:
        return self.process.running

    def client(self, **config):
        """A boto3 S3 client for this server (path-style addressing, quick failures)."""
        cfg = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2},
                     connect_timeout=2, read_timeout=10, **config)
        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"], config=cfg,
        )

    def ensure_bucket(self, name: str) -> str:
        s3 = self.client()
        if name not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
            s3.create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    log_dir = Path(tempfile.mkdtemp(prefix="kubetune-s3-"))
    server = S3Server(log_dir).start()
    yield server
    server.stop()
    shutil.rmtree(log_dir, ignore_errors=True)


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A fresh, empty bucket for one test."""
    return s3_server.ensure_bucket(f"test-{uuid.uuid4().hex[:12]}")
