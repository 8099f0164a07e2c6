"""The operator's one way to talk to the apiserver: plain dicts over the REST paths.

Both controllers use only this class. It covers the few kinds the operator owns, makes
"already exists" (409) and "not found" (404) ordinary outcomes instead of
errors, and leaves every other error to kopf's retry. Bodies stay JSON dicts
(no model deserialisation), which keeps memory low with many jobs.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from kubetune.api.resources import RESOURCES

# (apiVersion, kind) -> plural, for every kind the operator touches.
PLURALS = {
    **{(res.api_version, res.kind): res.plural for res in RESOURCES},
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "Service"): "services",
    ("v1", "ServiceAccount"): "serviceaccounts",
    ("v1", "Pod"): "pods",
    ("batch/v1", "Job"): "jobs",
    ("rbac.authorization.k8s.io/v1", "Role"): "roles",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "rolebindings",
    ("apps/v1", "Deployment"): "deployments",
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): "httproutes",
}
MERGE_PATCH = "application/merge-patch+json"
EVENT_SOURCE = "kubetune-operator"


def resource_path(api_version: str, kind: str, namespace: str, name: str | None = None,
                  subresource: str | None = None) -> str:
    root = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{root}/namespaces/{namespace}/{PLURALS[(api_version, kind)]}"
    if name is not None:
        path += f"/{name}"
    if subresource is not None:
        path += f"/{subresource}"
    return path


class Kube:
    def __init__(self, api_client: client.ApiClient):
        self.api = api_client

    def _call(self, method: str, path: str, body: Any = None, query: list | None = None,
              content_type: str = "application/json") -> dict:
        response = self.api.call_api(
            path, method, query_params=query or [], body=body,
            header_params={"Accept": "application/json", "Content-Type": content_type},
            auth_settings=["BearerToken"], _preload_content=False, _return_http_data_only=True,
            _request_timeout=30,
        )
        return json.loads(response.data)

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict | None:
        try:
            return self._call("GET", resource_path(api_version, kind, namespace, name))
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def list(self, api_version: str, kind: str, namespace: str, label_selector: str) -> list[dict]:
        found = self._call("GET", resource_path(api_version, kind, namespace), query=[("labelSelector", label_selector)])
        return found.get("items") or []

    def create_if_absent(self, obj: dict) -> tuple[dict, bool]:
        """Create obj; if it already exists, return the stored one. (object, created?)"""
        meta = obj["metadata"]
        path = resource_path(obj["apiVersion"], obj["kind"], meta["namespace"])
        try:
            return self._call("POST", path, body=obj), True
        except ApiException as err:
            if err.status != 409:
                raise
        existing = self.get(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])
        if existing is None:  # deleted between our POST and GET: let kopf retry
            raise RuntimeError(f"{obj['kind']} {meta['namespace']}/{meta['name']} vanished while being created")
        return existing, False

    def merge_patch(self, api_version: str, kind: str, namespace: str, name: str, patch: dict,
                    subresource: str | None = None) -> dict | None:
        """JSON merge patch; None when the object is gone."""
        try:
            return self._call("PATCH", resource_path(api_version, kind, namespace, name, subresource),
                              body=patch, content_type=MERGE_PATCH)
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def patch_status(self, api_version: str, kind: str, namespace: str, name: str, patch: dict,
                     resource_version: str | None = None) -> dict | None:
        """Status merge patch; with resource_version, only if nobody wrote the object since it was read
        (None then also means "changed meanwhile": the caller re-reads and decides again)."""
        if resource_version is not None:
            patch = {**patch, "metadata": {"resourceVersion": resource_version}}
        try:
            return self.merge_patch(api_version, kind, namespace, name, patch, subresource="status")
        except ApiException as err:
            if err.status == 409 and resource_version is not None:
                return None
            raise

    def post_event(self, obj: dict, type: str, reason: str, message: str) -> None:
        """A core/v1 Event about obj. Posted directly (not through kopf.event, which only works
        inside kopf's own handler context, not in the operator's tick and resync tasks)."""
        meta = obj["metadata"]
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta["uid"]},
            "type": type, "reason": reason, "message": message[:1024],
            "source": {"component": EVENT_SOURCE}, "reportingComponent": EVENT_SOURCE,
            "reportingInstance": os.environ.get("POD_NAME", EVENT_SOURCE),
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        try:
            self._call("POST", f"/api/v1/namespaces/{meta['namespace']}/events", body=event)
        except ApiException as err:  # an Event is best effort: never fail a reconciliation over it
            if err.status not in (403, 404, 409, 422):
                raise

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        """Delete in the background (dependents go through the garbage collector); absent is fine."""
        try:
            self._call("DELETE", resource_path(api_version, kind, namespace, name),
                       body={"propagationPolicy": "Background"})
        except ApiException as err:
            if err.status != 404:
                raise
