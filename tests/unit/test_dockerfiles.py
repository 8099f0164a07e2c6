"""The Dockerfiles stay in step with what the install tests run (no image is built here: issue 14).

tests/support/wheel_venvs.py builds the wheel from the files the Dockerfiles COPY and installs it
with the extras they install; the pod runner maps the operator image to its ENTRYPOINT; the chart
and the operator pin the uids the images run as.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml

from kubetune.settings import OperatorSettings
from tests.support.pod_runner.images import operator_image
from tests.support.tools import REPO, tool
from tests.support.wheel_venvs import DOCKER_CONTEXT

pytestmark = pytest.mark.unit


def instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (REPO / name).read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def copied(name: str) -> set[str]:
    return {src.rstrip("/") for op, args in instructions(name) if op == "COPY" and not args.startswith("--from")
            for src in args.split()[:-1]}


def test_both_images_copy_exactly_what_the_wheel_is_built_from():
    assert copied("Dockerfile.operator") == set(DOCKER_CONTEXT)
    assert copied("Dockerfile.trainer") == set(DOCKER_CONTEXT)


def test_trainer_dependencies_are_installed_before_the_code_is_copied():
    steps = instructions("Dockerfile.trainer")
    final = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    # A first stage reads pyproject.toml alone and writes the trainer extra's dependency list, so
    # the install layer is keyed on that list, not on the whole file.
    stage = steps[:final]
    assert [args for op, args in stage if op == "COPY"] == ["pyproject.toml /src/"]
    assert any(op == "RUN" and 'p["optional-dependencies"]["trainer"]' in args for op, args in stage)
    steps = steps[final:]
    deps = next(i for i, (op, args) in enumerate(steps) if op == "RUN" and "pip install -r" in args)
    code = min(i for i, (op, args) in enumerate(steps) if op == "COPY" and args.split()[0].rstrip("/") in
               ("operator", "trainer_image"))
    assert [args for op, args in steps[:deps] if op == "COPY"] == [
        "--from=requirements /requirements.txt /tmp/requirements.txt"]  # only the list above it
    assert deps < code
    # The code layer adds nothing but the package.
    assert any(op == "RUN" and "pip install --no-deps" in args and "pip check" in args for op, args in steps[code:])


def test_operator_image_installs_the_wheel_without_extras():
    runs = [args for op, args in instructions("Dockerfile.operator") if op == "RUN" and "pip " in args]
    assert any("pip wheel" in r for r in runs) and any("pip install" in r and "/wheels/*.whl" in r for r in runs)
    assert not any("[" in r for r in runs)  # no extras: no torch in the operator image


def test_entrypoints_are_the_ones_the_tests_run(tmp_path):
    entry = {name: json.loads(next(a for op, a in instructions(name) if op == "ENTRYPOINT"))
             for name in ("Dockerfile.operator", "Dockerfile.trainer")}
    assert entry["Dockerfile.operator"] == list(operator_image(tmp_path).entrypoint) == ["kubetune", "operator"]
    assert entry["Dockerfile.trainer"] == ["kubetune", "trainer-run"]


def test_image_users_match_the_chart_and_the_operator():
    def user(name: str) -> int:
        return int(next(a for op, a in instructions(name) if op == "USER").split(":")[0])

    deployment = yaml.safe_load(subprocess.run(
        [tool("helm"), "template", "kt", str(REPO / "helm" / "kubetune"), "--show-only", "templates/deployment.yaml"],
        check=True, capture_output=True, text=True).stdout)
    assert user("Dockerfile.operator") == deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    assert user("Dockerfile.trainer") == OperatorSettings().trainer_uid
