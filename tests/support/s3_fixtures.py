"""A real S3-compatible server for tests: moto's standalone server in its own process.

It is a separate process (not moto's in-process mocks) so that code under test
talks real HTTP to it, and so fault tests can `stop()` it mid-upload and
`start()` it again on the same port. moto keeps objects in memory: a restart
comes back empty (buckets included), so fault tests must re-create the bucket
(`s3_server.start(); s3_bucket...` or `ensure_bucket`) before checking resume.

`VersityServer` (fixture `persistent_s3`) is versitygw, an S3 gateway over a
POSIX directory: buckets, objects and unfinished multipart uploads survive a
SIGKILL and a restart on the same port and data directory. Use it wherever a
test restarts the store and then reads back what was written before.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
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


# --- versitygw: an S3 store that keeps its data across restarts ---------------------------------

REPO_ROOT = Path(__file__).resolve().parents[2]
VERSITYGW_ENV = "KUBETUNE_VERSITYGW"  # exported by hack/test.sh (path of the built binary)


def versitygw_binary() -> Path:
    """The versitygw binary: $KUBETUNE_VERSITYGW, else whatever hack/versitygw.sh builds or finds in the cache."""
    path = os.environ.get(VERSITYGW_ENV)
    if not path:
        done = subprocess.run(["bash", str(REPO_ROOT / "hack" / "versitygw.sh")], stdout=subprocess.PIPE,
                              text=True, check=True)
        path = done.stdout.strip().splitlines()[-1]
    binary = Path(path)
    if not os.access(binary, os.X_OK):
        raise FileNotFoundError(f"{VERSITYGW_ENV}={binary}: not an executable versitygw binary")
    return binary


def check_user_xattrs(directory: Path) -> None:
    """versitygw keeps object metadata (ETag, content type, checksums) in user.* xattrs."""
    probe = directory / ".xattr-probe"
    probe.touch()
    try:
        os.setxattr(probe, "user.kubetune-probe", b"1")
    except OSError as err:
        raise RuntimeError(f"versitygw data dir {directory}: the filesystem has no user xattrs ({err}); "
                           "use ext4 or tmpfs") from err
    finally:
        probe.unlink()


class VersityServer(S3Server):
    """versitygw serving `data_dir` on a fixed loopback port: restarts keep every bucket and object.

    stop() is graceful (SIGTERM), kill() is SIGKILL (no chance to flush or clean up), and
    start() after either comes back on the same port with the same data directory.
    """

    def __init__(self, data_dir: Path, log_dir: Path, port: int | None = None, binary: Path | None = None):
        self.port = port or free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        check_user_xattrs(self.data_dir)
        env = {**os.environ, "ROOT_ACCESS_KEY_ID": CREDENTIALS["AWS_ACCESS_KEY_ID"],
               "ROOT_SECRET_ACCESS_KEY": CREDENTIALS["AWS_SECRET_ACCESS_KEY"]}
        argv = [binary or versitygw_binary(), "--port", f"127.0.0.1:{self.port}", "--health", "/health", "--quiet",
                "posix", self.data_dir]
        self.process = ManagedProcess("versitygw", argv, log_dir, env=env)

    def start(self, timeout: float = 30) -> "VersityServer":
        self.process.start()

        def healthy() -> bool:
            self.process.check_alive()
            return requests.get(f"{self.endpoint_url}/health", timeout=2).status_code == 200

        wait_for(healthy, timeout, f"versitygw on {self.endpoint_url}", on_timeout=self.process.describe)
        return self

    def kill(self) -> None:
        """SIGKILL, as a crashed or OOM-killed store dies; in-flight requests are cut off."""
        proc = self.process.proc
        if proc is None:
            return
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        self.process.proc = None

    def restart(self, kill: bool = True) -> "VersityServer":
        (self.kill if kill else self.stop)()
        return self.start()


@pytest.fixture
def persistent_s3(tmp_path: Path) -> Iterator[VersityServer]:
    """A versitygw server for one test, its data under tmp_path/versitygw (ext4 or tmpfs: user xattrs)."""
    server = VersityServer(tmp_path / "versitygw", tmp_path).start()
    try:
        yield server
    finally:
        server.stop()


def create_bucket(server: S3Server, name: str | None = None) -> str:
    """Create a bucket (a fresh random name by default) and return its name."""
    name = name or f"test-{uuid.uuid4().hex[:12]}"
    server.client().create_bucket(Bucket=name)
    return name
