"""The S3 server the trainer tests use: real HTTP, and it can be stopped and restarted.

moto keeps everything in memory, so a restart loses buckets and objects; fault
tests only rely on the server answering again on the same endpoint.
"""

from __future__ import annotations

import botocore.exceptions
import pytest

pytestmark = pytest.mark.integration


def test_put_get_round_trip(s3_server, s3_bucket):
    s3 = s3_server.client()
    body = bytes(range(256)) * 1024  # binary, 256 KiB
    s3.put_object(Bucket=s3_bucket, Key="checkpoints/step-10/adapter.safetensors", Body=body)
    got = s3.get_object(Bucket=s3_bucket, Key="checkpoints/step-10/adapter.safetensors")["Body"].read()
    assert got == body
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix="checkpoints/")["Contents"]]
    assert keys == ["checkpoints/step-10/adapter.safetensors"]


def test_stop_makes_requests_fail_and_start_brings_the_endpoint_back(s3_server, s3_bucket):
    endpoint = s3_server.endpoint_url
    s3_server.client().put_object(Bucket=s3_bucket, Key="before", Body=b"x")
    s3_server.stop()
    try:
        with pytest.raises(botocore.exceptions.EndpointConnectionError):
            s3_server.client().head_bucket(Bucket=s3_bucket)
    finally:
        s3_server.start()  # other tests share the session server
    assert s3_server.endpoint_url == endpoint
    s3 = s3_server.client()
    # In-memory moto: the restart comes back empty; the endpoint works again.
    assert s3_bucket not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    s3_server.ensure_bucket(s3_bucket)
    s3.put_object(Bucket=s3_bucket, Key="after", Body=b"y")
    assert s3.get_object(Bucket=s3_bucket, Key="after")["Body"].read() == b"y"


def test_env_points_boto3_at_the_server(s3_server, s3_bucket, monkeypatch):
    import boto3

    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    # A client built only from the environment, as the trainer builds it.
    s3 = boto3.client("s3")
    s3.put_object(Bucket=s3_bucket, Key="env", Body=b"z")
    assert s3_server.client().get_object(Bucket=s3_bucket, Key="env")["Body"].read() == b"z"


def test_model_prefix_downloads_once_and_is_reused(s3_server, s3_bucket, tmp_path, monkeypatch):
    from kubetune_trainer.storage import resolve_uri

    monkeypatch.setenv("KUBETUNE_CACHE", str(tmp_path / "cache"))
    for k, v in s3_server.env.items():
        monkeypatch.setenv(k, v)
    client = s3_server.client()
    client.put_object(Bucket=s3_bucket, Key="models/tiny/config.json", Body=b"{}")
    client.put_object(Bucket=s3_bucket, Key="models/tiny/weights/model.safetensors", Body=b"x" * 1000)
    local = resolve_uri(f"s3://{s3_bucket}/models/tiny", endpoint=s3_server.endpoint_url)
    assert (local / "config.json").read_bytes() == b"{}"
    assert (local / "weights" / "model.safetensors").stat().st_size == 1000
    first = (local / "weights" / "model.safetensors").stat().st_mtime_ns
    # Unchanged objects (same size) are not fetched again; a changed one is.
    client.put_object(Bucket=s3_bucket, Key="models/tiny/config.json", Body=b'{"a": 1}')
    again = resolve_uri(f"s3://{s3_bucket}/models/tiny", endpoint=s3_server.endpoint_url)
    assert again == local
    assert (local / "weights" / "model.safetensors").stat().st_mtime_ns == first
    assert (local / "config.json").read_bytes() == b'{"a": 1}'
