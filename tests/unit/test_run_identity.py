"""One run per FineTuneJob incarnation: its run root, and which children it may use as its own."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from kubetune.api import FineTuneJobSpec
from kubetune.builders.common import Owner
from kubetune.builders.trainer import build_trainer_config, effective_storage, run_storage_uri
from kubetune.finetunejob.reconcile import not_ours
from kubetune.settings import OperatorSettings

pytestmark = pytest.mark.unit

FIRST = Owner(name="bot", namespace="team-a", uid="11111111-aaaa-bbbb-cccc-000000000001")
AGAIN = Owner(name="bot", namespace="team-a", uid="22222222-aaaa-bbbb-cccc-000000000002")  # same name, recreated
SETTINGS = OperatorSettings()


def spec(**overrides) -> FineTuneJobSpec:
    return FineTuneJobSpec.model_validate({"baseModel": {"uri": "s3://m/base"}, "dataset": {"train": "s3://d/t.jsonl"},
                                           "storage": {"uri": "s3://runs/kubetune/"}, **overrides})


def test_each_incarnation_has_its_own_run_root():
    roots = {o.uid: build_trainer_config(o, spec(), SETTINGS).storage_uri for o in (FIRST, AGAIN)}
    assert roots[FIRST.uid] == f"s3://runs/kubetune/team-a/bot/{FIRST.uid}"
    assert roots[AGAIN.uid] == f"s3://runs/kubetune/team-a/bot/{AGAIN.uid}"


def test_resuming_an_earlier_run_is_explicit_and_validated():
    resumed = spec(resumeFromRun=FIRST.uid)
    assert build_trainer_config(AGAIN, resumed, SETTINGS).storage_uri == f"s3://runs/kubetune/team-a/bot/{FIRST.uid}"
    assert run_storage_uri(effective_storage(resumed, SETTINGS), AGAIN, resumed.resume_from_run).endswith(FIRST.uid)
    for bad in ("../other-team/bot", "latest", FIRST.uid.upper(), FIRST.uid + "/x"):
        with pytest.raises(ValidationError, match="resume_from_run|resumeFromRun"):
            spec(resumeFromRun=bad)


def child(kind: str, name: str, controller: dict | None) -> dict:
    refs = [{"apiVersion": "kubetune.io/v1alpha1", "controller": True, **controller}] if controller else []
    return {"kind": kind, "metadata": {"name": name, "ownerReferences": refs}}


def test_only_children_this_incarnation_controls_are_used():
    assert not_ours(child("Job", "bot-train", {"kind": "FineTuneJob", "name": "bot", "uid": AGAIN.uid}), AGAIN) is None
    previous = not_ours(child("Service", "bot-train", {"kind": "FineTuneJob", "name": "bot", "uid": FIRST.uid}), AGAIN)
    assert previous.reason == "PreviousRunTerminating" and FIRST.uid in previous.message
    for foreign in (child("Job", "bot-train", None),
                    child("Job", "bot-train", {"kind": "FineTuneJob", "name": "other", "uid": FIRST.uid}),
                    child("Job", "bot-train", {"kind": "Deployment", "name": "bot", "uid": FIRST.uid})):
        blocker = not_ours(foreign, AGAIN)
        assert blocker.reason == "NameConflict"
        assert blocker.message.startswith("Job bot-train already exists and was not created for this FineTuneJob")
