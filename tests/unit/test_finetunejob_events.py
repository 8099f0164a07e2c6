"""The FineTuneJob controller without kopf's create/update/resume handlers: which watch events
reconcile (reconcile_trigger), what a stream of events does to a FakeKube cluster, and the
retries that replace kopf's (finetunejob/handlers.py, finetunejob/retries.py)."""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import threading

import kopf
import pytest
from kubernetes.client.rest import ApiException

from kubetune.api.resources import FINETUNEJOB
from kubetune.context import Context
from kubetune.finetunejob import handlers
from kubetune.finetunejob.handlers import on_finetunejob_event, reconcile_trigger
from kubetune.finetunejob.retries import RetryQueue
from kubetune.k8s import Rejected
from kubetune.settings import OperatorSettings
from tests.unit.fake_kube import FakeKube

pytestmark = pytest.mark.unit

LOG = logging.getLogger("test")
NS, NAME = "team-a", "bot"


def body(generation: int = 1, status: dict | None = None, **meta) -> dict:
    return {"apiVersion": FINETUNEJOB.api_version, "kind": FINETUNEJOB.kind,
            "metadata": {"name": NAME, "namespace": NS, "uid": "u1", "generation": generation, **meta},
            "spec": {}, "status": status or {}}


def ignored_at(generation: int) -> dict:
    return {"type": "SpecApplied", "status": "False", "reason": "SpecChangeIgnored", "observedGeneration": generation}


@pytest.mark.parametrize(("event", "ftj", "acted", "want"), [
    ("ADDED", body(), None, "create"),
    (None, body(), None, "create"),  # made while the operator was down
    ("MODIFIED", body(), 1, None),  # a late event from before this process's own status write
    ("MODIFIED", body(status={"phase": "Pending", "observedGeneration": 1}), 1, None),
    ("MODIFIED", body(2, {"phase": "Running", "observedGeneration": 1}), 1, "update"),
    ("MODIFIED", body(2, {"phase": "Running", "observedGeneration": 1}), None, "update"),
    # An ignored edit is handled once: the condition records the generation left unapplied.
    ("MODIFIED", body(2, {"phase": "Running", "observedGeneration": 1, "conditions": [ignored_at(2)]}), None, "resume"),
    ("MODIFIED", body(2, {"phase": "Running", "observedGeneration": 1, "conditions": [ignored_at(2)]}), 2, None),
    ("MODIFIED", body(3, {"phase": "Running", "observedGeneration": 1, "conditions": [ignored_at(2)]}), 2, "update"),
    (None, body(status={"phase": "Running", "observedGeneration": 1}), None, "resume"),
    (None, body(status={"phase": "Succeeded", "observedGeneration": 1}), None, None),  # nothing left to converge
    (None, body(2, {"phase": "Failed", "observedGeneration": 1}), None, "update"),  # a fixed spec is retried
    ("MODIFIED", body(status={"phase": "Running", "observedGeneration": 1, "progress": {"step": 3}}), 1, None),
    ("MODIFIED", body(status={"phase": "Validating", "observedGeneration": 1, "progress": {"step": 3}}), 1, "progress"),
    ("MODIFIED", body(status={"phase": "Validating", "observedGeneration": 1}), 1, None),
    ("DELETED", body(), None, None),
    ("MODIFIED", body(deletionTimestamp="2026-12-01T00:00:00Z"), None, None),
])
def test_which_events_reconcile(event, ftj, acted, want):
    assert reconcile_trigger(event, ftj, acted) == want


# -- a stream of events against a FakeKube -------------------------------------------------------

SPEC = {"baseModel": {"uri": "s3://m/base"}, "dataset": {"train": "s3://d/train.jsonl"}, "storage": {"uri": "s3://runs"}}


def new_ftj(kube: FakeKube, **spec) -> dict:
    """As created by a user: no status yet."""
    fresh = {key: value for key, value in body().items() if key != "status"}
    return kube.put({**fresh, "spec": {**copy.deepcopy(SPEC), **spec}})


