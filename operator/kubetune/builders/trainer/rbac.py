"""The trainer's identity: one ServiceAccount per namespace that may patch FineTuneJob status.

Progress reaches `kubectl get ftj` because the trainer merge-patches its own
FineTuneJob's status. One identity per namespace (created once, not per job)
keeps a FineTuneJob create at one API write, the Job. RBAC alone would let
that token patch any FineTuneJob's status in the namespace; the chart's
status policy ties each request to the one FineTuneJob whose trainer Job runs
the token's pod (bound tokens name their pod; the operator records the Job's
name in status.trainerJob), so a trainer still touches no other FineTuneJob,
and cannot read any.
"""

from __future__ import annotations

from kubetune.api import GROUP

from ..common import MANAGED_BY

# The ServiceAccount, Role and RoleBinding name in every namespace with FineTuneJobs; the chart's
# policies name it too (tests/integration/test_admission_policies.py keeps them equal).
TRAINER_ACCOUNT = "kubetune-trainer"
IDENTITY_LABELS = {
    "app.kubernetes.io/name": "kubetune-trainer",
    "app.kubernetes.io/component": "trainer",
    "app.kubernetes.io/part-of": "kubetune",
    "app.kubernetes.io/managed-by": MANAGED_BY,
}


def build_trainer_identity(namespace: str) -> list[dict]:
    """ServiceAccount, Role and RoleBinding, in the order they must be created. Not owned by any
    FineTuneJob (they serve all of the namespace's), so they outlive each job, like `default`."""
    meta = {"name": TRAINER_ACCOUNT, "namespace": namespace, "labels": dict(IDENTITY_LABELS)}
    service_account = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": meta,
        # Only the trainer pod mounts the token (it opts in); anything else run as this SA gets none.
        "automountServiceAccountToken": False,
    }
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": dict(meta),
        # No get: the reporter only patches, and a read would not pass through admission, where
        # the tie to one FineTuneJob is checked.
        "rules": [{"apiGroups": [GROUP], "resources": ["finetunejobs/status"], "verbs": ["patch"]}],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": dict(meta),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": TRAINER_ACCOUNT},
        "subjects": [{"kind": "ServiceAccount", "name": TRAINER_ACCOUNT, "namespace": namespace}],
    }
    return [service_account, role, binding]
