"""pydantic gives every probe value the verdict the apiserver gives it (tests/support/spec_probes.py;
the apiserver side is tests/integration/test_crds.py), naming the field when it refuses."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.api.manifest import validation_problems
from tests.support.invalid_manifests import problem_names_field
from tests.support.spec_probes import PROBES, Probe

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("probe", PROBES, ids=[p.id for p in PROBES])
def test_pydantic_verdict_matches_the_apiserver(probe: Probe):
    try:
        FineTuneJobSpec.model_validate(probe.spec())
    except ValidationError as err:
        problems = validation_problems(err)
        assert not probe.valid, f"{probe.field}={probe.value!r} refused: {problems}"
        assert any(problem_names_field(p, probe.field) for p in problems), problems
    else:
        assert probe.valid, f"{probe.field}={probe.value!r} accepted, the apiserver refuses it"


def test_integer_quantities_become_strings():
    spec = FineTuneJobSpec.model_validate({**PROBES[0].spec(), "resources": {"cpu": 4, "memory": 1024, "shmSize": 2.0}})
    assert (spec.resources.cpu, spec.resources.memory, spec.resources.shm_size) == ("4", "1024", "2")
