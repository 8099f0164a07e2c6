"""Clean virtual environments installed from the project's wheel, the way the images install it.

- `build_wheel(out)`: copies exactly what the Dockerfiles COPY (pyproject.toml, README.md,
  operator/, trainer_image/) into a scratch directory and builds the wheel there, so a file the
  package needs but the Dockerfiles leave out breaks the test, and stale `build/` output in the
  checkout never leaks into the wheel.
- `wheel_venv(wheel, extras)`: a venv with the wheel and the named extras (Dockerfile.operator: no
  extras; Dockerfile.trainer: trainer), installed in Dockerfile.trainer's two layers: the wheel's
  Requires-Dist for those extras first, then the wheel with --no-deps, then `pip check`. The
  dependencies are downloaded into $KUBETUNE_CACHE/wheelhouse and installed from there: pip's
  own cache stays empty here (the registry's responses are not cacheable), and a changed pin
  then downloads only what changed, not torch again. The venv is kept in
  $KUBETUNE_CACHE/wheel-venvs/<extras>-<hash>, the hash taken over the wheel's Requires-Dist for
  those extras and the Python version: an unchanged dependency set reuses it (warm: seconds), a
  changed one builds a new one (cold: the trainer's torch takes minutes). The wheel itself is
  reinstalled (--no-deps) every time, so the venv always runs the code under test.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path

from .tools import REPO

CACHE = Path(os.environ.get("KUBETUNE_CACHE", Path.home() / ".cache" / "kubetune"))
VENVS = CACHE / "wheel-venvs"
WHEELHOUSE = CACHE / "wheelhouse"
# What Dockerfile.operator and Dockerfile.trainer COPY before installing (keep in step with them).
DOCKER_CONTEXT = ("pyproject.toml", "README.md", "operator", "trainer_image")
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class WheelVenv:
    path: Path
    extras: tuple[str, ...]
    built: bool            # True when this call created it (cold), False when it was reused (warm)
    seconds: float         # time spent in this call (create + install, or just the wheel reinstall)

    @property
    def bin(self) -> Path:
        return self.path / "bin"

    def env(self, **extra: str) -> dict[str, str]:
        """A process environment that sees only this venv (nothing of the test's own venv)."""
        return {"PATH": f"{self.bin}:{SYSTEM_PATH}", "HOME": str(Path.home()), "LANG": "C.UTF-8",
                "PYTHONUNBUFFERED": "1", "VIRTUAL_ENV": str(self.path), **extra}

    def python(self, code: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.bin / "python"), "-c", code], env=self.env(), capture_output=True,
                              text=True, timeout=timeout, cwd=tempfile.gettempdir())


def build_wheel(out_dir: Path) -> Path:
    """The project's wheel, built from a copy of the Docker build context. Returns its path."""
    with tempfile.TemporaryDirectory(prefix="kubetune-wheel-src-") as src:
        for name in DOCKER_CONTEXT:
            source = REPO / name
            if source.is_dir():
                shutil.copytree(source, Path(src) / name,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
            else:
                shutil.copy2(source, Path(src) / name)
        # --no-build-isolation: the build backend (setuptools, wheel) of the test's own venv, which
        # hack/bootstrap.sh pins to the same requirement as [build-system]; no download per build.
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        "-w", str(out_dir), src], check=True, capture_output=True, text=True)
    wheels = sorted(out_dir.glob("kubetune-*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"expected one kubetune wheel in {out_dir}, found {[w.name for w in wheels]}")
    return wheels[0]


def wheel_metadata(wheel: Path) -> dict[str, list[str]]:
    """The wheel's METADATA as header -> values (Requires-Dist, Provides-Extra, ...)."""
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        msg = Parser().parsestr(zf.read(name).decode())
    return {key: msg.get_all(key) or [] for key in set(msg.keys())}


def requirements(wheel: Path, extras: tuple[str, ...]) -> list[str]:
    """The Requires-Dist lines pip installs for these extras (unconditional ones plus `extra == X`)."""
    out = []
    for req in wheel_metadata(wheel).get("Requires-Dist", []):
        spec, _, marker = req.partition(";")
        marker = marker.strip()
        if not marker or any(marker == f'extra == "{x}"' for x in extras):
            out.append(spec.strip())
        elif "extra ==" not in marker:
            out.append(req.strip())  # a platform marker: part of the set as written
    return sorted(out)


def dependency_key(wheel: Path, extras: tuple[str, ...]) -> str:
    wanted = {"python": list(sys.version_info[:2]), "requires": requirements(wheel, extras)}
    return hashlib.sha256(json.dumps(wanted, sort_keys=True).encode()).hexdigest()[:16]


def _pip(venv: Path, *args: str, timeout: float) -> None:
    res = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", *args],
                         capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, "PIP_NO_INPUT": "1"}, cwd=tempfile.gettempdir())
    if res.returncode != 0:
        raise RuntimeError(f"pip {' '.join(args)} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")


def wheel_venv(wheel: Path, extras: tuple[str, ...] = (), timeout: float = 1800) -> WheelVenv:
    """The cached venv for this wheel's dependency set, with this very wheel installed in it."""
    VENVS.mkdir(parents=True, exist_ok=True)
    name = f"{'-'.join(extras) or 'base'}-{dependency_key(wheel, extras)}"
    venv, stamp = VENVS / name, VENVS / name / ".kubetune-complete"
    t0 = time.monotonic()
    # One builder at a time (several pytest runs may share the cache).
    with open(VENVS / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        built = not stamp.is_file()
        if built:
            shutil.rmtree(venv, ignore_errors=True)  # a half-built one from an interrupted run
            # The interpreter behind the test's venv (not the venv itself): a venv made from it is clean.
            base = getattr(sys, "_base_executable", sys.executable)
            subprocess.run([base, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
            reqs = requirements(wheel, extras)
            with open(VENVS / "wheelhouse.lock", "w") as shared:
                fcntl.flock(shared, fcntl.LOCK_EX)  # builders of other extras share the wheelhouse
                _pip(venv, "download", "-q", "-d", str(WHEELHOUSE), *reqs, timeout=timeout)
            _pip(venv, "install", "-q", "--no-index", "--find-links", str(WHEELHOUSE), *reqs, timeout=timeout)
            stamp.write_text(json.dumps({"requires": requirements(wheel, extras),
                                         "seconds": round(time.monotonic() - t0, 1)}))
        # The code under test: this wheel, whatever an earlier run installed.
        _pip(venv, "install", "-q", "--no-deps", "--force-reinstall", str(wheel), timeout=300)
        _pip(venv, "check", timeout=120)  # the wheel's requirements are all met by the layer below
    return WheelVenv(venv, extras, built, time.monotonic() - t0)
