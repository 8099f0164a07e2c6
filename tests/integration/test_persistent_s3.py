"""versitygw as the test bed's persistent S3 store: what survives kill -9, and what the trainer's storage relies on.

The trainer's storage layer (trainer_image/kubetune_trainer/storage.py) does not
use conditional writes: a checkpoint is complete when its MANIFEST.json exists,
so it relies on (1) a PUT cut off by a crash never leaving a partial object,
(2) ListObjectsV2 with delimiter and paging to find checkpoint directories,
(3) NoSuchKey for a missing manifest, (4) deletes, and (5) connection errors
while the store is down, so its retries can ride out a restart.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import botocore.exceptions
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from kubetune_trainer import storage as st
from tests.support.s3_fixtures import CREDENTIALS, VersityServer, create_bucket

pytestmark = pytest.mark.integration

MiB = 1 << 20


def keys(s3, bucket: str, prefix: str = "") -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]


def test_buckets_and_objects_survive_kill_9_and_restart(persistent_s3: VersityServer):
    bucket = create_bucket(persistent_s3)
    s3 = persistent_s3.client()
    body = bytes(range(256)) * 4096  # 1 MiB, binary
    etag = s3.put_object(Bucket=bucket, Key="checkpoints/step-00000005/optimizer.pt", Body=body)["ETag"]
    s3.put_object(Bucket=bucket, Key="metrics.jsonl", Body=b'{"step": 1}\n')
    endpoint = persistent_s3.endpoint_url

    persistent_s3.kill()
    with pytest.raises(botocore.exceptions.EndpointConnectionError):
        persistent_s3.client().head_bucket(Bucket=bucket)
    persistent_s3.start()

    assert persistent_s3.endpoint_url == endpoint
    s3 = persistent_s3.client()
    assert bucket in {b["Name"] for b in s3.list_buckets()["Buckets"]}
    assert keys(s3, bucket) == ["checkpoints/step-00000005/optimizer.pt", "metrics.jsonl"]
    got = s3.get_object(Bucket=bucket, Key="checkpoints/step-00000005/optimizer.pt")
    assert got["Body"].read() == body and got["ETag"] == etag


def test_half_finished_multipart_upload_is_not_an_object_after_restart(persistent_s3: VersityServer):
    bucket = create_bucket(persistent_s3)
    s3 = persistent_s3.client()
    key = "checkpoints/step-00000010/model.safetensors"
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    s3.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"a" * (5 * MiB))

    persistent_s3.kill()
    persistent_s3.start()

    s3 = persistent_s3.client()
    with pytest.raises(botocore.exceptions.ClientError) as err:
        s3.head_object(Bucket=bucket, Key=key)
    assert err.value.response["Error"]["Code"] in {"404", "NoSuchKey"}
    assert keys(s3, bucket) == []
    # The unfinished upload is still known (so it can be completed or aborted, as on AWS).
    assert [u["UploadId"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])] == [upload]
    s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def start_put_and_cut_it_off(server: VersityServer, bucket: str, key: str, size: int, sent: int) -> socket.socket:
    """Send a signed PUT that announces `size` bytes but sends only `sent`, as a client mid-upload."""
    body = b"x" * size  # signed in full (the signer hashes the payload), sent in part
    req = AWSRequest(method="PUT", url=f"{server.endpoint_url}/{bucket}/{key}", data=body,
                     headers={"Content-Length": str(size)})
    S3SigV4Auth(Credentials(CREDENTIALS["AWS_ACCESS_KEY_ID"], CREDENTIALS["AWS_SECRET_ACCESS_KEY"]), "s3",
                CREDENTIALS["AWS_DEFAULT_REGION"]).add_auth(req)
    url = urlsplit(server.endpoint_url)
    head = [f"PUT /{bucket}/{key} HTTP/1.1", f"Host: {url.netloc}"] + [f"{k}: {v}" for k, v in req.headers.items()]
    sock = socket.create_connection((url.hostname, url.port), timeout=5)
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body[:sent])
    return sock


def still_waiting_for_body(sock: socket.socket) -> bool:
    """No answer yet: the server accepted the request's signature and is reading the body."""
    sock.settimeout(0.5)
    try:
        sock.recv(1)  # an early answer (an error) or a closed connection
    except TimeoutError:
        return True
    return False


def test_put_cut_off_by_kill_9_leaves_no_partial_object(persistent_s3: VersityServer):
    """A manifest half-written when the store dies must not exist afterwards, and an old object stays whole."""
    bucket = create_bucket(persistent_s3)
    s3 = persistent_s3.client()
    s3.put_object(Bucket=bucket, Key="old", Body=b"old content")
    new = start_put_and_cut_it_off(persistent_s3, bucket, "checkpoints/step-00000005/MANIFEST.json", 4 * MiB, MiB)
    over = start_put_and_cut_it_off(persistent_s3, bucket, "old", 4 * MiB, MiB)
    time.sleep(1)  # the server has read what was sent and is waiting for the rest
    assert still_waiting_for_body(new) and still_waiting_for_body(over)
    persistent_s3.kill()
    new.close()
    over.close()
    persistent_s3.start()

    s3 = persistent_s3.client()
    assert keys(s3, bucket) == ["old"]
    assert s3.get_object(Bucket=bucket, Key="old")["Body"].read() == b"old content"


