"""A vLLM stand-in: OpenAI-shaped answers, vLLM's metric names, and fault injection.

Rollout analysis reads vLLM's Prometheus series, so the stand-in must expose them under the
names, label names and buckets a real server uses; otherwise a query that passes here would
find nothing in production. Checked against vLLM's source (vllm-project/vllm):

- vllm/v1/metrics/loggers.py (PrometheusStatLogger): labels ["model_name", "engine"] (engine is
  the engine index as a string, "0"); gauges vllm:num_requests_running, vllm:num_requests_waiting;
  counters vllm:prompt_tokens, vllm:generation_tokens (exposed with _total), vllm:request_success
  with the extra label finished_reason (one child per FinishReason, created up front);
  histograms vllm:time_to_first_token_seconds and vllm:e2e_request_latency_seconds with the
  bucket lists copied below. Only finished requests are observed, so an error is in neither.
- vllm/entrypoints/serve/instrumentator/metrics.py (older releases: openai/api_server.py):
  `Instrumentator(excluded_handlers=["/metrics", "/health", ...]).add().instrument(app)` with
  no instrumentation added, i.e. prometheus-fastapi-instrumentator's `metrics.default()`:
  http_requests_total{method, status, handler} with status grouped ("2xx", "5xx": the default
  should_group_status_codes=True), http_request_duration_seconds{method, handler} with buckets
  (0.1, 0.5, 1, +Inf), http_request_duration_highr_seconds (no labels); unmatched paths get
  handler "none" (trallnag/prometheus-fastapi-instrumentator, middleware.py and metrics.py).
- vllm/v1/engine/__init__.py: finished_reason values "stop", "length", "abort".

Stdlib plus prometheus_client only, configured from flags or STANDIN_* env (flags win), so the
same module can run once per pod of a data-plane test. POST /control is the stand-in's own
(not vLLM's) and is not counted in the HTTP metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REVISION_HEADER = "x-kubetune-revision"
TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]
E2E_BUCKETS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
               240.0, 480.0, 960.0, 1920.0, 7680.0]
HTTP_LOWR_BUCKETS = [0.1, 0.5, 1]
HTTP_HIGHR_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5,
                      7.5, 10, 30, 60]
FINISH_REASONS = ("stop", "length", "abort")
NOT_INSTRUMENTED = {"/metrics", "/health", "/control"}
FAULTS = ("error_rate", "latency_seconds", "ttft_seconds")


class Metrics:
    def __init__(self, model: str):
        self.registry = r = CollectorRegistry()
        labels, values = ["model_name", "engine"], [model, "0"]
        self.running = Gauge("vllm:num_requests_running", "Number of requests in model execution batches.",
                             labels, registry=r).labels(*values)
        self.waiting = Gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.",
                             labels, registry=r).labels(*values)
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Number of prefill tokens processed.",
                                     labels, registry=r).labels(*values)
        self.generation_tokens = Counter("vllm:generation_tokens", "Number of generation tokens processed.",
                                         labels, registry=r).labels(*values)
        success = Counter("vllm:request_success", "Count of successfully processed requests.",
                          labels + ["finished_reason"], registry=r)
        self.success = {reason: success.labels(*values, reason) for reason in FINISH_REASONS}
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                              labels, buckets=TTFT_BUCKETS, registry=r).labels(*values)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
                             labels, buckets=E2E_BUCKETS, registry=r).labels(*values)
        self.http_total = Counter("http_requests_total", "Total number of requests by method, status and handler.",
                                  ["method", "status", "handler"], registry=r)
        self.http_duration = Histogram("http_request_duration_seconds", "Latency with only few buckets by handler.",
                                       ["method", "handler"], buckets=HTTP_LOWR_BUCKETS, registry=r)
        self.http_highr = Histogram("http_request_duration_highr_seconds", "Latency with many buckets.",
                                    buckets=HTTP_HIGHR_BUCKETS, registry=r)


class StandIn:
    """The server's state; the per-process seed makes a run's error pattern repeatable."""

    def __init__(self, revision: str, model: str, error_rate: float = 0.0, latency_seconds: float = 0.0,
                 ttft_seconds: float = 0.0, seed: str | None = None):
        self.revision, self.model = revision, model
        self.faults = {"error_rate": error_rate, "latency_seconds": latency_seconds, "ttft_seconds": ttft_seconds}
        self.lock = threading.Lock()
        self.rng = random.Random(seed if seed is not None else f"{revision}/{model}")
        self.metrics = Metrics(model)

    def draw_error(self, rate: float) -> bool:
        with self.lock:
            return self.rng.random() < rate


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like uvicorn
    server: "Server"

    def do_GET(self):  # noqa: N802 - http.server API
        self._dispatch("GET")

    def do_POST(self):  # noqa: N802
        self._dispatch("POST")

    def log_message(self, *args):  # one line per request would drown the log
        pass

    def _dispatch(self, method: str) -> None:
        start = time.perf_counter()
        path = urlsplit(self.path).path
        route = ROUTES.get((method, path))
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status = route(self, body) if route else self._json(404, {"detail": "Not Found"})
        if path not in NOT_INSTRUMENTED:
            handler, elapsed, m = path if route else "none", time.perf_counter() - start, self.server.app.metrics
            m.http_total.labels(method, f"{str(status)[0]}xx", handler).inc()
            m.http_duration.labels(method, handler).observe(elapsed)
            m.http_highr.observe(elapsed)

    def _send(self, status: int, payload: bytes, content_type: str) -> int:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header(REVISION_HEADER, self.server.app.revision)
        self.end_headers()
        self.wfile.write(payload)
        return status

    def _json(self, status: int, obj: object) -> int:
        return self._send(status, json.dumps(obj).encode(), "application/json")

    def _error(self, status: int, kind: str, message: str) -> int:
        return self._json(status, {"error": {"message": message, "type": kind, "param": None, "code": status}})

    def health(self, _body: bytes) -> int:
        return self._send(200, b"", "text/plain")

    def metrics(self, _body: bytes) -> int:
        return self._send(200, generate_latest(self.server.app.metrics.registry), CONTENT_TYPE_LATEST)

    def models(self, _body: bytes) -> int:
        name = self.server.app.model
        return self._json(200, {"object": "list", "data": [
            {"id": name, "object": "model", "created": int(time.time()), "owned_by": "vllm", "root": name,
             "parent": None}]})

    def control(self, body: bytes) -> int:
        app = self.server.app
        try:
            changes = {k: float(v) for k, v in json.loads(body or b"{}").items() if k in FAULTS}
        except (ValueError, TypeError, AttributeError) as err:
            return self._error(400, "BadRequestError", f"bad control body: {err}")
        with app.lock:
            app.faults.update(changes)
            return self._json(200, dict(app.faults))

    def completions(self, body: bytes) -> int:
        return self._generate(body, chat=False)

    def chat_completions(self, body: bytes) -> int:
        return self._generate(body, chat=True)

    def _generate(self, body: bytes, chat: bool) -> int:
        app, m = self.server.app, self.server.app.metrics
        try:
            request = json.loads(body)
            assert isinstance(request, dict)
        except (ValueError, AssertionError):
            return self._error(400, "BadRequestError", "request body must be a JSON object")
        if request.get("model") not in (None, app.model):
            return self._error(404, "NotFoundError", f"The model `{request['model']}` does not exist.")
        with app.lock:
            faults = dict(app.faults)
        start = time.perf_counter()
        m.running.inc()
        try:
            time.sleep(faults["ttft_seconds"])
            ttft = time.perf_counter() - start
            time.sleep(faults["latency_seconds"])
            if app.draw_error(faults["error_rate"]):
                return self._error(500, "InternalServerError", "injected fault")
            prompt = json.dumps(request.get("messages")) if chat else str(request.get("prompt", ""))
            prompt_tokens = max(1, len(prompt.split()))
            max_tokens = request.get("max_tokens")
            tokens = max(1, min(int(max_tokens or 8), 64))
            reason = "length" if max_tokens is not None and tokens >= int(max_tokens) else "stop"
            text = " ".join(["standin"] * tokens)
            m.prompt_tokens.inc(prompt_tokens)
            m.generation_tokens.inc(tokens)
            m.success[reason].inc()
            m.ttft.observe(ttft)
            m.e2e.observe(time.perf_counter() - start)
        finally:
            m.running.dec()
        choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                   "finish_reason": reason} if chat else
                  {"index": 0, "text": text, "logprobs": None, "finish_reason": reason, "stop_reason": None})
        return self._json(200, {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
            "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "model": app.model, "choices": [choice],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": tokens,
                      "total_tokens": prompt_tokens + tokens}})


ROUTES = {
    ("GET", "/health"): Handler.health, ("GET", "/metrics"): Handler.metrics, ("GET", "/v1/models"): Handler.models,
    ("POST", "/v1/completions"): Handler.completions, ("POST", "/v1/chat/completions"): Handler.chat_completions,
    ("POST", "/control"): Handler.control,
}


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], app: StandIn):
        self.app = app
        super().__init__(address, Handler)


def from_vllm_cli(argv: list[str]) -> list[str]:
    """`vllm serve MODEL [--served-model-name N] [--port P] ...` (the operator's command line) as
    stand-in options; vLLM's other flags are accepted and ignored. The host comes from
    STANDIN_HOST (the pod IP): every pod here shares one network namespace, so 0.0.0.0 would clash."""
    p = argparse.ArgumentParser(prog="vllm serve", add_help=False)
    p.add_argument("model")
    p.add_argument("--served-model-name")
    p.add_argument("--port", default="8000")
    known, _ = p.parse_known_args(argv)
    return ["--port", known.port, "--served-model-name", known.served_model_name or known.model]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        argv = from_vllm_cli(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default=env("STANDIN_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(env("STANDIN_PORT", "8000")))
    p.add_argument("--revision", default=env("STANDIN_REVISION"))
    p.add_argument("--served-model-name", default=env("STANDIN_SERVED_MODEL_NAME", "standin"))
    for name in FAULTS:
        p.add_argument(f"--{name.replace('_', '-')}", type=float, default=float(env(f"STANDIN_{name.upper()}", "0")))
    p.add_argument("--seed", default=env("STANDIN_SEED"))
    # vLLM opens its port only once the model is loaded (minutes); the stand-in can wait too.
    p.add_argument("--load-seconds", type=float, default=float(env("STANDIN_LOAD_SECONDS", "0")))
    args = p.parse_args(argv)
    if not args.revision:
        p.error("--revision (or STANDIN_REVISION) is required")
    return args


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    app = StandIn(a.revision, a.served_model_name, a.error_rate, a.latency_seconds, a.ttft_seconds, a.seed)
    time.sleep(a.load_seconds)
    server = Server((a.host, a.port), app)
    # SIGTERM (ManagedProcess.stop, a pod's deletion) drains like uvicorn instead of dying mid-reply.
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    print(f"vllm stand-in revision={a.revision} model={a.served_model_name} on {a.host}:{server.server_port} "
          f"faults={app.faults}", file=sys.stderr, flush=True)
    server.serve_forever()
    server.server_close()


if __name__ == "__main__":
    main()
