"""ModelDeployment end to end: the operator (as its own ServiceAccount) on the simulated cluster,
the real Prometheus, and vLLM stand-ins taking bounded loopback load.

KWOK makes the serving pods Ready; the vLLM stand-ins play those pods' servers: one
process per revision, scraped by Prometheus with the labels a pod-label relabelling
gives (namespace, revision). The load generator follows the weight the
ModelDeployment reports as served, so what Prometheus sees is what the rollout did.
Traffic routing is the replica ratio (no Gateway here; the data-plane tests add one).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from kubernetes import client as k8s

from kubetune.api import GROUP, VERSION
from tests.e2e.operator_process import OperatorProcess
from tests.e2e.rollout_harness import ERRORS, INTERVAL, Serving, start_canary, start_stable
from tests.support.controlplane import ControlPlane
from tests.support.procs import wait_for
from tests.support.prometheus_fixtures import Prometheus

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def operator(e2e_cluster: ControlPlane, kubetune_crds: list[str], prometheus: Prometheus) -> Iterator[OperatorProcess]:
    op = OperatorProcess(e2e_cluster, env={
        "KUBETUNE_PROMETHEUS_ADDRESS": prometheus.url,
        "KUBETUNE_ROLLOUT_TICK_SECONDS": "1",
        # No slow safety-net pass: every convergence here must come from events and the rollout tick.
        "KUBETUNE_RESYNC_SECONDS": "3600",
        "KUBETUNE_TRAINER_IMAGE": "kubetune-trainer:e2e",
        "KUBETUNE_DEFAULT_STORAGE_URI": "s3://platform/runs",
    }).start()
    yield op
    op.stop()


@pytest.fixture
def serving(e2e_cluster, prometheus, vllm_standins, operator) -> Iterator[Serving]:
    s = Serving(e2e_cluster, prometheus, vllm_standins)
    yield s
    s.close()


def test_healthy_canary_is_promoted(serving: Serving):
    stable = start_stable(serving)
    assert serving.deployments() == [f"bot-{stable}"]
    canary = start_canary(serving)
    st = serving.wait(lambda st: (st.get("stable") or {}).get("revision") == canary and not st.get("canary"),
                      "canary promoted", timeout=90)
    assert st["phase"] == "Healthy"
    assert any(m["phase"] == "Successful" and m["revision"] == canary for m in st["measurements"])
    # Events are posted right after the status that records them.
    wait_for(lambda: {"CanaryStarted", "Promoted"} <= set(serving.event_reasons()), 10, "the rollout's Events")
    # The old stable retires after scaleDownDelaySeconds.
    wait_for(lambda: serving.deployments() == [f"bot-{canary}"], 30, "old stable Deployment deleted")
    assert serving.status()["conditions"][0]["type"] == "Ready"


def test_injected_errors_roll_the_canary_back(serving: Serving, operator: OperatorProcess):
    start_stable(serving)
    canary = start_canary(serving, error_rate=0.6)
    t0 = time.monotonic()
    st = serving.wait(lambda st: st.get("phase") == "RolledBack", "canary rolled back", timeout=60)
    assert not st.get("canary") and not st.get("achievedWeight")
    aborted = st["aborted"][-1]
    assert aborted["revision"] == canary and aborted["reason"] == "AnalysisFailed"
    assert "errors" in aborted["message"] and "max 0.1" in aborted["message"]
    failed = [m for m in st["measurements"] if m["phase"] == "Failed"]
    assert failed and failed[-1]["value"] > 0.1 and failed[-1]["threshold"]
    wait_for(lambda: "RolledBack" in serving.event_reasons(), 10, "the RolledBack Event")
    wait_for(lambda: 'kubetune_rollbacks_total{reason="AnalysisFailed"}' in operator.metrics(), 10, "the rollback metric")
    # Never re-attempted by itself: the spec still names the bad model.
    time.sleep(3 * INTERVAL)
    st = serving.status()
    assert st["phase"] == "RolledBack" and not st.get("canary")
    print(f"rollback {time.monotonic() - t0:.1f}s after the canary got its faulty stand-in")


def test_injected_latency_rolls_the_canary_back(serving: Serving):
    latency = {"name": "latency", "builtin": "latency-p95", "max": 0.5}
    start_stable(serving, analysis={"intervalSeconds": INTERVAL, "failureLimit": 1, "metrics": [latency],
                                    "noData": {"minSamples": 5, "timeoutSeconds": 60, "outcome": "Pause"}})
    canary = start_canary(serving, latency_seconds=0.9)
    st = serving.wait(lambda st: st.get("phase") == "RolledBack", "canary rolled back on latency", timeout=60)
    assert st["aborted"][-1]["revision"] == canary and "latency" in st["aborted"][-1]["message"]


def test_canary_worse_than_stable_is_rolled_back_by_the_baseline_check(serving: Serving):
    # 10% errors stays far under the absolute max of 50% but is well above the stable's 0%. The
    # step is long, so the second failure (failureLimit 1) comes well before it could end.
    check = {"name": "errors", "builtin": "error-rate", "max": 0.5, "baseline": {"maxDifference": 0.03}}
    start_stable(serving, analysis={"intervalSeconds": INTERVAL, "failureLimit": 1, "metrics": [check],
                                    "noData": {"minSamples": 5, "timeoutSeconds": 60, "outcome": "Pause"}},
                 rollout={"steps": [{"weight": 50, "pauseSeconds": 60}], "scaleDownDelaySeconds": 2})
    canary = start_canary(serving, error_rate=0.1)
    st = serving.wait(lambda st: st.get("phase") == "RolledBack", "rolled back by the baseline", timeout=60)
    failed = [m for m in st["measurements"] if m["phase"] == "Failed" and m["revision"] == canary]
    assert failed, st["measurements"]
    assert all(m["value"] <= 0.5 and m["baseline"] == 0 and m["value"] > 0.03 for m in failed), failed
    assert "stable" in failed[-1]["message"]


def test_no_traffic_waits_then_ends_as_configured(serving: Serving):
    serving.apply(analysis={"intervalSeconds": INTERVAL, "metrics": [ERRORS],
                            "noData": {"minSamples": 5, "timeoutSeconds": 10, "outcome": "Abort"}})
    stable = serving.wait(lambda st: st.get("phase") == "Healthy", "stable")["stable"]["revision"]
    serving.serve(stable)  # no load at all
    canary = start_canary(serving)
    st = serving.wait(lambda st: any(m["metric"] == "samples" for m in st.get("measurements") or []),
                      "a waiting measurement", timeout=30)
    assert st["phase"] == "Progressing" and st["canary"]["revision"] == canary  # waiting is not failing
    assert st["analysis"]["failed"] == 0 and st["analysis"]["inconclusive"] == 0
    st = serving.wait(lambda st: st.get("phase") == "RolledBack", "no-data outcome", timeout=40)
    assert st["aborted"][-1]["reason"] == "NoData"


def test_prometheus_down_gives_error_measurements_and_the_configured_outcome(serving: Serving, tmp_path):
    own = Prometheus(tmp_path / "prom").start()
    try:
        serving.prometheus = own
        start_stable(serving, analysis={
            # A Prometheus shutting down can answer one query with no data before it stops answering:
            # only the errors are under test, so inconclusive results are tolerated here.
            "prometheusAddress": own.url, "intervalSeconds": INTERVAL, "failureLimit": 1, "metrics": [ERRORS],
            "consecutiveErrorLimit": 2, "errorOutcome": "Pause", "inconclusiveLimit": 100,
            "noData": {"minSamples": 5, "timeoutSeconds": 60, "outcome": "Pause"}},
            rollout={"steps": [{"weight": 50, "pauseSeconds": 600}], "scaleDownDelaySeconds": 2})
        canary = start_canary(serving)
        serving.wait(lambda st: (st.get("analysis") or {}).get("successful", 0) >= 1, "a successful round", timeout=60)
        own.stop()
        st = serving.wait(lambda st: st.get("held") == "AnalysisError", "held on errors", timeout=60)
        assert st["phase"] == "Paused"
        errors = [m for m in st["measurements"] if m["phase"] == "Error"]
        assert len(errors) >= 3 and st["analysis"]["consecutiveErrors"] >= 3
        assert st["held"] == "AnalysisError" and st["canary"]["revision"] == canary
        assert not st.get("aborted")  # errorOutcome Pause: held, not rolled back
    finally:
        own.stop()


def test_operator_restart_mid_rollout_resumes_at_the_same_step(serving: Serving, operator: OperatorProcess):
    start_stable(serving, rollout={"steps": [{"weight": 50, "pauseSeconds": 600}], "scaleDownDelaySeconds": 2})
    canary = start_canary(serving)
    before = serving.wait(lambda st: (st.get("analysis") or {}).get("successful", 0) >= 2, "two passed rounds", 60)
    operator.stop()
    frozen = serving.status()
    time.sleep(2 * INTERVAL)
    assert serving.status()["analysis"] == frozen["analysis"]  # nothing measures while the operator is down
    operator.start()
    after = serving.wait(lambda st: st["analysis"]["successful"] > frozen["analysis"]["successful"],
                         "analysis resumed", timeout=60)
    assert after["canary"]["revision"] == canary and after["currentStep"] == before["currentStep"] == 0
    assert after["canaryWeight"] == 50 and after["stepStartedAt"] == frozen["stepStartedAt"]
    assert after["analysis"]["failed"] == 0
    assert len(serving.deployments()) == 2  # stable + canary, nothing duplicated


def succeed_finetunejob(s: Serving, name: str, regressions: int = 0) -> dict:
    """A FineTuneJob run to success by the operator on KWOK, then the trainer's evaluation written into its status."""
    s.custom.create_namespaced_custom_object(GROUP, VERSION, s.ns, "finetunejobs", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneJob", "metadata": {"name": name, "namespace": s.ns},
        "spec": {"baseModel": {"uri": "s3://models/base"}, "dataset": {"train": "s3://data/train.jsonl"},
                 "method": "lora", "lora": {"r": 32},
                 "resources": {"gpusPerNode": 1, "cpu": "2", "memory": "8Gi"}}})

    def succeeded():
        ftj = s.custom.get_namespaced_custom_object(GROUP, VERSION, s.ns, "finetunejobs", name)
        return ftj if (ftj.get("status") or {}).get("phase") == "Succeeded" else None
    ftj = wait_for(succeeded, 60, f"FineTuneJob {name} Succeeded")
    s.custom.patch_namespaced_custom_object_status(GROUP, VERSION, s.ns, "finetunejobs", name, {"status": {
        "evaluation": {"samples": 60, "baseLoss": 0.6, "tunedLoss": 0.1, "regressions": regressions}}})
    return ftj


