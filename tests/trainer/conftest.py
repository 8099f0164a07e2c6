from __future__ import annotations

import os
from pathlib import Path

import pytest

from .tiny import build_tiny_model, task_examples, write_jsonl


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tiny-data")
    rows = task_examples(72, seed=1)
    return write_jsonl(d / "train.jsonl", rows[:60]), write_jsonl(d / "val.jsonl", rows[60:])


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Converted models and downloads go to a per-test cache, never the user's.
    monkeypatch.setenv("KUBETUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("OMP_NUM_THREADS", "2")
