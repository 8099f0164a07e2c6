"""Names, labels and owner references shared by the children of both resources.

Child names are derived from the FineTuneJob name (never generateName), so a
restarted operator finds what it created instead of creating it twice.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from kubetune.api import API_VERSION
from kubetune.api.resources import FINETUNEJOB, MODELDEPLOYMENT

MANAGED_BY = "kubetune-operator"
# An Indexed Job's pod hostname is "<job>-<index>" and must stay a DNS label
# (63 chars); 52 leaves room for the index and for the controller's pod suffix.
MAX_JOB_NAME = 52
MAX_LABEL_VALUE = 63


def fit(base: str, suffix: str = "", limit: int = MAX_LABEL_VALUE) -> str:
    """base + suffix, shortened deterministically (a hash keeps long names distinct)."""
    if len(base) + len(suffix) <= limit:
        return base + suffix
    digest = hashlib.sha256(base.encode()).hexdigest()[:8]
    head = base[: limit - len(suffix) - len(digest) - 1].rstrip("-.")
    return f"{head}-{digest}{suffix}"


# What each owning kind's children are, in their app.kubernetes.io labels.
COMPONENTS = {FINETUNEJOB.kind: "trainer", MODELDEPLOYMENT.kind: "serving"}


@dataclass(frozen=True)
class Owner:
    """The kubetune resource (FineTuneJob or ModelDeployment) that owns the children being built.

    The *_name properties are a FineTuneJob's children; a ModelDeployment's are
    named in builders/serving (one Deployment and Service per revision).
    """

    name: str
    namespace: str
    uid: str
    kind: str = FINETUNEJOB.kind
    api_version: str = API_VERSION

    @property
    def component(self) -> str:
        return COMPONENTS[self.kind]

    @property
    def job_name(self) -> str:
        return fit(self.name, "-train", MAX_JOB_NAME)

    @property
    def service_name(self) -> str:
        # Same as the Job: pods of an Indexed Job are reachable as <job>-<i>.<service>.
        return self.job_name

    def labels(self) -> dict[str, str]:
        return {
            "app.kubernetes.io/name": f"kubetune-{self.component}",
            "app.kubernetes.io/instance": fit(self.name),
            "app.kubernetes.io/component": self.component,
            "app.kubernetes.io/part-of": "kubetune",
            "app.kubernetes.io/managed-by": MANAGED_BY,
        }

    def owner_reference(self) -> dict:
        # controller=True lets GC delete children with the FineTuneJob and lets the
        # operator find the owner of a Job it is told about; no finalizer is needed.
        return {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }

    def metadata(self, name: str, labels: dict[str, str] | None = None) -> dict:
        return {
            "name": name,
            "namespace": self.namespace,
            "labels": {**self.labels(), **(labels or {})},
            "ownerReferences": [self.owner_reference()],
        }


def restricted_pod_security(uid: int) -> dict:
    """The pod securityContext of Pod Security "restricted": a fixed non-root uid, RuntimeDefault seccomp."""
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def restricted_container_security() -> dict:
    """A container's securityContext under Pod Security "restricted"."""
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True}


def secret_env(name: str, secret: str, key: str | None = None, optional: bool = False) -> dict:
    """An env var from a Secret key: the kubelet resolves it, the operator never reads the Secret."""
    ref = {"name": secret, "key": key or name, **({"optional": True} if optional else {})}
    return {"name": name, "valueFrom": {"secretKeyRef": ref}}


def aws_credentials_env(secret: str) -> list[dict]:
    """S3 credentials from a Secret with keys AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and optionally AWS_SESSION_TOKEN)."""
    return [secret_env("AWS_ACCESS_KEY_ID", secret), secret_env("AWS_SECRET_ACCESS_KEY", secret),
            secret_env("AWS_SESSION_TOKEN", secret, optional=True)]
