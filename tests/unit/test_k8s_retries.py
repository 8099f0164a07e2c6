"""The API wrapper's retries are bounded, back off with jitter and honour Retry-After
(a fake transport stands in for the apiserver); refusals become `Rejected`."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from kubernetes.client.rest import ApiException

from kubetune import k8s
from kubetune.k8s import CALL_ATTEMPTS, Kube, Rejected, backoff, retry_delay

pytestmark = pytest.mark.unit

CONFIGMAP = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "ns"}}


def api_error(status: int, message: str = "", retry_after: str | None = None) -> ApiException:
    err = ApiException(status=status, reason="reason")
    err.body = json.dumps({"kind": "Status", "message": message})
    err.headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return err


class FakeTransport:
    """Answers each call with the next scripted outcome (an exception or a JSON body)."""

    def __init__(self, *outcomes):
        self.outcomes = list(outcomes)
        self.calls: list[tuple[str, str]] = []

    def call_api(self, path, method, **_):
        self.calls.append((method, path))
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return SimpleNamespace(data=json.dumps(outcome))


def kube(transport: FakeTransport) -> tuple[Kube, list[float]]:
    slept: list[float] = []
    return Kube(transport, sleep=slept.append, rand=lambda: 0.5), slept


def test_429_honours_retry_after_then_succeeds():
    transport = FakeTransport(api_error(429, retry_after="3"), {"metadata": {"name": "c"}})
    client, slept = kube(transport)
    assert client.get("v1", "ConfigMap", "ns", "c") == {"metadata": {"name": "c"}}
    assert slept == [3.0], "waits what the apiserver asked (more than the 0.375 s backoff)"
    assert len(transport.calls) == 2


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429])
def test_transient_errors_are_retried_a_bounded_number_of_times(status: int):
    transport = FakeTransport(*[api_error(status)] * 10)
    client, slept = kube(transport)
    with pytest.raises(ApiException) as info:
        client.get("v1", "ConfigMap", "ns", "c")
    assert info.value.status == status
    assert len(transport.calls) == CALL_ATTEMPTS
    # Exponential: 0.5, 1, 2 s ceilings, each at 75 % with rand=0.5 ("equal jitter").
    assert slept == [0.375, 0.75, 1.5]


def test_a_long_retry_after_goes_to_the_caller_at_once():
    transport = FakeTransport(api_error(429, retry_after="60"))
    client, slept = kube(transport)
    with pytest.raises(ApiException) as info:
        client.get("v1", "ConfigMap", "ns", "c")
    assert slept == [] and len(transport.calls) == 1
    assert retry_delay(0, info.value, rand=lambda: 0.0) == 60.0, "the handler's retry waits the Retry-After"


@pytest.mark.parametrize("status", [400, 401, 404, 409, 422])
def test_other_errors_are_not_retried_here(status: int):
    transport = FakeTransport(api_error(status))
    client, slept = kube(transport)
    with pytest.raises(ApiException):
        client._call("GET", "/api/v1/namespaces/ns/configmaps/c")
    assert len(transport.calls) == 1 and slept == []


@pytest.mark.parametrize(("status", "message", "word", "invalid"), [
    (422, 'Job.batch "j" is invalid: spec.x: Invalid value', "InvalidSpec", True),
    (400, "quantities must match the regular expression", "InvalidSpec", True),
    (403, 'jobs.batch "j" is forbidden: exceeded quota: q, requested: count/jobs.batch=1', "QuotaExceeded", False),
    (403, 'jobs.batch is forbidden: User "system:serviceaccount:x:y" cannot create resource "jobs"', "Forbidden", False),
])
def test_a_refused_create_raises_rejected_with_the_apiservers_message(status, message, word, invalid):
    transport = FakeTransport(api_error(status, message))
    client, _ = kube(transport)
    with pytest.raises(Rejected) as info:
        client.create_if_absent(CONFIGMAP)
    err = info.value
    assert (err.reason_word, err.invalid, err.status) == (word, invalid, status)
    assert message in str(err) and "ConfigMap c" in str(err)
    assert len(transport.calls) == 1, "a refusal is not retried"


def test_a_create_retried_after_a_5xx_that_had_succeeded_returns_the_stored_object():
    stored = {**CONFIGMAP, "metadata": {**CONFIGMAP["metadata"], "uid": "u1"}}
    transport = FakeTransport(api_error(503), api_error(409), stored)
    client, _ = kube(transport)
    assert client.create_if_absent(CONFIGMAP) == (stored, False)
    assert [m for m, _ in transport.calls] == ["POST", "POST", "GET"]


def test_backoff_doubles_up_to_the_cap_with_jitter():
    ceilings = [backoff(n, 5.0, 300.0, rand=lambda: 1.0) for n in range(10)]
    assert ceilings == [5, 10, 20, 40, 80, 160, 300, 300, 300, 300]
    lows = [backoff(n, 5.0, 300.0, rand=lambda: 0.0) for n in range(3)]
    assert lows == [2.5, 5, 10], "never less than half: no client comes straight back"
    assert 2.5 <= retry_delay(0) <= 5.0 and k8s.HANDLER_BACKOFF_CAP == 300.0
