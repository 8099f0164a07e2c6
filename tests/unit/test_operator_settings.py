"""kopf settings the operator changes: the lean diff base must equal kopf's own; watch events
decoded by orjson."""

from __future__ import annotations

import copy

import kopf
import pytest

from kubetune.api.resources import RESOURCES
from kubetune.operator_main import ANNOTATION_PREFIX, DIFFED_KINDS, LeanDiffBaseStorage, decode_watch_events_with_orjson

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


def test_only_kinds_with_changing_handlers_get_a_diff_base():
    """FineTuneJobs, Jobs and pods have event handlers only: kopf must neither build nor read one for
    them (an old FineTuneJob's annotation from kopf's former create handler is not parsed)."""
    storage = LeanDiffBaseStorage(prefix=ANNOTATION_PREFIX)
    for kind in ("FineTuneJob", "Job", "Pod"):
        body = kopf.Body(event_body(kind))
        assert storage.fetch(body=body) is None and storage.build(body=body) == {}, kind
    assert storage.fetch(body=kopf.Body(event_body())) == {"spec": {"suspend": False}}
    changing = {handler.selector.any_name for handler in kopf.get_default_registry()._changing.get_all_handlers()}
    assert changing == {r.plural for r in RESOURCES if r.kind in DIFFED_KINDS}, \
        "a kind with create/update/resume handlers needs its diff base: add it to DIFFED_KINDS"


def test_kopf_decodes_watch_events_through_the_module_json_the_operator_replaces(monkeypatch):
    import inspect

    import kopf._cogs.clients.api as kopf_api
    import orjson
    assert "json.loads(line.decode('utf-8'))" in inspect.getsource(kopf_api.stream), \
        "kopf changed how it decodes watch events: decode_watch_events_with_orjson no longer applies"
    monkeypatch.setattr(kopf_api, "json", kopf_api.json)  # restored after the test
    decode_watch_events_with_orjson()
    assert kopf_api.json.loads is orjson.loads
    assert kopf_api.json.loads('{"type": "ADDED", "object": {"a": [1, 2.5, null]}}'.encode().decode("utf-8")) == \
        {"type": "ADDED", "object": {"a": [1, 2.5, None]}}
