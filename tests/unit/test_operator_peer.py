"""The pure parts of benchmarks/operator_peer.py: apiserver write counting, latencies and
percentiles, medians over repeats, the ratio table, and reading the Go controllers' logs."""

from __future__ import annotations

from collections import Counter

import pytest

from benchmarks.peers import report
from benchmarks.peers.apiserver_metrics import request_counts, write_delta, writes_per_resource
from benchmarks.peers.subjects import Kubetune, TrainerV2
from benchmarks.peers.trainer_v2 import PeerSettings, cluster_training_runtime, trainjob, worker_counts
from benchmarks.peers.watch import controller_owner, job_complete

pytestmark = pytest.mark.unit


def _sample(verb: str, resource: str, value: float, code: str = "201", subresource: str = "",
            group: str = "batch") -> str:
    return (f'apiserver_request_total{{code="{code}",component="apiserver",dry_run="",group="{group}",'
            f'resource="{resource}",scope="resource",subresource="{subresource}",verb="{verb}",version="v1"}} {value}')


METRICS_BEFORE = "\n".join([
    "# HELP apiserver_request_total [STABLE] Counter of apiserver requests",
    "# TYPE apiserver_request_total counter",
    _sample("POST", "jobs", 3),
    _sample("GET", "jobs", 50, code="200"),
    _sample("PATCH", "pods", 1, code="200", subresource="status", group=""),
    "apiserver_request_duration_seconds_count{verb=\"POST\",resource=\"jobs\"} 99",
])
METRICS_AFTER = "\n".join([
    _sample("POST", "jobs", 13),
    _sample("POST", "jobs", 2, code="409"),           # failed writes are writes too
    _sample("GET", "jobs", 500, code="200"),
    _sample("PATCH", "pods", 21, code="200", subresource="status", group=""),
    _sample("APPLY", "jobsets", 10, code="200", group="jobset.x-k8s.io"),  # server-side apply
    _sample("PUT", "leases", 7, code="200", group="coordination.k8s.io"),
    _sample("DELETE", "pods", 1e1, code="200", group=""),
])


def test_request_counts_sums_codes_and_names_subresources() -> None:
    counts = request_counts(METRICS_AFTER)
    assert counts[("POST", "jobs")] == 15
    assert counts[("PATCH", "pods/status")] == 21
    assert counts[("DELETE", "pods")] == 10
    assert ("POST", "jobs") in request_counts(METRICS_BEFORE)
    assert request_counts(METRICS_BEFORE)[("POST", "jobs")] == 3  # the duration histogram is not counted


def test_request_counts_rejects_a_sample_without_verb() -> None:
    with pytest.raises(ValueError, match="verb/resource"):
        request_counts('apiserver_request_total{code="200",resource="jobs"} 4')


def test_write_delta_counts_only_writes_by_resource() -> None:
    delta = write_delta(request_counts(METRICS_BEFORE), request_counts(METRICS_AFTER))
    assert delta == {"pods/status": 20, "jobs": 12, "jobsets": 10, "pods": 10, "leases": 7}
    assert list(delta) == ["pods/status", "jobs", "jobsets", "pods", "leases"]  # largest first


def test_write_delta_refuses_a_counter_that_went_down() -> None:
    with pytest.raises(ValueError, match="counter went down"):
        write_delta(Counter({("POST", "jobs"): 5}), Counter({("POST", "jobs"): 4}))


def test_writes_per_resource_leaves_background_writes_out() -> None:
    delta = {"jobs": 10, "pods": 10, "leases": 50, "nodes/status": 40}
    assert writes_per_resource(delta, 10) == 2.0
    with pytest.raises(ValueError, match="created"):
        writes_per_resource(delta, 0)


def test_latency_summary_uses_nearest_rank_percentiles() -> None:
    values = [float(i) for i in range(1, 101)]  # 1..100
    summary = report.latency_summary(reversed(values), "child")
    assert summary == {"child_p50": 51.0, "child_p95": 95.0, "child_p99": 99.0, "child_max": 100.0}
    with pytest.raises(ValueError, match="no pod latencies"):
        report.latency_summary([], "pod")


def test_latencies_refuse_a_missing_child() -> None:
    created = {"a": 10.0, "b": 11.0}
    assert sorted(report.latencies(created, {"a": 10.5, "b": 13.0})) == [0.5, 2.0]
    with pytest.raises(ValueError, match="1 of 2 created resources"):
        report.latencies(created, {"a": 10.5})


def test_pod_seen_by_parent_waits_for_every_pod_and_ignores_strangers() -> None:
    pods = {"p1": (5.0, "job-a"), "p2": (7.0, "job-a"), "p3": (6.0, "job-b"), "p4": (1.0, "other")}
    assert report.pod_seen_by_parent(pods, {"job-a": "a", "job-b": "b"}) == {"a": 7.0, "b": 6.0}


def _run(operator: str, n: int, **measures: float) -> dict:
    return {"operator": operator, "n": n, "measures": measures, "writes": {}, "details": {}}


