"""The trainer's own identity: it may read its FineTuneJob and patch that one's status.

Progress reaches `kubectl get ftj` because the trainer merge-patches
status.progress itself; resourceNames pins the grant to this one object, so
the token in the pod can touch no other FineTuneJob, and nothing else at all.
"""

from __future__ import annotations

from kubetune.api import GROUP

from ..common import Owner


def build_trainer_rbac(owner: Owner) -> list[dict]:
    """ServiceAccount, Role and RoleBinding, in the order they must be created."""
    name = owner.service_account_name
    service_account = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": owner.metadata(name),
        # Only the trainer pod mounts the token (it opts in); anything else run as this SA gets none.
        "automountServiceAccountToken": False,
    }
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": owner.metadata(name),
        "rules": [
            {"apiGroups": [GROUP], "resources": ["finetunejobs"], "resourceNames": [owner.name], "verbs": ["get"]},
            {"apiGroups": [GROUP], "resources": ["finetunejobs/status"], "resourceNames": [owner.name],
             "verbs": ["get", "patch"]},
        ],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": owner.metadata(name),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": owner.namespace}],
    }
    return [service_account, role, binding]
