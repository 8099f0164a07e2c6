"""The operator's one way to talk to the apiserver: plain dicts over the REST paths.

Both controllers use only this class. It covers the few kinds the operator owns, makes
"already exists" (409) and "not found" (404) ordinary outcomes instead of
errors, and leaves every other error to kopf's retry. Bodies stay JSON dicts
(no model deserialisation), which keeps memory low with many jobs.

Retries are bounded and spread out. An overloaded or restarting apiserver (429, 5xx) is
retried here a few times with exponential backoff and jitter, honouring Retry-After;
past that the error goes to the caller, whose retry (kopf's, through `retry_delay`) is
bounded too. A create the apiserver refuses for what it contains (400, 403, 422) raises
`Rejected`, which the controllers turn into status instead of retrying blindly.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import orjson
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
    ("discovery.k8s.io/v1", "EndpointSlice"): "endpointslices",
    ("kueue.x-k8s.io/v1beta2", "Workload"): "workloads",  # read only: Kueue's reason for a queued job
    ("kueue.x-k8s.io/v1beta1", "Workload"): "workloads",
}
MERGE_PATCH = "application/merge-patch+json"
EVENT_SOURCE = "kubetune-operator"

# Overload or a restarting apiserver: worth the same request again shortly.
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
# Attempts of one request (the first included) before a transient error reaches the caller.
CALL_ATTEMPTS = 4
CALL_BACKOFF_BASE = 0.5    # seconds; doubled per attempt, jittered
CALL_BACKOFF_CAP = 8.0     # no single wait here is longer (a longer Retry-After goes to the caller)
# The caller's retries (finetunejob/retries.py; kopf's for ModelDeployments): doubled from
# HANDLER_BACKOFF_BASE up to the cap, jittered; after HANDLER_RETRIES (about 40 min) the periodic
# resync is what is left.
HANDLER_BACKOFF_BASE = 5.0
HANDLER_BACKOFF_CAP = 300.0
HANDLER_RETRIES = 12
# What the apiserver refuses for the request's content; retrying the same request cannot help.
REJECTED_STATUSES = frozenset({400, 403, 422})


def backoff(attempt: int, base: float, cap: float, rand: Callable[[], float] = random.random) -> float:
    """Seconds before retry number `attempt` (0-based): "equal jitter" over min(cap, base * 2^attempt),
    so many clients that failed together do not come back together, and none comes back at once."""
    ceiling = min(cap, base * (2 ** attempt))
    return ceiling / 2 + rand() * ceiling / 2


def retry_after(err: Exception) -> float | None:
    """The apiserver's Retry-After (seconds) on a 429/503, if it sent one."""
    headers = getattr(err, "headers", None) or {}
    value = headers.get("Retry-After") if hasattr(headers, "get") else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: the apiserver never sends one; fall back to backoff


def is_transient(err: Exception) -> bool:
    return isinstance(err, ApiException) and err.status in TRANSIENT_STATUSES


def retry_delay(attempt: int, err: Exception | None = None, rand: Callable[[], float] = random.random) -> float:
    """Seconds before a handler's retry number `attempt`: at least the apiserver's Retry-After,
    else the jittered exponential backoff."""
    delay = backoff(attempt, HANDLER_BACKOFF_BASE, HANDLER_BACKOFF_CAP, rand)
    after = retry_after(err) if err is not None else None
    return max(delay, after) if after is not None else delay


def api_message(err: ApiException) -> str:
    """The apiserver's own explanation (Status.message), else the HTTP reason."""
    try:
        return json.loads(err.body).get("message") or str(err.reason)
    except (TypeError, ValueError, AttributeError):
        return str(err.body or err.reason)


class Rejected(ApiException):
    """The apiserver refused to create an object for what it contains (400/422: invalid;
    403: forbidden by RBAC, a quota or an admission policy). Still an ApiException, so
    callers that do not look for it keep their behaviour."""

    def __init__(self, err: ApiException, kind: str, name: str):
        super().__init__(status=err.status, reason=err.reason)
        self.body, self.headers = err.body, err.headers
        self.kind, self.name = kind, name
        self.message = api_message(err)

    @property
    def invalid(self) -> bool:
        """The object itself is invalid (fixed only by a different spec), as opposed to forbidden."""
        return self.status in (400, 422)

    @property
    def reason_word(self) -> str:
        """One CamelCase word for status and Events."""
        if self.invalid:
            return "InvalidSpec"
        return "QuotaExceeded" if "exceeded quota" in self.message else "Forbidden"

    def __str__(self) -> str:
        return f"the apiserver refused to create {self.kind} {self.name} ({self.status}): {self.message}"


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
    def __init__(self, api_client: client.ApiClient, sleep: Callable[[float], None] = time.sleep,
                 rand: Callable[[], float] = random.random):
        self.api = api_client
        self._sleep, self._rand = sleep, rand

    def _call(self, method: str, path: str, body: Any = None, query: list | None = None,
              content_type: str = "application/json") -> dict:
        # Every request the operator makes is safe to repeat: GETs and merge patches are
        # idempotent, a repeated create meets 409 (handled by create_if_absent), an Event twice is harmless.
        for attempt in range(CALL_ATTEMPTS):
            try:
                response = self.api.call_api(
                    path, method, query_params=query or [], body=body,
                    header_params={"Accept": "application/json", "Content-Type": content_type},
                    auth_settings=["BearerToken"], _preload_content=False, _return_http_data_only=True,
                    _request_timeout=30,
                )
                return orjson.loads(response.data)
            except ApiException as err:
                if not is_transient(err) or attempt == CALL_ATTEMPTS - 1:
                    raise
                after = retry_after(err)
                if after is not None and after > CALL_BACKOFF_CAP:
                    raise  # a long pause is the caller's to take, not a handler thread's
                delay = backoff(attempt, CALL_BACKOFF_BASE, CALL_BACKOFF_CAP, self._rand)
                self._sleep(max(delay, after) if after is not None else delay)
        raise AssertionError("unreachable")

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
            if err.status in REJECTED_STATUSES:
                raise Rejected(err, obj["kind"], meta["name"]) from err
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

    def delete(self, api_version: str, kind: str, namespace: str, name: str, uid: str | None = None) -> None:
        """Delete in the background (dependents go through the garbage collector); absent is fine.
        With `uid`, only that object: a newer one under the same name is left alone (409, fine too)."""
        body: dict[str, Any] = {"propagationPolicy": "Background"}
        if uid is not None:
            body["preconditions"] = {"uid": uid}
        try:
            self._call("DELETE", resource_path(api_version, kind, namespace, name), body=body)
        except ApiException as err:
            if err.status != 404 and not (err.status == 409 and uid is not None):
                raise
