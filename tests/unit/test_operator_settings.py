"""kopf settings the operator changes: the lean diff base must equal kopf's own."""

from __future__ import annotations

import copy

import kopf
import pytest

from kubetune.operator_main import ANNOTATION_PREFIX, LeanDiffBaseStorage

pytestmark = pytest.mark.unit


def event_body(kind: str = "ModelDeployment") -> dict:
    """A resource as a watch event brings it: managedFields, kopf's and kubectl's annotations, status."""
    return {
        "apiVersion": "kubetune.io/v1alpha1", "kind": kind,
        "metadata": {
            "name": "bot", "namespace": "team-a", "uid": "u-1", "resourceVersion": "42", "generation": 2,
            "creationTimestamp": "2026-11-30T00:00:00Z", "labels": {"team": "a"},
            "annotations": {
                "note": "kept",
                "kubectl.kubernetes.io/last-applied-configuration": '{"spec":{}}',
                f"{ANNOTATION_PREFIX}/kopf-managed": "yes",
                f"{ANNOTATION_PREFIX}/last-handled-configuration": '{"spec":{"suspend":false}}',
            },
            "managedFields": [{"manager": "kubectl", "operation": "Update", "fieldsV1": {"f:spec": {"f:x": {}}}}],
        },
        "spec": {"baseModel": {"uri": "s3://m/b"}, "dataset": {"train": "s3://d/t"}, "suspend": True,
                 "lora": {"targetModules": ["q_proj", "v_proj"]}},
        "status": {"phase": "Running", "progress": {"step": 3}, "conditions": [{"type": "Ready", "status": "False"}]},
    }


@pytest.mark.parametrize("extra_fields", [None, frozenset(), frozenset({("status", "phase")})])
def test_the_lean_diff_base_equals_kopfs(extra_fields):
    raw = event_body()
    kopfs = kopf.AnnotationsDiffBaseStorage(prefix=ANNOTATION_PREFIX).build(body=kopf.Body(copy.deepcopy(raw)),
                                                                             extra_fields=extra_fields)
    lean = LeanDiffBaseStorage(prefix=ANNOTATION_PREFIX).build(body=kopf.Body(raw), extra_fields=extra_fields)
    assert lean == kopfs
    assert lean["spec"]["suspend"] is True and lean["metadata"]["annotations"] == {"note": "kept"}
    lean["spec"]["lora"]["targetModules"].append("k_proj")  # a copy: the event's body is untouched
    assert raw["spec"]["lora"]["targetModules"] == ["q_proj", "v_proj"]


def test_finetunejobs_have_no_diff_base():
    """Their handlers are event handlers only: kopf must neither read nor build one (an old
    object's annotation from kopf's create handler is ignored, not parsed)."""
    storage = LeanDiffBaseStorage(prefix=ANNOTATION_PREFIX)
    body = kopf.Body(event_body("FineTuneJob"))
    assert storage.fetch(body=body) is None and storage.build(body=body) == {}
    assert storage.fetch(body=kopf.Body(event_body())) == {"spec": {"suspend": False}}
