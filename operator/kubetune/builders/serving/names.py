"""Names and labels of a ModelDeployment's children (all DNS labels, at most 63 characters)."""

from __future__ import annotations

import hashlib

from ..common import Owner, fit

MODEL_DEPLOYMENT_LABEL = "kubetune.io/model-deployment"
# Pod label naming the revision. Prometheus users relabel it to `revision` (the default of
# spec.analysis.revisionLabel), e.g. in a PodMonitor / scrape config:
#   - sourceLabels: [__meta_kubernetes_pod_label_kubetune_io_revision]
#     targetLabel: revision
REVISION_LABEL = "kubetune.io/revision"


def _dns_label(base: str, suffix: str = "") -> str:
    """base + suffix as an RFC 1035 label (what a Service name must be), at most 63 chars.

    A ModelDeployment's name is a DNS subdomain ("llama-3.1", "8b-chat"): dots become dashes
    and a leading digit gets a letter, plus a hash of the original so "a.b" and "a-b" differ.
    """
    clean = base.replace(".", "-")
    if not clean[:1].isalpha():
        clean = f"md-{clean}"
    if clean != base:
        clean = f"{clean}-{hashlib.sha256(base.encode()).hexdigest()[:8]}"
    return fit(clean, suffix)


def deployment_name(owner: Owner, revision: str) -> str:
    return _dns_label(owner.name, f"-{revision}")


def revision_service_name(owner: Owner, revision: str) -> str:
    return deployment_name(owner, revision)


def client_service_name(owner: Owner) -> str:
    return _dns_label(owner.name)


def httproute_name(owner: Owner) -> str:
    return _dns_label(owner.name)


def selector_labels(owner: Owner, revision: str | None = None) -> dict[str, str]:
    """The labels that pick a ModelDeployment's pods (all revisions when revision is None)."""
    labels = {MODEL_DEPLOYMENT_LABEL: fit(owner.name)}
    if revision is not None:
        labels[REVISION_LABEL] = revision
    return labels


def serving_labels(owner: Owner, revision: str) -> dict[str, str]:
    return {**owner.labels(), **selector_labels(owner, revision)}
