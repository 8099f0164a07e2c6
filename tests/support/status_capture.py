"""Opt-in capture of kubetune objects as the e2e tests read them, for the GitOps health test data.

With KUBETUNE_CAPTURE_STATUS=<dir> set, `capture(obj)` writes each object it is handed to
<dir>/<Kind>/<state>.json, one file per distinct state (phase, condition statuses and reasons,
whether observedGeneration lags metadata.generation), the first object seen in that state
winning. hack/capture-gitops-testdata.py trims them into gitops/argocd/.../testdata. Unset (the
default), `capture` only returns its argument: the e2e harnesses call it on every read.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

ENV = "KUBETUNE_CAPTURE_STATUS"


def state_key(obj: dict) -> str:
    """What tells two health states apart: phase, each condition's (type, status, reason), and
    whether the operator has acted on the current generation."""
    status = obj.get("status") or {}
    conditions = sorted((c.get("type", ""), c.get("status", ""), c.get("reason", ""))
                        for c in status.get("conditions") or [])
    lagging = status.get("observedGeneration") != (obj.get("metadata") or {}).get("generation")
    return json.dumps([status.get("phase"), conditions, lagging])


def capture(obj: dict) -> dict:
    target = os.environ.get(ENV)
    if not target or not isinstance(obj, dict) or not obj.get("kind"):
        return obj
    key = state_key(obj)
    folder = Path(target) / obj["kind"]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (hashlib.sha256(key.encode()).hexdigest()[:16] + ".json")
    try:
        # "x": the first object in a state is kept; concurrent readers never write half a file twice.
        with path.open("x") as f:
            json.dump({"state": json.loads(key), "object": obj}, f, indent=1, default=str)
    except FileExistsError:
        pass
    return obj