def test_a_finetunejob_that_succeeds_rolls_out_its_adapter(serving: Serving):
    serving.apply(uri=None, model={"fineTuneJobRef": {"name": "tune"}})
    st = serving.wait(lambda st: st.get("phase") == "Progressing", "waiting for the job")
    assert "tune" in st["message"] and not serving.deployments()
    first = succeed_finetunejob(serving, "tune")
    st = serving.wait(lambda st: st.get("phase") == "Healthy", "the job's adapter served")
    assert st["stable"]["modelUri"] == first["status"]["artifacts"]["adapterUri"]
    assert st["stable"]["fineTuneJob"] == "tune" and st["stable"]["loraRank"] == 32
    # The same job succeeding again (recreated: new outputs) is the next canary revision by itself.
    serving.custom.delete_namespaced_custom_object(GROUP, VERSION, serving.ns, "finetunejobs", "tune")
    wait_for(lambda: not serving.custom.list_namespaced_custom_object(GROUP, VERSION, serving.ns, "finetunejobs")["items"],
             30, "old FineTuneJob gone")
    batch = k8s.BatchV1Api(serving.cluster.api_client())
    wait_for(lambda: not batch.list_namespaced_job(serving.ns).items, 60, "old trainer Job garbage-collected")
    succeed_finetunejob(serving, "tune")
    st = serving.wait(lambda st: st.get("canary"), "the new job output as a canary")
    assert st["canary"]["revision"] != st["stable"]["revision"] and st["canary"]["fineTuneJob"] == "tune"


