"""Checkpoints and outputs in a real S3-compatible server (outages: test_store_outage.py, on a server that keeps its data)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .tiny import write_job

pytestmark = pytest.mark.trainer


def manifests(client, bucket: str, prefix: str) -> list[str]:
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(o["Key"] for p in pages for o in p.get("Contents", []) if o["Key"].endswith("MANIFEST.json"))
    except Exception:  # noqa: BLE001 - the server may be down or the bucket not yet re-created
        return []


def run_trainer(job, env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kubetune_trainer", "train", "-f", str(job)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **env})


def test_checkpoints_and_adapter_land_in_s3_and_data_comes_from_s3(s3_server, s3_bucket, tiny_model, tiny_data, tmp_path):
    client = s3_server.client()
    train, val = tiny_data
    client.upload_file(str(train), s3_bucket, "data/train.jsonl")
    job = write_job(tmp_path / "job.yaml", tiny_model, train, val, maxSteps=4,
                    storage={"uri": f"s3://{s3_bucket}/runs", "endpoint": s3_server.endpoint_url,
                             "checkpointIntervalSteps": 2})
    job.write_text(job.read_text().replace(str(train), f"s3://{s3_bucket}/data/train.jsonl"))
    proc = run_trainer(job, s3_server.env)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    # The run root is <storage.uri>/<namespace>/<name>, as the operator lays it out.
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket, Prefix="runs/default/tiny/")["Contents"]}
    assert "runs/default/tiny/adapter/adapter_model.safetensors" in keys
    assert "runs/default/tiny/reports/evaluation.json" in keys and "runs/default/tiny/metrics.jsonl" in keys
    # keep 2 (checkpointsKept default): the newest plus the best-eval one, each with its manifest.
    kept = manifests(client, s3_bucket, "runs/default/tiny/checkpoints/")
    assert len(kept) == 2 and "runs/default/tiny/checkpoints/step-00000004/MANIFEST.json" in kept
    assert f"s3://{s3_bucket}/runs/default/tiny/adapter" in output
