"""Reading FineTuneJob / ModelDeployment manifests outside the cluster.

`kubetune train -f job.yaml` and the tests use this; every problem in the
file is reported at once, each with the field path a user would write.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import yaml
from pydantic import ValidationError

from .common import API_VERSION, KubeModel
from .finetunejob import FineTuneJobSpec
from .modeldeployment import ModelDeploymentSpec

SpecT = TypeVar("SpecT", bound=KubeModel)

SPEC_MODELS: dict[str, type[KubeModel]] = {"FineTuneJob": FineTuneJobSpec, "ModelDeployment": ModelDeploymentSpec}


class ManifestError(ValueError):
    """A manifest that cannot be used; `problems` lists every field at fault."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: invalid manifest:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True)
class Manifest(Generic[SpecT]):
    kind: str
    name: str
    namespace: str
    spec: SpecT
    source: Path | None = None


def field_path(loc: tuple[Any, ...], prefix: str = "spec") -> str:
    """pydantic's error location as a kubectl-style path: spec.lora.targetModules[2]."""
    out = prefix
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def validation_problems(err: ValidationError, prefix: str = "spec") -> list[str]:
    problems = []
    for e in err.errors():
        # Model-level validators report an empty location; the message names the fields.
        msg = e["msg"].removeprefix("Value error, ")
        problems.append(f"{field_path(e['loc'], prefix)}: {msg}")
    return problems


def parse_manifest(doc: Any, source: str = "<manifest>", expect_kind: str | None = None) -> Manifest:
    problems: list[str] = []
    if not isinstance(doc, dict):
        raise ManifestError(source, ["the document is not a YAML mapping"])
    kind = doc.get("kind")
    if doc.get("apiVersion") != API_VERSION:
        problems.append(f"apiVersion: must be {API_VERSION}, got {doc.get('apiVersion')!r}")
    if kind not in SPEC_MODELS:
        problems.append(f"kind: must be one of {sorted(SPEC_MODELS)}, got {kind!r}")
    elif expect_kind and kind != expect_kind:
        problems.append(f"kind: expected {expect_kind}, got {kind!r}")
    metadata = doc.get("metadata") or {}
    name = metadata.get("name") if isinstance(metadata, dict) else None
    if not name:
        problems.append("metadata.name: required")
    spec = None
    if "spec" not in doc:
        problems.append("spec: required")
    elif kind in SPEC_MODELS:
        try:
            spec = SPEC_MODELS[kind].model_validate(doc["spec"])
        except ValidationError as err:
            problems.extend(validation_problems(err))
    if problems:
        raise ManifestError(source, problems)
    return Manifest(kind=kind, name=name, namespace=metadata.get("namespace", "default"), spec=spec)


def load_manifest(path: str | Path, expect_kind: str | None = None) -> Manifest:
    """Load the single resource in a YAML file."""
    path = Path(path)
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as err:
        raise ManifestError(str(path), [f"not valid YAML: {err}"]) from err
    if len(docs) != 1:
        raise ManifestError(str(path), [f"expected exactly one resource, found {len(docs)}"])
    m = parse_manifest(docs[0], str(path), expect_kind)
    return Manifest(kind=m.kind, name=m.name, namespace=m.namespace, spec=m.spec, source=path)