def test_checkpoint_protocol_of_the_trainer_storage_across_a_restart(persistent_s3: VersityServer, tmp_path: Path,
                                                                     monkeypatch):
    monkeypatch.setattr(st.S3Storage, "RETRY_DEADLINE_S", 30.0)  # fail in seconds, not minutes, if the store is broken
    bucket = create_bucket(persistent_s3)
    store = st.S3Storage(f"s3://{bucket}/runs/ns/job", persistent_s3.endpoint_url)
    store.client = persistent_s3.client()  # the test's credentials, not the environment's
    local = tmp_path / "checkpoint"
    (local / "sub").mkdir(parents=True)
    (local / "adapter_model.safetensors").write_bytes(b"w" * 1000)
    (local / "sub" / "rng_state.pth").write_bytes(b"r" * 10)
    for step in (5, 10, 15):
        st.upload_checkpoint(store, local, step, {"trainLoss": 1.0 / step})
    # A checkpoint whose upload was cut short: files, no manifest.
    store.put_file(local / "adapter_model.safetensors", "checkpoints/step-00000020/adapter_model.safetensors")
    assert store.get_bytes("checkpoints/step-00000020/MANIFEST.json") is None  # NoSuchKey → None

    persistent_s3.kill()
    persistent_s3.start()

    assert store.list_dirs("checkpoints") == [f"step-{s:08d}" for s in (5, 10, 15, 20)]
    assert [c.step for c in st.complete_checkpoints(store)] == [5, 10, 15]
    assert st.prune_checkpoints(store, keep_last=1, best_step=5) == [10]
    assert [c.step for c in st.complete_checkpoints(store)] == [5, 15]
    assert not any(k.startswith("step-00000010/") for k in store.list_keys("checkpoints"))
    latest = st.complete_checkpoints(store)[-1]
    got = st.download_checkpoint(store, latest, tmp_path / "resume")
    assert (got / "sub" / "rng_state.pth").read_bytes() == b"r" * 10
    assert latest.manifest["files"]["adapter_model.safetensors"]["sha256"] == hashlib.sha256(b"w" * 1000).hexdigest()


def test_listing_pages_in_byte_order_with_and_without_delimiter(persistent_s3: VersityServer):
    """storage.list_dirs / list_sizes page with continuation tokens once a prefix holds > 1000 keys."""
    bucket = create_bucket(persistent_s3)
    s3 = persistent_s3.client()
    steps = [f"checkpoints/step-{s:08d}" for s in (1, 2, 10, 100, 1000)]
    for prefix in steps:
        s3.put_object(Bucket=bucket, Key=f"{prefix}/MANIFEST.json", Body=b"{}")
    s3.put_object(Bucket=bucket, Key="checkpoints/step-00000002/a.bin", Body=b"a")
    paginator = s3.get_paginator("list_objects_v2")
    pages = list(paginator.paginate(Bucket=bucket, Prefix="checkpoints/", Delimiter="/",
                                    PaginationConfig={"PageSize": 2}))
    assert len(pages) == 3
    assert [p["Prefix"] for page in pages for p in page.get("CommonPrefixes", [])] == [f"{s}/" for s in steps]
    pages = list(paginator.paginate(Bucket=bucket, Prefix="checkpoints/", PaginationConfig={"PageSize": 2}))
    listed = [o["Key"] for page in pages for o in page.get("Contents", [])]
    assert listed == sorted(listed, key=str.encode) and len(listed) == 6


def test_storage_retries_ride_out_a_store_restart(persistent_s3: VersityServer, monkeypatch):
    bucket = create_bucket(persistent_s3)
    monkeypatch.setattr(st.S3Storage, "RETRY_DEADLINE_S", 60.0)
    store = st.S3Storage(f"s3://{bucket}/run", persistent_s3.endpoint_url)
    store.client = persistent_s3.client()
    persistent_s3.kill()
    with pytest.raises(botocore.exceptions.EndpointConnectionError) as err:
        store.client.head_bucket(Bucket=bucket)
    assert st._transient(err.value)  # a store that is down is worth retrying

    done: list[BaseException | None] = []

    def put() -> None:
        try:
            store.put_bytes(b'{"step": 3}', "checkpoints/step-00000003/MANIFEST.json")
            done.append(None)
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            done.append(e)

    writer = threading.Thread(target=put)
    writer.start()
    time.sleep(2)  # several failed attempts while the store is down
    assert not done, f"put gave up while the store was down: {done}"
    persistent_s3.start()
    writer.join(60)
    assert done == [None]
    assert store.get_json("checkpoints/step-00000003/MANIFEST.json") == {"step": 3}
