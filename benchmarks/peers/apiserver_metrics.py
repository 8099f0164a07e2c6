"""API writes counted by the apiserver itself (`apiserver_request_total` on its /metrics).

The counter has no user label, so a write is attributed by what it wrote: the breakdown by
resource[/subresource] shows whose writes they are (an operator's own kinds, Jobs, pods from the
Job controller, pods/status from KWOK, ...). Server-side apply is counted by the apiserver under
verb APPLY, not PATCH, so it is a write here too.
"""

from __future__ import annotations

import re
from collections import Counter

WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION"})
# Written on a timer whatever the operators do (KWOK's node heartbeats, leases): left out of the
# per-resource figure so that a longer run is not charged for them; still shown in the breakdown.
BACKGROUND_RESOURCES = frozenset({"nodes", "nodes/status", "leases"})

_METRIC = "apiserver_request_total"
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def request_counts(metrics_text: str) -> Counter[tuple[str, str]]:
    """{(verb, resource[/subresource]): requests} summed over codes, groups and scopes."""
    counts: Counter[tuple[str, str]] = Counter()
    for line in metrics_text.splitlines():
        if not line.startswith(_METRIC + "{"):
            continue
        labels_text, _, value = line[len(_METRIC) + 1:].rpartition("} ")
        labels = dict(_LABEL.findall(labels_text))
        if "verb" not in labels or "resource" not in labels:
            raise ValueError(f"{_METRIC} sample without verb/resource labels: {line!r}")
        resource = labels["resource"] + (f"/{labels['subresource']}" if labels.get("subresource") else "")
        counts[(labels["verb"], resource)] += int(float(value))
    return counts


def write_delta(before: Counter[tuple[str, str]], after: Counter[tuple[str, str]]) -> dict[str, int]:
    """Write requests made between two snapshots, by resource[/subresource], largest first."""
    delta: Counter[str] = Counter()
    for (verb, resource), count in after.items():
        if verb in WRITE_VERBS:
            grown = count - before.get((verb, resource), 0)
            if grown < 0:
                raise ValueError(f"{verb} {resource}: counter went down ({before[(verb, resource)]} -> {count}); "
                                 "was the apiserver restarted between the snapshots?")
            if grown:
                delta[resource] += grown
    return dict(delta.most_common())


def writes_per_resource(delta: dict[str, int], created: int) -> float:
    """Writes caused per created resource, background writes (BACKGROUND_RESOURCES) left out."""
    if created <= 0:
        raise ValueError(f"created must be positive, got {created}")
    return sum(n for resource, n in delta.items() if resource not in BACKGROUND_RESOURCES) / created