def test_median_runs_groups_by_operator_and_n() -> None:
    runs = [_run("kubetune", 100, child_p99=1.0), _run("kubetune", 100, child_p99=9.0),
            _run("kubetune", 100, child_p99=2.0), _run("kubetune", 500, child_p99=7.0),
            _run("trainer-v2", 100, child_p99=4.0, peak_rss_jobset_mb=50.0)]
    medians = report.median_runs(runs)
    assert medians[("kubetune", 100)] == {"child_p99": 2.0}
    assert medians[("kubetune", 500)] == {"child_p99": 7.0}
    assert medians[("trainer-v2", 100)] == {"child_p99": 4.0, "peak_rss_jobset_mb": 50.0}


def test_ratio_table_divides_kubetune_by_the_peer() -> None:
    medians = {("kubetune", 100): {"child_p99": 1.5, "peak_rss_mb": 150.0},
               ("trainer-v2", 100): {"child_p99": 3.0, "peak_rss_mb": 100.0, "peak_rss_jobset_mb": 60.0}}
    table = report.ratio_table(100, medians, repeats=3)
    assert "N = 100 (median of 3 runs)" in table
    assert "| create → child, p99 | 1.50 s | 3.00 s | 0.50 |" in table
    assert "| peak RSS (VmHWM), all operator processes | 150 MB | 100 MB | 1.50 |" in table
    assert "| — of which JobSet controller | — | 60 MB | — |" in table
    assert "p50" not in table  # measures neither operator has are left out


def test_writes_table_per_resource_and_markdown_carries_the_command() -> None:
    runs = [dict(_run("kubetune", 10), writes={"jobs": 10, "finetunejobs/status": 40}),
            dict(_run("trainer-v2", 10), writes={"jobs": 10, "services": 10})]
    table = report.writes_table(10, runs)
    assert "| finetunejobs/status | 4.00 | — |" in table
    assert "| jobs | 1.00 | 1.00 |" in table
    assert table.index("finetunejobs/status") < table.index("| jobs")
    text = report.markdown({"command": "python x --sizes 10", "settings": {"mode": "equal"}, "runs": runs},
                           [10], 1, ["kubetune", "trainer-v2"])
    assert "Command: `python x --sizes 10`" in text and '"mode": "equal"' in text


def test_worker_counts_read_both_log_formats() -> None:
    json_log = ('{"level":"info","msg":"Starting workers","controller":"trainjob_controller","worker count":1}\n'
                '{"level":"info","msg":"Starting EventSource","controller":"x"}')
    console_log = ('2026-11-30T23:36:52Z\tINFO\tStarting workers\t{"controller": "jobset", '
                   '"controllerGroup": "jobset.x-k8s.io", "controllerKind": "JobSet", "worker count": 1}')
    assert worker_counts(json_log) == {"trainjob_controller": 1}
    assert worker_counts(console_log) == {"jobset": 1}


def test_equal_settings_take_kubetune_workers_and_lift_rate_limits() -> None:
    equal = PeerSettings.equal_to(32)
    assert equal.trainjob_concurrency == 32 and equal.runtime_concurrency == 32
    assert min(equal.trainer_qps, equal.jobset_qps) >= 10_000
    assert PeerSettings().trainer_qps == 50 and PeerSettings().jobset_qps == 500


def test_runtime_spells_out_jobset_defaults_and_trainjob_asks_for_one_gpu() -> None:
    spec = cluster_training_runtime("img")["spec"]
    jobset = spec["template"]["spec"]
    assert jobset["successPolicy"] == {"operator": "All"}
    assert jobset["network"] == {"enableDNSHostnames": True, "publishNotReadyAddresses": True}
    (rjob,) = jobset["replicatedJobs"]
    assert rjob["template"]["spec"]["completionMode"] == "Indexed"
    assert rjob["template"]["spec"]["template"]["spec"]["restartPolicy"] == "OnFailure"
    body = trainjob("t", "ns", 1, "1", "4Gi")
    assert body["spec"]["trainer"]["resourcesPerNode"]["requests"] == {"cpu": "1", "memory": "4Gi",
                                                                      "nvidia.com/gpu": 1}


def test_jobs_trace_back_to_the_created_resource_by_controller_owner() -> None:
    jobs = {"a-train": (1.0, ("FineTuneJob", "a")), "tj-node-0": (2.0, ("JobSet", "tj")),
            "loose": (3.0, None), "x-node-0": (2.0, ("JobSet", "unknown"))}
    jobsets = {"tj": (1.5, ("TrainJob", "tj")), "unknown": (1.5, None)}
    peer = TrainerV2(build=None, peer_settings=PeerSettings())
    assert Kubetune(build=None, peer_settings=PeerSettings()).job_parent(jobs, {}) == {"a-train": "a"}
    assert peer.job_parent(jobs, jobsets) == {"tj-node-0": "tj"}
    assert peer.body("n", "ns")["spec"]["trainer"]["resourcesPerNode"]["requests"]["nvidia.com/gpu"] == 1


def test_controller_owner_and_job_complete() -> None:
    obj = {"metadata": {"ownerReferences": [{"kind": "X", "name": "other"},
                                            {"kind": "Job", "name": "j", "controller": True}]},
           "status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    assert controller_owner(obj) == ("Job", "j")
    assert controller_owner({"metadata": {}}) is None
    assert job_complete(obj)
    assert not job_complete({"status": {"conditions": [{"type": "Complete", "status": "False"}]}})
