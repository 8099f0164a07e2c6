"""Shared pytest wiring: tier markers and the real-component fixtures.

Fixture modules live in tests/support/ (one per component: the control
plane, S3, Prometheus, ...); they are plugins so every tier can use them.
"""

from __future__ import annotations

import importlib.util

import pytest

pytest_plugins = [
    name
    for name in (
        "tests.support.s3_fixtures",
        "tests.support.cluster_fixtures",
        "tests.support.prometheus_fixtures",
        "tests.support.serving_fixtures",
        "tests.support.pod_runner_fixtures",
        "tests.support.dataplane",
        "tests.support.kueue_fixtures",
    )
    if importlib.util.find_spec(name) is not None
]


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tiers = {"unit", "integration", "e2e", "trainer", "gpu", "images"}
    for item in items:
        if not tiers & {m.name for m in item.iter_markers()}:
            raise pytest.UsageError(f"{item.nodeid} has no tier marker (one of {sorted(tiers)})")
    if any("gpu" in {m.name for m in i.iter_markers()} for i in items) and not _cuda_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU (run on a lent GPU machine)")
        for item in items:
            if "gpu" in {m.name for m in item.iter_markers()}:
                item.add_marker(skip)
