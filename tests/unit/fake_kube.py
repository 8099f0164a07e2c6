"""An in-memory stand-in for kubetune.k8s.Kube, for reconcile() without a cluster.

Only what reconcile() uses, with the apiserver's rules that matter to it: names are unique per
kind and namespace, each write moves resourceVersion, a status patch with a resourceVersion
precondition is refused (None) when the object moved on, and a delete with a uid precondition
leaves a newer object of the same name alone. Label selectors are `key=value[,key=value]`.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any


def _merge(into: dict, patch: dict) -> dict:
    """RFC 7386 JSON merge patch."""
    for key, value in patch.items():
        if value is None:
            into.pop(key, None)
        elif isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)
    return into


class FakeKube:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict] = {}  # (kind, namespace, name) -> object
        self.events: list[tuple[str, str, str]] = []         # (type, reason, message)
        self.deleted: list[str] = []                         # uids, in order
        self.fail_next_delete: Exception | None = None       # e.g. the operator killed mid-replacement
        self._counter = itertools.count(1)

    def _stamp(self, obj: dict) -> None:
        obj["metadata"]["resourceVersion"] = str(next(self._counter))

    def put(self, obj: dict) -> dict:
        """Store as the apiserver would on create (uid, resourceVersion); returns a copy."""
        obj = copy.deepcopy(obj)
        obj["metadata"].setdefault("uid", f"uid-{next(self._counter)}")
        self._stamp(obj)
        self.objects[(obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])] = obj
        return copy.deepcopy(obj)

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict | None:
        found = self.objects.get((kind, namespace, name))
        return copy.deepcopy(found) if found is not None else None

    def list(self, api_version: str, kind: str, namespace: str, label_selector: str) -> list[dict]:
        wanted = dict(term.split("=", 1) for term in label_selector.split(","))
        return [copy.deepcopy(o) for (k, ns, _), o in sorted(self.objects.items())
                if k == kind and ns == namespace and wanted.items() <= (o["metadata"].get("labels") or {}).items()]

    def create_if_absent(self, obj: dict) -> tuple[dict, bool]:
        existing = self.get(obj["apiVersion"], obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
        return (existing, False) if existing is not None else (self.put(obj), True)

    def merge_patch(self, api_version: str, kind: str, namespace: str, name: str, patch: dict,
                    subresource: str | None = None) -> dict | None:
        stored = self.objects.get((kind, namespace, name))
        if stored is None:
            return None
        _merge(stored, patch)
        self._stamp(stored)
        return copy.deepcopy(stored)

    def patch_status(self, api_version: str, kind: str, namespace: str, name: str, patch: dict,
                     resource_version: str | None = None) -> dict | None:
        stored = self.objects.get((kind, namespace, name))
        if stored is None or (resource_version is not None and stored["metadata"]["resourceVersion"] != resource_version):
            return None
        return self.merge_patch(api_version, kind, namespace, name, {"status": patch["status"]})

    def post_event(self, obj: dict, type: str, reason: str, message: str) -> None:
        self.events.append((type, reason, message))

    def delete(self, api_version: str, kind: str, namespace: str, name: str, uid: str | None = None) -> None:
        if self.fail_next_delete is not None:
            err, self.fail_next_delete = self.fail_next_delete, None
            raise err
        stored = self.objects.get((kind, namespace, name))
        if stored is not None and uid in (None, stored["metadata"]["uid"]):
            del self.objects[(kind, namespace, name)]
            self.deleted.append(stored["metadata"]["uid"])

    def status_of(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        return copy.deepcopy(self.objects[(kind, namespace, name)].get("status") or {})
