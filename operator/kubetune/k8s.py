"""The operator's one way to talk to the apiserver: plain dicts over the REST paths.

Handlers use only this class. It covers the few kinds the operator owns, makes
"already exists" (409) and "not found" (404) ordinary outcomes instead of
errors, and leaves every other error to kopf's retry. Bodies stay JSON dicts
(no model deserialisation), which keeps memory low with many jobs.
"""

from __future__ import annotations

import json
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from kubetune.api import API_VERSION

# (apiVersion, kind) -> plural, for every kind the operator touches.
PLURALS = {
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "Service"): "services",
    ("v1", "ServiceAccount"): "serviceaccounts",
    ("v1", "Pod"): "pods",
    ("batch/v1", "Job"): "jobs",
    ("rbac.authorization.k8s.io/v1", "Role"): "roles",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "rolebindings",
    (API_VERSION, "FineTuneJob"): "finetunejobs",
}
MERGE_PATCH = "application/merge-patch+json"


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

    def patch_status(self, api_version: str, kind: str, namespace: str, name: str, patch: dict) -> dict | None:
        return self.merge_patch(api_version, kind, namespace, name, patch, subresource="status")
