"""The CRDs are generated from the typed models; check what generation must guarantee."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from kubetune.api.crdgen import build_crd, crd_files
from kubetune.api.resources import FINETUNEJOB, MODELDEPLOYMENT, RESOURCES

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def schema(res) -> dict[str, Any]:
    return build_crd(res)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def walk(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        yield path, node
        for key, child in node.get("properties", {}).items():
            yield from walk(child, f"{path}.{key}")
        if "items" in node:
            yield from walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            yield from walk(node["additionalProperties"], f"{path}{{}}")


def at(node: dict[str, Any], dotted: str) -> dict[str, Any]:
    for key in dotted.split("."):
        node = node["properties"][key]
    return node


@pytest.mark.parametrize("res", RESOURCES, ids=lambda r: r.kind)
def test_schema_is_structural(res):
    for path, node in walk(schema(res)):
        if node.get("x-kubernetes-int-or-string"):
            # The one anyOf a structural schema allows (a quantity: `cpu: 4` or `cpu: 500m`).
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}] and "type" not in node, path
            continue
        assert "type" in node, f"{path} has no type"
        for banned in ("$ref", "anyOf", "oneOf", "allOf", "title", "$defs", "const"):
            assert banned not in node, f"{path} carries {banned}"
        if "properties" in node:
            assert "additionalProperties" not in node, f"{path} mixes properties and additionalProperties"
        for bound in ("exclusiveMinimum", "exclusiveMaximum"):
            if bound in node:
                assert node[bound] is True and ("minimum" if "Min" in bound else "maximum") in node


@pytest.mark.parametrize("res", RESOURCES, ids=lambda r: r.kind)
def test_every_spec_and_status_field_is_described(res):
    top = schema(res)
    for part in ("spec", "status"):
        for path, node in walk(top["properties"][part], part):
            if path.endswith("[]") or path.endswith("{}"):
                continue
            assert node.get("description"), f"{res.kind} {path} has no description (kubectl explain would be empty)"


def test_defaults_reach_the_schema():
    spec = schema(FINETUNEJOB)["properties"]["spec"]
    assert at(spec, "method")["default"] == "qlora"
    assert at(spec, "lora")["default"] == {}, "nested objects default to {} so their own defaults apply"
    assert at(spec, "lora.r")["default"] == 16
    assert at(spec, "lora.targetModules")["default"] == ["all-linear"]
    assert at(spec, "hyperparameters.learningRate")["default"] == pytest.approx(2e-4)
    assert "default" not in at(spec, "quantization"), "quantization must stay absent unless asked for"
    steps = at(schema(MODELDEPLOYMENT)["properties"]["spec"], "rollout.steps")
    assert steps["default"] == [{"weight": 10, "pauseSeconds": 300}, {"weight": 50, "pauseSeconds": 300}]


def test_status_has_no_defaults():
    for res in RESOURCES:
        for path, node in walk(schema(res)["properties"]["status"], "status"):
            assert "default" not in node, f"{res.kind} {path} has a default"


def test_enums_and_bounds():
    spec = schema(FINETUNEJOB)["properties"]["spec"]
    assert at(spec, "method")["enum"] == ["qlora", "lora", "full"]
    assert at(spec, "dataset.format")["enum"] == ["auto", "chat", "alpaca", "prompt-completion", "text"]
    split = at(spec, "dataset.validationSplit")
    assert (split["minimum"], split["maximum"], split["exclusiveMaximum"]) == (0.0, 0.5, True)
    assert at(spec, "quantization.quantType")["enum"] == ["nf4", "fp4"]
    weight = at(schema(MODELDEPLOYMENT)["properties"]["spec"], "rollout.steps")["items"]["properties"]["weight"]
    assert (weight["minimum"], weight["maximum"]) == (1, 100)


def rules(node: dict[str, Any]) -> list[str]:
    return [r["rule"] for r in node.get("x-kubernetes-validations", [])]


def test_cel_rules_are_attached_where_they_belong():
    ftj = schema(FINETUNEJOB)["properties"]["spec"]
    assert any("quantization" in r and "qlora" in r for r in rules(ftj))
    assert any("startsWith('s3://')" in r for r in rules(at(ftj, "storage")))
    assert any("gpusPerNode" in r for r in rules(at(ftj, "resources")))
    mdep = schema(MODELDEPLOYMENT)["properties"]["spec"]
    assert any("isSorted" in r for r in rules(at(mdep, "rollout.steps")))
    assert any("fineTuneJobRef" in r for r in rules(at(mdep, "model")))
    assert any("has(self.max)" in r for r in rules(at(mdep, "analysis.metrics")["items"]))


def test_names_columns_and_subresources():
    crd = build_crd(FINETUNEJOB)
    assert crd["metadata"]["name"] == "finetunejobs.kubetune.io"
    assert crd["spec"]["names"]["shortNames"] == ["ftj"]
    assert crd["spec"]["names"]["categories"] == ["kubetune"]
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == ["Phase", "Progress", "Step", "Loss", "Eval", "ETA", "Age", "Message"]
    assert build_crd(MODELDEPLOYMENT)["spec"]["names"]["shortNames"] == ["mdep"]


def test_committed_crds_are_current():
    for name, text in crd_files().items():
        committed = REPO / "crds" / name
        assert committed.is_file(), f"crds/{name} missing: run `make crds`"
        assert committed.read_text() == text, f"crds/{name} is stale: run `make crds`"
    assert sorted(p.name for p in (REPO / "crds").glob("*.yaml")) == sorted(crd_files())
