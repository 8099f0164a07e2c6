"""The namespace's trainer identity (builders/trainer/rbac.py), made sure of once per namespace.

A FineTuneJob create then costs one API write (its Job) instead of four. What
was found is remembered for IDENTITY_RECHECK_S, then read again (reads only),
so an identity deleted by hand comes back within minutes, and an operator
restart reads instead of writing. One thread per namespace does the work while
the others wait for it: a burst of creates in a new namespace makes three
objects, not three per job.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict

from kubetune.builders.trainer import build_trainer_identity
from kubetune.builders.common import MANAGED_BY
from kubetune.context import Context
from kubetune.finetunejob.status import Blocker

IDENTITY_RECHECK_S = 300.0

_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)


def ensure_trainer_identity(ctx: Context, namespace: str) -> Blocker | None:
    """Create the namespace's trainer ServiceAccount, Role and RoleBinding where missing. A Blocker
    when one of those names is taken by an object the operator did not make (never adopted:
    a stranger's account could hold any permission)."""
    with _locks[namespace]:
        checked = ctx.trainer_identities.get(namespace)
        if checked is not None and time.monotonic() - checked < IDENTITY_RECHECK_S:
            return None
        for obj in build_trainer_identity(namespace):
            stored = ctx.kube.get(obj["apiVersion"], obj["kind"], namespace, obj["metadata"]["name"])
            if stored is None:
                stored, _ = ctx.kube.create_if_absent(obj)
            labels = stored["metadata"].get("labels") or {}
            if labels.get("app.kubernetes.io/managed-by") != MANAGED_BY:
                return Blocker("NameConflict", f"{obj['kind']} {obj['metadata']['name']} already exists in {namespace} "
                               "and was not created by the kubetune operator; trainer pods run as it, so the "
                               "operator does not adopt it: delete or rename it")
        ctx.trainer_identities[namespace] = time.monotonic()
        return None
