"""The invalid manifests under tests/manifests/invalid/ and what each must be rejected for.

Each file starts with `# expect: <field path>`: the field the rejection must
name. A second line `# pydantic: accepts` marks a file that the typed models
deliberately accept (they also serve local runs) while the cluster rejects it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

INVALID_DIR = Path(__file__).resolve().parents[1] / "manifests" / "invalid"


@dataclass(frozen=True)
class InvalidCase:
    path: Path
    expect: str
    pydantic_accepts: bool

    @property
    def id(self) -> str:
        return self.path.stem


def load_cases() -> list[InvalidCase]:
    cases = []
    for path in sorted(INVALID_DIR.glob("*.yaml")):
        lines = path.read_text().splitlines()
        m = re.fullmatch(r"# expect: (\S+)", lines[0].strip()) if lines else None
        if not m:
            raise ValueError(f"{path}: first line must be '# expect: <field path>'")
        accepts = len(lines) > 1 and lines[1].strip() == "# pydantic: accepts"
        cases.append(InvalidCase(path=path, expect=m.group(1), pydantic_accepts=accepts))
    return cases


def leaf(field_path: str) -> str:
    """spec.analysis.metrics[0] -> metrics; spec.lora.r -> r."""
    return re.sub(r"\[\d+\]$", "", field_path).rsplit(".", 1)[-1]


def problem_names_field(problem: str, expect: str) -> bool:
    """Whether one `path: message` problem points at `expect`: the path is that field
    (or inside it), or a parent whose message names the field (cross-field rules
    are reported on the object that holds both fields)."""
    path, _, message = problem.partition(": ")
    if path == expect or path.startswith((expect + ".", expect + "[")):
        return True
    is_parent = expect.startswith((path + ".", path + "["))
    return is_parent and re.search(rf"\b{re.escape(leaf(expect))}\b", message) is not None
