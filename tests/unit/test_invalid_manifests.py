"""The invalid manifests are also refused by the typed models (`kubetune train` never
meets the apiserver), each with a problem that names the offending field."""

from __future__ import annotations

import pytest
import yaml

from kubetune.api.manifest import ManifestError, parse_manifest
from tests.support.invalid_manifests import InvalidCase, load_cases, problem_names_field

pytestmark = pytest.mark.unit

CASES = load_cases()


def test_there_are_at_least_ten_invalid_manifests():
    assert len(CASES) >= 10, [c.id for c in CASES]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_pydantic_rejects_naming_the_field(case: InvalidCase):
    doc = yaml.safe_load(case.path.read_text())
    if case.pydantic_accepts:
        # Deliberately looser than the CRD (e.g. storage in a local directory for local runs).
        manifest = parse_manifest(doc, str(case.path))
        assert manifest.name == doc["metadata"]["name"]
        return
    with pytest.raises(ManifestError) as info:
        parse_manifest(doc, str(case.path))
    problems = info.value.problems
    assert any(problem_names_field(p, case.expect) for p in problems), (
        f"no problem names {case.expect}: {problems}"
    )


@pytest.mark.parametrize(
    ("problem", "expect", "named"),
    [
        ("spec.lora.r: Input should be greater than or equal to 1", "spec.lora.r", True),
        ("spec.rollout.steps[0].weight: too big", "spec.rollout.steps", True),
        ("spec: quantization is only allowed with method qlora", "spec.quantization", True),
        ("spec.resources: nodes > 1 needs gpusPerNode >= 1", "spec.resources.nodes", True),
        ("spec: method must be qlora", "spec.quantization", False),
        ("spec.lora.alpha: too small", "spec.lora.r", False),
        ("spec.lora: rank must be set", "spec.lora.r", False),
    ],
)
def test_problem_matching_rule(problem: str, expect: str, named: bool):
    # The rule the test above relies on must not be so loose that anything passes.
    assert problem_names_field(problem, expect) is named
