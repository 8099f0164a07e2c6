"""Readiness probes as the kubelet runs them: httpGet on the pod IP, success is 200..399.

Only httpGet is implemented (the serving pods' probes); a container with no
readiness probe is ready once it runs. `Prober` sends the request from a
thread inside the pods' network namespace (tests/support/netns.py): pod IPs
are never contacted from the machine's own namespace.
"""

from __future__ import annotations

import http.client
from collections.abc import Callable


def resolve_port(container: dict, port) -> int:
    """A probe's port by number or by the container's named port."""
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ValueError(f"container {container['name']}: no port named {port!r}")


def http_get(ip: str, port: int, path: str, timeout: float) -> bool:
    conn = http.client.HTTPConnection(ip, port, timeout=timeout)
    try:
        conn.request("GET", path)
        return 200 <= conn.getresponse().status < 400
    except OSError:
        return False
    finally:
        conn.close()


class Prober:
    """probe(container, pod_ip) -> ready? via `call` (e.g. NetNamespace.call) running http_get."""

    def __init__(self, call: Callable, timeout: float = 1.0):
        self.call, self.timeout = call, timeout

    def ready(self, container: dict, pod_ip: str) -> bool:
        probe = container.get("readinessProbe")
        if not probe:
            return True
        get = probe.get("httpGet")
        if get is None:
            raise ValueError(f"container {container['name']}: only httpGet readiness probes are run here")
        port = resolve_port(container, get["port"])
        return self.call(http_get, pod_ip, port, get.get("path", "/"), self.timeout, timeout=self.timeout + 5)
