"""The vLLM stand-in and load generator that rollout tests rely on, checked end to end.

Canary analysis will judge a revision by PromQL over vLLM's series; these tests show that
injected faults come out of the real Prometheus under the right revision label, so an
analysis test that passes is judging the revision and not the harness.
"""

from __future__ import annotations

import time
import uuid

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.support.load import LoadGenerator
from tests.support.vllm_standin import REVISION_HEADER

pytestmark = pytest.mark.integration


def _http() -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    return s


def _sample(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels`."""
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == name and labels.items() <= s.labels.items())


def test_standin_answers_like_vllm_with_its_revision(vllm_standins):
    standin = vllm_standins("r1", served_model_name="m1")
    http = _http()

    models = http.get(f"{standin.url}/v1/models", timeout=5)
    assert models.status_code == 200 and models.headers[REVISION_HEADER] == "r1"
    assert [m["id"] for m in models.json()["data"]] == ["m1"]

    done = http.post(f"{standin.url}/v1/completions", json={"model": "m1", "prompt": "a b c", "max_tokens": 3},
                     timeout=5)
    assert done.status_code == 200 and done.headers[REVISION_HEADER] == "r1"
    body = done.json()
    assert body["model"] == "m1" and body["object"] == "text_completion"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}

    chat = http.post(f"{standin.url}/v1/chat/completions",
                     json={"model": "m1", "messages": [{"role": "user", "content": "hi"}]}, timeout=5)
    assert chat.status_code == 200 and chat.headers[REVISION_HEADER] == "r1"
    assert chat.json()["choices"][0]["message"]["role"] == "assistant"

    assert standin.set_faults(error_rate=1.0)["error_rate"] == 1.0
    failed = http.post(f"{standin.url}/v1/completions", json={"prompt": "x"}, timeout=5)
    assert failed.status_code == 500 and failed.headers[REVISION_HEADER] == "r1"

    scraped = http.get(f"{standin.url}/metrics", timeout=5)
    assert scraped.headers[REVISION_HEADER] == "r1"
    text, engine = scraped.text, {"model_name": "m1", "engine": "0"}
    completions = {"handler": "/v1/completions", "method": "POST"}
    assert _sample(text, "http_requests_total", **completions, status="2xx") == 1
    assert _sample(text, "http_requests_total", **completions, status="5xx") == 1
    assert _sample(text, "http_request_duration_seconds_count", **completions) == 2
    # The error is an HTTP 5xx but not a finished request, as in vLLM.
    assert _sample(text, "vllm:request_success_total", **engine) == 2
    assert _sample(text, "vllm:request_success_total", **engine, finished_reason="length") == 1
    assert _sample(text, "vllm:e2e_request_latency_seconds_count", **engine) == 2
    assert _sample(text, "vllm:time_to_first_token_seconds_count", **engine) == 2
    assert _sample(text, "vllm:prompt_tokens_total", **engine) > 0
    assert _sample(text, "vllm:generation_tokens_total", **engine) == 3 + 8
    assert _sample(text, "vllm:num_requests_running", **engine) == 0
    assert 'vllm:num_requests_waiting{engine="0",model_name="m1"}' in text


def _query_at(prometheus, promql: str, at: float) -> float | None:
    r = requests.get(f"{prometheus.url}/api/v1/query", params={"query": promql, "time": f"{at:.3f}"}, timeout=10)
    body = r.json()
    assert body["status"] == "success", body
    result = body["data"]["result"]
    assert len(result) <= 1, result
    return float(result[0]["value"][1]) if result else None


def test_prometheus_sees_errors_and_latency_per_revision(prometheus, vllm_standins):
    namespace = f"rollout-{uuid.uuid4().hex[:6]}"  # the session's Prometheus keeps older tests' series
    # vLLM's e2e buckets start at 0.3 s: below that every answer reads as p95 = 0.285 (interpolated
    # in the first bucket), so the injected latency must cross 0.3 s for p95 to tell it apart.
    aaa = vllm_standins("aaa", latency_seconds=0.35)
    bbb = vllm_standins("bbb")
    for standin in (aaa, bbb):
        vllm_standins.register(prometheus, standin, namespace)
    prometheus.wait_for_series(f'count(up{{namespace="{namespace}"}} == 1) == 2')

    def targets():
        return [(aaa.url, 50), (bbb.url, 50)]

    # 8 in flight keeps 25/s going while half the requests take 0.35 s.
    before = LoadGenerator(targets, rate=25, max_requests=110, max_seconds=15, concurrency=8).start()
    assert before.wait(25), "the load generator overran its own bounds"
    counts = before.counts()
    assert set(counts) == {("aaa", 200), ("bbb", 200)}, counts
    assert 0.3 < counts[("aaa", 200)] / 110 < 0.7, counts

    bbb.set_faults(error_rate=1.0)
    t_fault = time.time()
    after = LoadGenerator(targets, rate=25, max_requests=200, max_seconds=4, concurrency=8, seed=1).start()
    assert after.wait(15)
    counts = after.counts()
    assert set(counts) == {("aaa", 200), ("bbb", 500)}, counts
    assert 150 <= 110 + sum(counts.values()) <= 250, counts  # ~200 requests in all

    # Evaluate two scrapes after the last request, over a window that starts after the fault was
    # set (every earlier request had already been answered, so the window holds only the faulty phase).
    at = after.finished_at - time.monotonic() + time.time() + 2.0
    time.sleep(max(0.0, at - time.time()) + 0.2)
    window = f"{int((at - t_fault - 0.5) * 1000)}ms"

    def error_ratio(revision: str) -> float | None:
        sel = f'namespace="{namespace}",revision="{revision}",handler="/v1/completions"'
        return _query_at(prometheus, f'(sum(rate(http_requests_total{{{sel},status="5xx"}}[{window}])) or vector(0))'
                                     f' / sum(rate(http_requests_total{{{sel}}}[{window}]))', at)

    assert error_ratio("bbb") == pytest.approx(1.0)
    assert error_ratio("aaa") == 0.0

    def finished(revision: str) -> float | None:
        return _query_at(prometheus, f'sum(increase(vllm:request_success_total{{namespace="{namespace}",'
                                     f'revision="{revision}"}}[{window}]))', at)

    assert finished("bbb") == 0.0, "errors must not count as finished requests"
    assert finished("aaa") > 0

    def p95(revision: str) -> float | None:
        return _query_at(prometheus, 'histogram_quantile(0.95, sum by (le) (rate(vllm:e2e_request_latency_seconds_'
                                     f'bucket{{namespace="{namespace}",revision="{revision}"}}[30s])))', at)

    assert p95("aaa") >= 0.35  # 0.49 when every answer lands in vLLM's (0.3, 0.5] bucket
    assert p95("bbb") < 0.3


def test_load_generator_stops_at_its_bounds(vllm_standins):
    standin = vllm_standins("ccc")

    def one():
        return [(standin.url, 1)]

    by_count = LoadGenerator(one, rate=200, max_requests=15, max_seconds=30).start()
    assert by_count.wait(10)
    assert by_count.sent == 15 and by_count.counts() == {("ccc", 200): 15}
    assert by_count.elapsed < 5

    by_time = LoadGenerator(one, rate=20, max_requests=100_000, max_seconds=1.0).start()
    assert by_time.wait(10)
    assert 0.8 <= by_time.elapsed < 2.0  # it sends nothing due at or after max_seconds
    assert 15 <= by_time.sent <= 21 and sum(by_time.counts().values()) == by_time.sent

    stopped = LoadGenerator(one, rate=20, max_requests=100_000, max_seconds=60).start()
    time.sleep(0.3)
    stopped.stop()
    assert stopped.done and stopped.sent < 20


@pytest.mark.parametrize("url", ["http://10.0.0.1:8000", "http://example.com", "http://127.0.0.1.nip.io:80",
                                 "ftp://127.0.0.1/"])
def test_load_generator_refuses_non_loopback_targets(url):
    with pytest.raises(ValueError, match="refuses"):
        LoadGenerator(lambda: [(url, 1)], rate=10, max_requests=10, max_seconds=1).start()


def test_load_generator_stops_when_a_target_leaves_loopback():
    answers = iter([[("http://127.0.0.1:9", 1)]])  # only start()'s check sees a loopback target

    def targets():
        return next(answers, [("http://192.0.2.1:8000", 1)])

    gen = LoadGenerator(targets, rate=10, max_requests=10, max_seconds=5).start()
    with pytest.raises(ValueError, match="refuses"):
        gen.wait(5)
    assert gen.sent == 0
