"""Where the test binaries live: control-plane assets and command-line tools.

Control-plane binaries come from KUBEBUILDER_ASSETS (envtest layout, built by
hack/build-k8s.sh); kubectl, helm and prometheus from hack/tools.sh's cache,
which is preferred over whatever else is on PATH so versions are pinned.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONTROL_PLANE_BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")


def assets_dir() -> Path:
    """KUBEBUILDER_ASSETS, checked; a usage error (not a test failure) when it is missing."""
    value = os.environ.get("KUBEBUILDER_ASSETS")
    hint = ("build them once with `bash hack/build-k8s.sh` (prints the directory) and export "
            "KUBEBUILDER_ASSETS=<that directory>, or run the tests with `make test`")
    if not value:
        raise pytest.UsageError(f"KUBEBUILDER_ASSETS is not set: {hint}")
    path = Path(value)
    missing = [b for b in CONTROL_PLANE_BINARIES if not os.access(path / b, os.X_OK)]
    if missing:
        raise pytest.UsageError(f"KUBEBUILDER_ASSETS={path} lacks {', '.join(missing)}: {hint}")
    return path


@functools.cache
def tools_dir() -> Path:
    """hack/tools.sh's bin dir (instant when installed; installs on first use)."""
    out = subprocess.run(["bash", str(REPO / "hack" / "tools.sh")], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip())


def tool(name: str) -> str:
    path = tools_dir() / name
    if os.access(path, os.X_OK):
        return str(path)
    found = shutil.which(name)
    if not found:
        raise pytest.UsageError(f"{name} not found: run `bash hack/tools.sh`")
    return found
