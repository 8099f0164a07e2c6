"""The real Prometheus answers PromQL over HTTP and scrapes targets added at run time."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytestmark = pytest.mark.integration


def test_up_query(prometheus):
    result = prometheus.wait_for_series('up{job="prometheus"}')
    assert float(result[0]["value"][1]) == 1.0


class _Metrics(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server API
        body = b'# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{model_name="m"} 3\n'
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_file_sd_target_is_scraped(prometheus):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        prometheus.set_targets("stand-in", [f"127.0.0.1:{server.server_port}"], {"revision": "r1"})
        prometheus.wait_for_target("stand-in")
        result = prometheus.wait_for_series('vllm:num_requests_running{job="stand-in",revision="r1"}')
        assert float(result[0]["value"][1]) == 3.0
    finally:
        prometheus.set_targets("stand-in", [])
        server.shutdown()