class Operator:
    """The handler as kopf calls it, with a fresh Context per (re)start; counts reconciles."""

    def __init__(self, kube: FakeKube, monkeypatch: pytest.MonkeyPatch):
        self.kube, self.triggers = kube, []
        self.ctx = Context(kube=kube, settings=OperatorSettings())
        real = handlers.reconcile

        def counted(ctx, ftj, logger, **kwargs):
            self.triggers.append(ftj["metadata"]["generation"])
            return real(ctx, ftj, logger, **kwargs)
        monkeypatch.setattr(handlers, "reconcile", counted)

    def deliver(self, event: str | None, obj: dict) -> None:
        on_finetunejob_event(type=event, body=kopf.Body(copy.deepcopy(obj)), memo=kopf.Memo(ctx=self.ctx), logger=LOG)

    def stored(self) -> dict:
        return self.kube.get("", FINETUNEJOB.kind, NS, NAME)


def writes(kube: FakeKube) -> int:
    return max(int(o["metadata"]["resourceVersion"]) for o in kube.objects.values())


def edit_spec(kube: FakeKube, **changes) -> dict:
    stored = kube.objects[(FINETUNEJOB.kind, NS, NAME)]
    stored["spec"].update(changes)
    stored["metadata"]["generation"] += 1
    return kube.get("", FINETUNEJOB.kind, NS, NAME)


def reasons(kube: FakeKube) -> list[str]:
    return [reason for _, reason, _ in kube.events]


def test_a_create_reconciles_once_and_late_or_own_events_do_not_repeat_it(monkeypatch):
    kube = FakeKube()
    created = new_ftj(kube)
    op = Operator(kube, monkeypatch)
    op.deliver("ADDED", created)
    assert kube.get("batch/v1", "Job", NS, f"{NAME}-train") is not None
    assert op.stored()["status"]["observedGeneration"] == 1 and reasons(kube) == ["Pending"]
    after = writes(kube)
    op.deliver("MODIFIED", created)  # queued before the status write: same generation, already acted on
    op.deliver("MODIFIED", op.stored())  # the operator's own status write
    assert op.triggers == [1] and writes(kube) == after and reasons(kube) == ["Pending"]


def test_an_ignored_edit_names_its_fields_in_one_event_across_restarts(monkeypatch):
    kube = FakeKube()
    op = Operator(kube, monkeypatch)
    op.deliver("ADDED", new_ftj(kube))
    edited = edit_spec(kube, hyperparameters={"learningRate": 0.001}, suspend=False)
    op.deliver("MODIFIED", edited)
    status = op.stored()["status"]
    applied = next(c for c in status["conditions"] if c["type"] == "SpecApplied")
    assert (status["observedGeneration"], applied["observedGeneration"]) == (1, 2)
    assert "(spec.hyperparameters.learningRate changed)" in applied["message"], "suspend is applied, not listed"
    ignored = [m for _, reason, m in kube.events if reason == "SpecChangeIgnored"]
    assert len(ignored) == 1 and "spec.hyperparameters.learningRate" in ignored[0]
    op.deliver("MODIFIED", op.stored())  # its own status write
    kube.objects[("Job", NS, f"{NAME}-train")]["status"] = {"active": 1, "ready": 1}  # the trainer starts
    before = op.stored()["status"]
    handlers.reconcile_or_retry(op.ctx, op.stored(), LOG, "job")
    assert op.stored()["status"]["phase"] != before["phase"], "a status change with the edit still unapplied"
    restarted = Operator(kube, monkeypatch)
    restarted.deliver(None, op.stored())  # the startup listing: reconciled ("resume"), no second Event
    assert restarted.triggers == [2]
    assert reasons(kube).count("SpecChangeIgnored") == 1
    # A second edit is a new generation left unapplied: one more Event.
    op.deliver("MODIFIED", edit_spec(kube, images={"trainer": "registry.corp/kubetune/trainer:2"}))
    last = [m for _, reason, m in kube.events if reason == "SpecChangeIgnored"][-1]
    assert reasons(kube).count("SpecChangeIgnored") == 2 and "spec.images.trainer" in last
    assert "spec.hyperparameters.learningRate" in last, "the Job still runs without either edit"


