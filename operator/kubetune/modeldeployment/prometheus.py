"""Where canary analysis gets its numbers: one PromQL instant query -> one float.

The analysis state machine only sees `MetricProvider`, so it is tested with a
fake; `PrometheusProvider` is the real one. A provider never raises: every
failure (network, HTTP, PromQL, result shape) is a `QueryResult.error`, because
the analysis counts errors against `consecutiveErrorLimit` instead of crashing
the handler. The HTTP client is the stdlib's (requests is only a test
dependency of this package).
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

# (url, query params, timeout seconds) -> (HTTP status, decoded JSON body; {} when it was not JSON).
HttpGet = Callable[[str, dict[str, str], float], tuple[int, Any]]

_MAX_ERROR = 300  # status fields and events must stay readable


@dataclass(frozen=True)
class QueryResult:
    value: float | None  # None: the query matched no series
    error: str | None = None


class MetricProvider(Protocol):
    def query(self, promql: str) -> QueryResult: ...


def redact(address: str) -> str:
    """The address without user:password@, safe for status and logs."""
    parts = urllib.parse.urlsplit(address)
    if "@" not in parts.netloc:
        return address
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def urllib_get(url: str, params: dict[str, str], timeout: float) -> tuple[int, Any]:
    """GET url?params; userinfo in url becomes Basic auth (urllib cannot take it in the URL)."""
    parts = urllib.parse.urlsplit(url)
    headers = {"Accept": "application/json"}
    if "@" in parts.netloc:
        userinfo, host = parts.netloc.rsplit("@", 1)
        user, _, password = userinfo.partition(":")
        token = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(token).decode()
        parts = parts._replace(netloc=host)
    full = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(params)))
    request = urllib.request.Request(full, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - http(s) only, checked by the API
            return response.status, _json_or_empty(response.read())
    except urllib.error.HTTPError as e:
        # Prometheus explains 400/422/503 in a JSON body: keep it.
        try:
            return e.code, _json_or_empty(e.read())
        finally:
            e.close()


def _json_or_empty(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return {}


class PrometheusProvider:
    """Instant queries against the Prometheus HTTP API (`/api/v1/query`)."""

    def __init__(self, address: str, get: HttpGet | None = None, timeout: float = 10.0):
        # A bad operator setting must not crash reconciles: every query reports it instead.
        self._invalid = urllib.parse.urlsplit(address).scheme not in ("http", "https")
        self._address = address.rstrip("/")
        self._safe = redact(self._address)
        self._get = get or urllib_get
        self._timeout = timeout

    def query(self, promql: str) -> QueryResult:
        if self._invalid:
            return self._error(f"Prometheus address {self._safe!r} is not an http(s) URL")
        try:
            code, body = self._get(f"{self._address}/api/v1/query", {"query": promql}, self._timeout)
        except Exception as e:  # noqa: BLE001 - a provider reports, it never raises
            return self._error(f"cannot reach Prometheus at {self._safe}: {_reason(e)}")
        try:
            return self._parse(code, body)
        except Exception as e:  # noqa: BLE001 - malformed bodies included
            return self._error(f"unreadable answer from Prometheus at {self._safe}: {type(e).__name__}: {e}")

    def _parse(self, code: int, body: Any) -> QueryResult:
        if isinstance(body, dict) and body.get("status") == "error":
            return self._error(f"Prometheus: {body.get('errorType', 'error')}: {body.get('error', '')}".rstrip(": "))
        if code != 200:
            return self._error(f"Prometheus at {self._safe} answered HTTP {code}")
        if not isinstance(body, dict) or body.get("status") != "success":
            return self._error(f"Prometheus at {self._safe} answered without status success")
        data = body["data"]
        kind, result = data["resultType"], data["result"]
        if kind == "scalar":
            return QueryResult(float(result[1]))
        if kind != "vector":
            return self._error(f"query returned a {kind}; want one number (a scalar or a one-series vector)")
        if not result:
            return QueryResult(None)
        if len(result) > 1:
            return self._error(f"query returned {len(result)} series; want one number: aggregate it with sum()")
        return QueryResult(float(result[0]["value"][1]))

    def _error(self, message: str) -> QueryResult:
        # An exception text may quote the URL it was given; never echo credentials.
        netloc = urllib.parse.urlsplit(self._address).netloc
        if "@" in netloc:
            message = message.replace(self._address, self._safe).replace(netloc.rsplit("@", 1)[0], "***")
        if len(message) > _MAX_ERROR:
            message = message[: _MAX_ERROR - 3] + "..."
        return QueryResult(None, error=message)


def _reason(e: Exception) -> str:
    if isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError):
        e = e.reason if isinstance(e.reason, Exception) else e
    if isinstance(e, TimeoutError):
        return "timed out"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


class UnconfiguredProvider:
    """Stands in when no Prometheus address is known: every query is an Error measurement
    that says how to fix it, so the canary is held or rolled back by errorOutcome instead of
    waiting forever for evidence that cannot come."""

    def query(self, promql: str) -> QueryResult:
        return QueryResult(None, error="no Prometheus address: set spec.analysis.prometheusAddress or the "
                                       "operator's KUBETUNE_PROMETHEUS_ADDRESS (Helm: serving.prometheusAddress)")
