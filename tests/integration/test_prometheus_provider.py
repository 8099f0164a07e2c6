"""PrometheusProvider against the real Prometheus: result shapes, errors as values, and the builtin checks on scraped data."""

from __future__ import annotations

import math
import socket
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kubetune.api.modeldeployment import AnalysisSpec
from kubetune.modeldeployment.analysis import Target, check_query, render, run_round
from kubetune.modeldeployment.prometheus import PrometheusProvider, QueryResult
from tests.support.procs import free_port, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def provider(prometheus) -> PrometheusProvider:
    return PrometheusProvider(prometheus.url, timeout=5)


@pytest.mark.parametrize("promql, expected", [
    ("1 + 2", 3.0),  # scalar
    ("vector(4.5)", 4.5),  # one-series vector
    ('sum(up{job="prometheus"}) * 0 + 7', 7.0),
    ('up{job="no-such-job"}', None),  # empty vector
    ("1/0", math.inf),
])
def test_values(provider, prometheus, promql, expected):
    prometheus.wait_for_series('up{job="prometheus"}')
    assert provider.query(promql) == QueryResult(expected)


def test_nan(provider):
    result = provider.query("0/0")
    assert result.error is None and math.isnan(result.value)


def test_multiple_series_is_an_error(provider):
    result = provider.query('label_replace(vector(1), "a", "x", "", "") or label_replace(vector(2), "a", "y", "", "")')
    assert result.value is None
    assert result.error == "query returned 2 series; want one number: aggregate it with sum()"


@pytest.mark.parametrize("promql, text", [
    ("sum(", "bad_data"),  # syntax error: Prometheus answers 400 with a JSON explanation
    ('up{job="prometheus"}[1m]', "matrix"),
])
def test_query_errors_are_values(provider, promql, text):
    result = provider.query(promql)
    assert result.value is None
    assert text in result.error and len(result.error) <= 300


def test_unused_port_is_an_error_within_timeout():
    provider = PrometheusProvider(f"http://user:s3cret@127.0.0.1:{free_port()}", timeout=2)
    t0 = time.monotonic()
    result = provider.query("1")
    assert time.monotonic() - t0 < 3
    assert result.value is None and "cannot reach Prometheus at http://127.0.0.1:" in result.error
    assert "s3cret" not in result.error and "user" not in result.error


def test_bad_address_is_an_error_not_an_exception():
    assert "not an http(s) URL" in PrometheusProvider("prometheus:9090").query("1").error


def test_silent_server_times_out():
    with socket.socket() as listener:  # accepts connections (backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        provider = PrometheusProvider(f"http://127.0.0.1:{listener.getsockname()[1]}", timeout=1)
        t0 = time.monotonic()
        result = provider.query("1")
        assert time.monotonic() - t0 < 2.5
    assert result.value is None and "timed out" in result.error


def test_userinfo_becomes_basic_auth(prometheus):
    # Prometheus without auth ignores the header: the query still works from an address with credentials.
    host = prometheus.url.removeprefix("http://")
    assert PrometheusProvider(f"http://u:p%40ss@{host}", timeout=5).query("vector(1)") == QueryResult(1.0)


class _VllmStandIn(BaseHTTPRequestHandler):
    """Counts one batch of OpenAI requests per scrape: 9 ok, server.errors 5xx, all with a 0.3 s TTFT."""

    def do_GET(self):  # noqa: N802 - http.server API
        server = self.server
        server.scrapes += 1
        n = server.scrapes
        lines = ["# TYPE http_requests_total counter",
                 f'http_requests_total{{handler="/v1/chat/completions",method="POST",status="2xx"}} {9 * n}',
                 f'http_requests_total{{handler="/metrics",method="GET",status="5xx"}} {100 * n}',
                 "# TYPE vllm:time_to_first_token_seconds histogram"]
        if server.errors:
            lines.insert(2, f'http_requests_total{{handler="/v1/chat/completions",method="POST",status="5xx"}} '
                            f"{server.errors * n}")
        total = (9 + server.errors) * n
        for le, count in (("0.1", 0), ("0.25", 0), ("0.5", total), ("+Inf", total)):
            lines.append(f'vllm:time_to_first_token_seconds_bucket{{model_name="bot",le="{le}"}} {count}')
        body = ("\n".join(lines) + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def stand_ins(prometheus):
    """Revision r1 answers 1 in 10 requests with a 5xx; r2 never fails."""
    servers = []
    for revision, errors in (("r1", 1), ("r2", 0)):
        server = ThreadingHTTPServer(("127.0.0.1", 0), _VllmStandIn)
        server.scrapes, server.errors = 0, errors
        threading.Thread(target=server.serve_forever, daemon=True).start()
        prometheus.set_targets(f"analysis-{revision}", [f"127.0.0.1:{server.server_port}"],
                               {"namespace": "team-a", "revision": revision})
        servers.append(server)
    for revision in ("r1", "r2"):
        prometheus.wait_for_target(f"analysis-{revision}")
    yield
    for revision, server in zip(("r1", "r2"), servers):
        prometheus.set_targets(f"analysis-{revision}", [])
        server.shutdown()


def _value(provider: PrometheusProvider, promql: str) -> float:
    def ready() -> tuple[float] | None:  # a tuple: 0.0 is an answer, and wait_for wants something truthy
        r = provider.query(promql)
        assert r.error is None, r.error
        return None if r.value is None or math.isnan(r.value) else (r.value,)
    return wait_for(ready, 30, f"a number from {promql}", interval=0.5)[0]


def test_builtin_checks_on_scraped_data(provider, stand_ins):
    spec = AnalysisSpec.model_validate({"metrics": [
        {"name": "errors", "builtin": "error-rate", "max": 0.05},
        {"name": "ttft", "builtin": "ttft-p95", "max": 1},
    ]})
    values = {"namespace": "team-a", "model": "bot", "interval": "60s"}
    error_rate, ttft = (check_query(m, spec) for m in spec.metrics)
    # The 5xx is grouped as "5xx" (not "500") and /metrics failures do not count.
    assert _value(provider, render(error_rate, {**values, "revision": "r1"})) == pytest.approx(0.1, abs=0.005)
    # No 5xx series at all is 0, not "no data".
    assert _value(provider, render(error_rate, {**values, "revision": "r2"})) == 0.0
    assert 0.25 < _value(provider, render(ttft, {**values, "revision": "r1"})) <= 0.5
    # An injected namespace is only ever a label value that matches nothing.
    evil = render(error_rate, {**values, "revision": "r1", "namespace": '"} or vector(1) #'})
    assert provider.query(evil) == QueryResult(None)


def test_run_round_against_prometheus(provider, stand_ins):
    spec = AnalysisSpec.model_validate({
        "noData": {"minSamples": 1},
        "failureLimit": 0,
        "metrics": [{"name": "errors", "builtin": "error-rate", "max": 0.05}],
    })
    _value(provider, 'sum(increase(http_requests_total{revision="r1",handler=~"/v1/.*"}[60s]))')
    now = datetime.now(timezone.utc)
    bad = run_round(spec, None, Target("team-a", "r1", "r2", "bot"), provider, now)
    assert (bad.verdict, bad.reason) == ("Abort", "AnalysisFailed"), bad
    assert bad.message.startswith("errors = 0.") and "> max 0.05 for canary revision r1" in bad.message
    good = run_round(spec, None, Target("team-a", "r2", "r1", "bot"), provider, now)
    assert good.verdict == "Continue" and good.measurements[0].value == 0.0