def test_the_job_records_the_spec_it_was_built_from(monkeypatch):
    kube = FakeKube()
    Operator(kube, monkeypatch).deliver("ADDED", new_ftj(kube, suspend=True))
    job = kube.get("batch/v1", "Job", NS, f"{NAME}-train")
    built_from = json.loads(job["metadata"]["annotations"]["kubetune.io/built-from-spec"])
    assert built_from == SPEC, "without suspend (applied to a running Job) and without defaults"


# -- retries ---------------------------------------------------------------------------------------

def busy() -> ApiException:
    return ApiException(status=429, reason="Too Many Requests")


class LoopThread:
    """A running event loop in a thread, as kopf's is while handlers run in its executor."""

    def __enter__(self) -> asyncio.AbstractEventLoop:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        return self.loop

    def __exit__(self, *_) -> None:
        async def drain() -> None:  # retries in flight finish before the loop stops
            await asyncio.gather(*(t for t in asyncio.all_tasks() if t is not asyncio.current_task()))
        asyncio.run_coroutine_threadsafe(drain(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def test_a_failed_reconcile_is_retried_on_the_loop_until_it_passes(monkeypatch):
    kube = FakeKube()
    new_ftj(kube)
    real_create = kube.create_if_absent
    failures = iter([busy(), busy()])

    def flaky(obj):
        if obj["kind"] == "Job" and (err := next(failures, None)) is not None:
            raise err
        return real_create(obj)
    monkeypatch.setattr(kube, "create_if_absent", flaky)
    op = Operator(kube, monkeypatch)
    passed = threading.Event()
    op.ctx.retries._delay = lambda attempt, err: 0.01 * (attempt + 1)
    with LoopThread() as loop:
        def run(key: str) -> None:
            handlers.reconcile_stored(op.ctx, key, LOG, "retry")
            if not op.ctx.retries.pending():
                passed.set()
        op.ctx.retries.start(loop, run)
        op.deliver("ADDED", op.stored())
        assert op.ctx.retries.pending() == {f"{NS}/{NAME}": 1}
        assert passed.wait(5), "retried until the Job was created"
    assert len(op.triggers) == 3 and kube.get("batch/v1", "Job", NS, f"{NAME}-train") is not None
    assert op.ctx.acted_generations == {"u1": 1}


def test_retries_stop_at_the_limit():
    calls, gave_up = [], threading.Event()
    retries = RetryQueue(limit=3, delay=lambda attempt, err: 0.01)
    with LoopThread() as loop:
        def run(key: str) -> None:
            calls.append(key)
            if retries.failed(key, busy()) is None:
                gave_up.set()
        retries.start(loop, run)
        assert retries.failed("ns/a", busy()) == 0.01
        assert gave_up.wait(5)
    assert calls == ["ns/a"] * 3 and retries.pending() == {}


def test_a_success_elsewhere_cancels_the_pending_retry():
    calls: list[str] = []
    retries = RetryQueue(delay=lambda attempt, err: 0.3)
    with LoopThread() as loop:
        retries.start(loop, calls.append)
        retries.failed("ns/a", busy())
        retries.failed("ns/b", busy())
        retries.done("ns/a")  # e.g. a Job event reconciled it meanwhile
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0.6), loop).result(5)
    assert calls == ["ns/b"]


def test_a_refused_create_waits_for_its_retry_not_for_its_own_status_write(monkeypatch):
    """The refusal is written to the status (Stalled, QuotaExceeded); that write's event must not
    reconcile again at once: the retry's backoff is what paces the attempts."""
    kube = FakeKube()
    new_ftj(kube)
    real_create = kube.create_if_absent

    def quota(obj):
        if obj["kind"] == "Job":
            raise Rejected(ApiException(status=403, reason="Forbidden"), "Job", obj["metadata"]["name"])
        return real_create(obj)
    monkeypatch.setattr(kube, "create_if_absent", quota)
    op = Operator(kube, monkeypatch)
    op.ctx.retries._delay = lambda attempt, err: 60.0
    with LoopThread() as loop:
        op.ctx.retries.start(loop, lambda key: None)
        op.deliver("ADDED", op.stored())
        assert op.stored()["status"]["phase"] == "Pending" and "Forbidden" in json.dumps(op.stored()["status"])
        op.deliver("MODIFIED", op.stored())
        assert op.triggers == [1] and op.ctx.retries.pending() == {f"{NS}/{NAME}": 1}