def test_a_regressed_finetunejob_does_not_roll_out(serving: Serving):
    succeed_finetunejob(serving, "worse", regressions=3)
    serving.apply(uri=None, model={"fineTuneJobRef": {"name": "worse"}})
    st = serving.wait(lambda st: st.get("phase") == "Degraded", "refused")
    stalled = next(c for c in st["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "EvaluationRegressed"
    assert "3 regressions" in st["message"]
    time.sleep(2)
    assert not serving.deployments()


def route_weights(s: Serving) -> dict[str, int]:
    route = s.custom.get_namespaced_custom_object("gateway.networking.k8s.io", "v1", s.ns, "httproutes", s.name)
    refs = route["spec"]["rules"][0]["backendRefs"]
    return {ref["name"].removeprefix(f"{s.name}-"): ref.get("weight", 1) for ref in refs}


def test_gateway_route_weights_follow_the_steps_and_abort_removes_the_canary(serving: Serving, gateway_api_crds):
    serving.apply(analysis={"metrics": []}, rollout={
        "steps": [{"weight": 20, "pauseSeconds": 3}, {"weight": 60, "pauseSeconds": 3}], "scaleDownDelaySeconds": 4,
        "trafficRouting": {"gatewayParentRefs": [{"name": "gw", "namespace": "gateways"}]}})
    stable = serving.wait(lambda st: st.get("phase") == "Healthy", "stable")["stable"]["revision"]
    assert route_weights(serving) == {stable: 100}
    client = serving.core.read_namespaced_service(serving.name, serving.ns)
    assert client.spec.selector["kubetune.io/revision"] == stable  # clients of the Service reach stable only
    serving.patch({"model": {"uri": "s3://models/adapter-v2"}})
    seen: list[dict[str, int]] = []

    def promoted():
        weights = route_weights(serving)
        if not seen or seen[-1] != weights:
            seen.append(weights)
        st = serving.status()
        return st if st.get("phase") == "Healthy" and st["stable"]["revision"] != stable else None
    st = wait_for(promoted, 60, "promoted through the Gateway", interval=0.2)
    canary = st["stable"]["revision"]
    assert {stable: 80, canary: 20} in seen and {stable: 40, canary: 60} in seen, seen
    # Status is written first, then the cluster follows it: the route catches up within a pass.
    wait_for(lambda: route_weights(serving) == {canary: 100}, 10, "all traffic on the promoted revision")
    assert serving.core.read_namespaced_service(serving.name, serving.ns).spec.selector["kubetune.io/revision"] == canary

    # A third revision, aborted by hand: out of the route at once, its pods kept for the delay, then deleted.
    serving.patch({"model": {"uri": "s3://models/adapter-v3"}})
    third = serving.wait(lambda st: st.get("canary"), "third revision canary")["canary"]["revision"]
    wait_for(lambda: route_weights(serving).get(third) == 20, 30, "third revision at 20%")
    serving.patch({"abort": True})
    wait_for(lambda: third not in route_weights(serving), 10, "canary out of the route", interval=0.2)
    assert f"{serving.name}-{third}" in serving.deployments()  # still draining
    wait_for(lambda: f"{serving.name}-{third}" not in serving.deployments(), 30, "aborted canary deleted")
    st = serving.status()
    assert st["phase"] == "RolledBack" and st["aborted"][-1]["reason"] == "ManualAbort"
