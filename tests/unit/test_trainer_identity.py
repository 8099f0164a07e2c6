"""The namespace's trainer identity: made once per namespace, re-read (not re-written) later,
never adopted from a stranger; and what a FineTuneJob create costs: no per-job RBAC, and no list
of the namespace's pods for a first Job."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

import pytest

from kubetune.api.resources import FINETUNEJOB
from kubetune.builders.trainer import TRAINER_ACCOUNT
from kubetune.context import Context
from kubetune.finetunejob import identity
from kubetune.finetunejob.identity import ensure_trainer_identity
from kubetune.finetunejob.reconcile import reconcile
from kubetune.settings import OperatorSettings
from tests.unit.fake_kube import FakeKube

pytestmark = pytest.mark.unit

NS = "team-a"
KINDS = {"ServiceAccount", "Role", "RoleBinding"}


class CountingKube(FakeKube):
    """Counts the calls that reach the apiserver, by verb and kind."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()
        self.latency = 0.0  # seconds each read takes, so that concurrent callers overlap

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict | None:
        with self._lock:
            self.calls["get", kind] += 1
        time.sleep(self.latency)
        return super().get(api_version, kind, namespace, name)

    def list(self, api_version: str, kind: str, namespace: str, label_selector: str) -> list[dict]:
        with self._lock:
            self.calls["list", kind] += 1
        return super().list(api_version, kind, namespace, label_selector)

    def put(self, obj: dict) -> dict:
        with self._lock:
            self.calls["create", obj["kind"]] += 1
        return super().put(obj)

    def writes(self, kinds: set[str] = KINDS) -> int:
        return sum(n for (verb, kind), n in self.calls.items() if verb == "create" and kind in kinds)


def context(kube: FakeKube) -> Context:
    return Context(kube=kube, settings=OperatorSettings(trainer_image="trainer:1", default_storage_uri="s3://runs"))


def test_made_once_then_remembered_then_reread_without_writes(monkeypatch: pytest.MonkeyPatch):
    kube, clock = CountingKube(), [1000.0]
    monkeypatch.setattr(identity.time, "monotonic", lambda: clock[0])
    ctx = context(kube)
    assert ensure_trainer_identity(ctx, NS) is None
    assert {k for (k, _, n) in kube.objects if n == TRAINER_ACCOUNT} == KINDS and kube.writes() == 3
    calls = sum(kube.calls.values())
    assert ensure_trainer_identity(ctx, NS) is None
    assert sum(kube.calls.values()) == calls  # remembered: no API call at all
    clock[0] += identity.IDENTITY_RECHECK_S + 1
    del kube.objects[("Role", NS, TRAINER_ACCOUNT)]  # deleted by hand meanwhile
    assert ensure_trainer_identity(ctx, NS) is None
    assert kube.writes() == 4 and ("Role", NS, TRAINER_ACCOUNT) in kube.objects  # only the missing one


def test_a_restarted_operator_reads_instead_of_writing():
    kube = CountingKube()
    ensure_trainer_identity(context(kube), NS)
    ensure_trainer_identity(context(kube), NS)  # a new Context: nothing remembered
    assert kube.writes() == 3


def test_an_account_of_that_name_made_by_someone_else_is_not_adopted():
    kube = CountingKube()
    kube.put({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": TRAINER_ACCOUNT, "namespace": NS}})
    ctx = context(kube)
    blocker = ensure_trainer_identity(ctx, NS)
    assert blocker is not None and blocker.reason == "NameConflict"
    assert f"ServiceAccount {TRAINER_ACCOUNT} already exists in {NS}" in blocker.message
    assert NS not in ctx.trainer_identities  # looked at again next time
    del kube.objects[("ServiceAccount", NS, TRAINER_ACCOUNT)]
    assert ensure_trainer_identity(ctx, NS) is None


def test_a_burst_in_a_new_namespace_makes_three_objects():
    kube = CountingKube()
    kube.latency = 0.02
    ctx = context(kube)
    threads = [threading.Thread(target=ensure_trainer_identity, args=(ctx, NS)) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # One pass did the work (its read, and the fake's create_if_absent's); the others waited for it.
    assert kube.writes() == 3 and kube.calls["get", "ServiceAccount"] == 2


def test_creating_finetunejobs_writes_no_per_job_rbac():
    kube = CountingKube()
    ctx = context(kube)
    for i in range(3):
        ftj = kube.put({"apiVersion": FINETUNEJOB.api_version, "kind": FINETUNEJOB.kind,
                        "metadata": {"name": f"job-{i}", "namespace": NS, "uid": f"ftj-{i}", "generation": 1},
                        "spec": {"baseModel": {"uri": "s3://m/base"}, "dataset": {"train": "s3://d/train.jsonl"}}})
        status = reconcile(ctx, ftj, logging.getLogger("test"), fresh=True)
        assert status.trainer_job == f"job-{i}-train"
        job = kube.get("batch/v1", "Job", NS, f"job-{i}-train")
        assert job["spec"]["template"]["spec"]["serviceAccountName"] == TRAINER_ACCOUNT
    assert kube.writes() == 3  # the identity, once for the namespace
    assert kube.calls["create", "Job"] == 3
    assert kube.calls["list", "Pod"] == 0  # a first Job: no earlier pods of this run can exist


def _ftj(kube: FakeKube, name: str, **spec) -> dict:
    return kube.put({"apiVersion": FINETUNEJOB.api_version, "kind": FINETUNEJOB.kind,
                     "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "generation": 1},
                     "spec": {"baseModel": {"uri": "s3://m/base"}, "dataset": {"train": "s3://d/train.jsonl"}, **spec}})


def test_a_replacement_job_or_a_resumed_run_waits_for_old_pods():
    kube = CountingKube()
    ctx = context(kube)
    old_pod = {"apiVersion": "v1", "kind": "Pod", "status": {"phase": "Running"}, "metadata": {
        "namespace": NS, "labels": {"batch.kubernetes.io/job-name": "again-train"}}}
    kube.put({**old_pod, "metadata": {**old_pod["metadata"], "name": "again-train-abcde"}})
    # Continuing an earlier run of the same name: its pods may still write that run.
    status = reconcile(ctx, _ftj(kube, "again", resumeFromRun="0b5e6c1e-4a4d-4f5e-9d43-2c9a7f1e8b20"), logging.getLogger("test"), fresh=True)
    assert "again-train-abcde" in (status.message or "")
    assert kube.get("batch/v1", "Job", NS, "again-train") is None
    # Not the first pass (a Job deleted by hand, an operator restart): looked at too.
    del kube.objects[("FineTuneJob", NS, "again")]
    status = reconcile(ctx, _ftj(kube, "again"), logging.getLogger("test"))
    assert "again-train-abcde" in (status.message or "") and kube.get("batch/v1", "Job", NS, "again-train") is None
