"""observedGeneration means "acted on": the digest a trainer Job carries decides whether the
current spec is the one running (finetunejob/reconcile.py, docs/design.md)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from kubetune.api import Condition, FineTuneJobSpec, FineTuneJobStatus
from kubetune.api.finetunejob import SPEC_DIGEST_ANNOTATION, changed_fields, spec_digest
from kubetune.finetunejob.reconcile import _acted_generation, _failed_for_spec, _with_spec_digest

pytestmark = pytest.mark.unit

BASE = {"baseModel": {"uri": "s3://m/x"}, "dataset": {"train": "s3://d/t.jsonl"}}


def spec(**extra) -> FineTuneJobSpec:
    return FineTuneJobSpec.model_validate({**BASE, **extra})


def job_built_from(s: FineTuneJobSpec) -> dict:
    return _with_spec_digest({"metadata": {"name": "j-train"}}, s)


def test_digest_ignores_suspend_and_defaults_but_not_other_fields():
    assert spec_digest(spec()) == spec_digest(spec(suspend=True)) == spec_digest(spec(method="qlora"))
    assert spec_digest(spec()) != spec_digest(spec(hyperparameters={"learningRate": 1e-3}))
    assert spec_digest(spec()) != spec_digest(spec(images={"trainer": "t:2"}))


def test_observed_generation_follows_the_spec_the_job_runs():
    running = FineTuneJobStatus(phase="Running", observed_generation=2)
    job = job_built_from(spec())
    assert _acted_generation(job, spec(suspend=True), running, 3, []) == 3, "suspend is applied"
    assert _acted_generation(job, spec(hyperparameters={"learningRate": 1e-3}), running, 3, []) == 2
    assert _acted_generation(job, spec(), running, 4, []) == 4, "an edit reverted is current again"
    assert _acted_generation({"metadata": {}}, spec(), running, 5, []) == 5, \
        "a Job from before the digest is taken as current"


def test_without_a_job_a_finished_job_keeps_its_generation_and_others_act():
    done = FineTuneJobStatus(phase="Succeeded", observed_generation=1)
    assert _acted_generation(None, spec(), done, 2, []) == 1
    assert _acted_generation(None, spec(), FineTuneJobStatus(phase="Pending", observed_generation=1), 2, []) == 2
    assert _acted_generation(None, spec(), FineTuneJobStatus(phase="Failed", observed_generation=1), 2,
                             ["spec.dataset.train: relative path"]) == 2, "a spec problem is re-evaluated"


def test_only_a_failure_for_the_spec_is_retried_after_an_edit():
    now = datetime.now(timezone.utc)

    def failed(reason: str) -> FineTuneJobStatus:
        return FineTuneJobStatus(phase="Failed", observed_generation=1, conditions=[
            Condition(type="Stalled", status="True", reason=reason, observed_generation=1, last_transition_time=now)])

    assert _failed_for_spec(failed("InvalidSpec"))
    assert not _failed_for_spec(failed("BackoffLimitExceeded"))
    assert not _failed_for_spec(FineTuneJobStatus(phase="Succeeded"))
    assert job_built_from(spec())["metadata"]["annotations"][SPEC_DIGEST_ANNOTATION] == spec_digest(spec())


def test_changed_fields_are_dotted_paths_into_sections_left_at_defaults():
    before = {"hyperparameters": {"epochs": 1}, "lora": {"targetModules": ["q"]}}
    after = {"hyperparameters": {"epochs": 2, "learningRate": 1e-3}, "lora": {"targetModules": ["k"]},
             "evaluation": {"maxSamples": 5}}
    assert changed_fields(before, after) == ["spec.evaluation.maxSamples", "spec.hyperparameters.epochs",
                                             "spec.hyperparameters.learningRate", "spec.lora.targetModules"]
    assert changed_fields(after, after) == []
