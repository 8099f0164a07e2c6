"""First-seen times of objects from a raw apiserver watch.

A thin streaming reader (requests + json per line, no client model classes) so the benchmark's
own CPU use stays small next to the operators it measures on the same cores. Each object's first
event is stamped with time.monotonic() on arrival, with its controller ownerReference, so
children are matched to the resource that made them by ownership, never by creationTimestamp
(1 s resolution).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

import requests

from tests.support.controlplane import ControlPlane


def controller_owner(obj: dict) -> tuple[str, str] | None:
    """(kind, name) of the object's controller ownerReference, if any."""
    for ref in obj.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return ref["kind"], ref["name"]
    return None


def job_complete(obj: dict) -> bool:
    return any(c.get("type") == "Complete" and c.get("status") == "True"
               for c in (obj.get("status") or {}).get("conditions") or [])


class FirstSeen:
    """Watches one collection (e.g. /apis/batch/v1/namespaces/ns/jobs) from a thread.

    `first[name]` = (monotonic time of the first event, controller owner);
    `done[name]` = time `done_when(obj)` first held (e.g. a Job completed)."""

    def __init__(self, cluster: ControlPlane, path: str, done_when: Callable[[dict], bool] | None = None):
        self.url = cluster.server + path
        self.cert = (str(cluster.pki.admin_cert), str(cluster.pki.admin_key))
        self.verify = str(cluster.pki.ca_cert)
        self.done_when = done_when
        self.first: dict[str, tuple[float, tuple[str, str] | None]] = {}
        self.done: dict[str, float] = {}
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._response: requests.Response | None = None
        self._thread = threading.Thread(target=self._run, name=f"watch {path}", daemon=True)

    def start(self) -> "FirstSeen":
        listing = requests.get(self.url, cert=self.cert, verify=self.verify, timeout=30)
        listing.raise_for_status()
        body = listing.json()
        for obj in body.get("items") or []:
            self._record(obj, time.monotonic())
        self._resource_version = body["metadata"]["resourceVersion"]
        self._thread.start()
        return self

    def _record(self, obj: dict, now: float) -> None:
        name = obj["metadata"]["name"]
        if name not in self.first:
            self.first[name] = (now, controller_owner(obj))
        if self.done_when and name not in self.done and self.done_when(obj):
            self.done[name] = now

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                params = {"watch": "1", "resourceVersion": self._resource_version,
                          "allowWatchBookmarks": "true", "timeoutSeconds": "1800"}
                with requests.get(self.url, params=params, cert=self.cert, verify=self.verify,
                                  stream=True, timeout=(10, None)) as response:
                    self._response = response
                    response.raise_for_status()
                    for line in response.iter_lines():
                        now = time.monotonic()
                        if not line:
                            continue
                        event = json.loads(line)
                        if event["type"] == "ERROR":
                            raise RuntimeError(f"watch {self.url}: {event['object'].get('message')}")
                        obj = event["object"]
                        self._resource_version = obj["metadata"]["resourceVersion"]
                        if event["type"] != "BOOKMARK":
                            self._record(obj, now)
        except BaseException as err:  # noqa: BLE001 - reported to the caller through self.error
            if not self._stop.is_set():
                self.error = err

    def check(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"watch of {self.url} failed") from self.error

    def stop(self) -> None:
        self._stop.set()
        if self._response is not None:
            self._response.close()
        self._thread.join(10)
