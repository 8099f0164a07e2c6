"""kubetune's operator beside a Go peer, Kubeflow Trainer v2 (+ JobSet), on the same simulated cluster.

For each operator, N and repeat: a fresh control plane (etcd, kube-apiserver, controller-manager,
scheduler, KWOK with 2 x 8-GPU nodes and a CPU node, as in the e2e tier), one operator at a time,
out of cluster, leader election off. Once its caches synced, N resources (FineTuneJob or TrainJob:
1 node, 1 nvidia.com/gpu, same cpu/memory) are created by a thread pool, and the benchmark
measures, from watch events matched by controller ownerReference:

- create call returned -> first event of its child (kubetune: the Job; Trainer v2: the JobSet)
  and -> first event of its pod (created by the Job controller), p50/p95/p99;
- makespan: first create -> last child, -> last pod;
- peak RSS (VmHWM) and CPU seconds of the operator processes (Trainer v2: trainer-controller-manager
  and the JobSet controller, apart and summed);
- apiserver write requests per resource over the whole lifecycle (until every Job completed and
  writes settled), from the apiserver's own apiserver_request_total, with a breakdown by
  resource[/subresource] in the JSON.

`--mode defaults`: each operator as shipped. `--mode equal`: Trainer v2 and JobSet are given
kubetune's concurrency (its KUBETUNE_WORKERS default) and no effective client rate limit; the
output states what each controller really started (see benchmarks/peers/trainer_v2.py).
Trainer v2 and JobSet are built by hack/peers.sh (Go modules, cached).

    KUBEBUILDER_ASSETS=$(bash hack/build-k8s.sh) PATH=$(bash hack/tools.sh):$PATH \\
        ~/.cache/kubetune/venv/bin/python benchmarks/operator_peer.py --sizes 100,500,1000 \\
        --repeats 1 --mode defaults --json /tmp/peer-defaults.json
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import requests  # noqa: E402
from kubernetes import client as k8s  # noqa: E402

from benchmarks.operator_scale import NS, proc_usage  # noqa: E402
from benchmarks.peers import report  # noqa: E402
from benchmarks.peers.apiserver_metrics import (  # noqa: E402
    BACKGROUND_RESOURCES, WRITE_VERBS, request_counts, write_delta, writes_per_resource)
from benchmarks.peers.subjects import SUBJECTS, Subject  # noqa: E402
from benchmarks.peers.trainer_v2 import PeerSettings, peer_build  # noqa: E402
from benchmarks.peers.watch import FirstSeen, job_complete  # noqa: E402
from kubetune.settings import OperatorSettings  # noqa: E402
from tests.support.cluster_fixtures import _start_kwok  # noqa: E402
from tests.support.controlplane import ControlPlane  # noqa: E402
from tests.support.tools import assets_dir  # noqa: E402


KUBETUNE_WORKERS = OperatorSettings.from_env({}).workers  # what the operator runs with, unset


def apiserver_counts(cp: ControlPlane):
    r = requests.get(f"{cp.server}/metrics", cert=(str(cp.pki.admin_cert), str(cp.pki.admin_key)),
                     verify=str(cp.pki.ca_cert), timeout=30)
    r.raise_for_status()
    return request_counts(r.text)


def settle_writes(cp: ControlPlane, jobs: FirstSeen, job_names: set[str], timeout: float) -> bool:
    """Wait until every Job completed and the non-background writes stopped growing for two
    polls in a row (status updates after completion land); False if `timeout` ran out."""
    deadline = time.monotonic() + timeout
    last, quiet = None, 0
    while time.monotonic() < deadline:
        jobs.check()
        if job_names <= set(jobs.done):
            counts = apiserver_counts(cp)
            total = sum(n for (verb, res), n in counts.items()
                        if verb in WRITE_VERBS and res not in BACKGROUND_RESOURCES)
            quiet = quiet + 1 if total == last else 0
            if quiet >= 2:
                return True
            last = total
        time.sleep(2)
    return False


def run_once(subject: Subject, n: int, threads: int, timeout: float) -> dict:
    cp = ControlPlane(assets_dir(), Path(tempfile.mkdtemp(prefix=f"kubetune-peer-{subject.name}-")))
    watches: list[FirstSeen] = []
    try:
        cp.start()
        cp.start_controllers()
        _start_kwok(cp)
        cp.create_namespace(NS)
        subject.start(cp)
        time.sleep(2)  # same pause for both after their readiness signal
        jobs = FirstSeen(cp, f"/apis/batch/v1/namespaces/{NS}/jobs", job_complete).start()
        watches.append(jobs)
        pods = FirstSeen(cp, f"/api/v1/namespaces/{NS}/pods").start()
        watches.append(pods)
        children = jobs if subject.child_path is None else FirstSeen(cp, subject.child_path(NS)).start()
        if children is not jobs:
            watches.append(children)
        before = apiserver_counts(cp)
        usage_before = {k: proc_usage(pid) for k, pid in subject.pids().items()}
        custom = k8s.CustomObjectsApi(cp.api_client())
        created: dict[str, float] = {}

        def create(i: int) -> None:
            name = f"bench-{i:04d}"
            custom.create_namespaced_custom_object(subject.group, subject.version, NS, subject.plural,
                                                   subject.body(name, NS))
            created[name] = time.monotonic()

        t0 = time.monotonic()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(create, range(n)))
        t_applied = time.monotonic() - t0

        def resolved() -> tuple[dict[str, float], dict[str, float]]:
            # Copies (one C-level step each under the GIL): the watch threads keep adding entries.
            child_first, job_first, pod_first = dict(children.first), dict(jobs.first), dict(pods.first)
            child_seen = {owner[1]: t for t, owner in child_first.values()
                          if owner and owner[0] == subject.parent_kind}
            job_parent = subject.job_parent(job_first, child_first)
            pod_owner = {pod: (t, owner[1]) for pod, (t, owner) in pod_first.items() if owner and owner[0] == "Job"}
            return child_seen, report.pod_seen_by_parent(pod_owner, job_parent)

        deadline = t0 + timeout
        while True:
            for w in watches:
                w.check()
            child_seen, pod_seen = resolved()
            if set(created) <= set(child_seen) and set(created) <= set(pod_seen):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{subject.name}, N={n}: {len(child_seen)} children, {len(pod_seen)} pods "
                                   f"of {n} after {timeout:.0f} s\n{cp.describe()}")
            time.sleep(0.5)
        at_pods = apiserver_counts(cp)
        parent_jobs = set(subject.job_parent(dict(jobs.first), dict(children.first)))
        settled = settle_writes(cp, jobs, parent_jobs, timeout)
        after = apiserver_counts(cp)
        usage_after = {k: proc_usage(pid) for k, pid in subject.pids().items()}

        measures = {
            **report.latency_summary(report.latencies(created, child_seen), "child"),
            **report.latency_summary(report.latencies(created, pod_seen), "pod"),
            "makespan_child": max(child_seen.values()) - t0,
            "makespan_pod": max(pod_seen.values()) - t0,
            "applied_s": t_applied,
            "peak_rss_mb": sum(rss for rss, _ in usage_after.values()),
            "cpu_s": sum(usage_after[k][1] - usage_before[k][1] for k in usage_after),
        }
        if len(usage_after) > 1:
            for k in usage_after:
                measures[f"peak_rss_{k}_mb"] = usage_after[k][0]
                measures[f"cpu_{k}_s"] = usage_after[k][1] - usage_before[k][1]
        delta = write_delta(before, after)
        measures["writes_per_resource"] = writes_per_resource(delta, n)
        return {
            "operator": subject.name, "n": n, "measures": measures, "writes": delta,
            "writes_until_last_pod": write_delta(before, at_pods), "writes_settled": settled,
            "startup": {k: {"rss_mb": rss, "cpu_s": cpu} for k, (rss, cpu) in usage_before.items()},
            "details": subject.details(),
        }
    finally:
        for w in watches:
            w.stop()
        subject.stop()
        cp.stop()
        shutil.rmtree(cp.workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,500,1000", help="comma-separated N (resources created per run)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per (operator, N); tables show medians")
    parser.add_argument("--mode", choices=("defaults", "equal"), default="defaults")
    parser.add_argument("--operators", default=",".join(SUBJECTS), help=f"comma-separated, of {sorted(SUBJECTS)}")
    parser.add_argument("--threads", type=int, default=8, help="client threads creating resources")
    parser.add_argument("--timeout", type=float, default=900, help="seconds a run may take to reach each stage")
    parser.add_argument("--json", type=Path, help="write every run's raw results here (rewritten after each run)")
    parser.add_argument("--tables-from", type=Path, metavar="JSON",
                        help="run nothing: print the tables of a --json file written earlier")
    args = parser.parse_args()
    if args.tables_from:
        saved = json.loads(args.tables_from.read_text())
        runs = saved["runs"]
        print(report.markdown(saved, sorted({r["n"] for r in runs}), max(r["repeat"] for r in runs) + 1,
                              list(dict.fromkeys(r["operator"] for r in runs))))
        return
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        parser.error(f"--sizes must be comma-separated integers, got {args.sizes!r}")
    operators = args.operators.split(",")
    unknown = set(operators) - set(SUBJECTS)
    if unknown or not operators:
        parser.error(f"--operators: unknown {sorted(unknown)}; choose from {sorted(SUBJECTS)}")
    if args.repeats < 1 or any(n < 1 for n in sizes):
        parser.error("--repeats and --sizes must be positive")

    peer = PeerSettings.equal_to(KUBETUNE_WORKERS) if args.mode == "equal" else PeerSettings()
    build = peer_build() if report.TRAINER_V2 in operators else None
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    settings = {"mode": args.mode, "kubetune": {"KUBETUNE_WORKERS": KUBETUNE_WORKERS,
                                                "client_rate_limit": "none (kubernetes Python client)"},
                "trainer-v2": peer.describe(), "cpus": os.cpu_count(), "threads": args.threads}
    results: dict = {"command": command, "settings": settings, "runs": []}
    started = time.monotonic()
    for n in sizes:
        for repeat in range(args.repeats):
            for name in operators:
                subject = SUBJECTS[name](build=build, peer_settings=peer)
                print(f"[peer] {name} N={n} repeat {repeat + 1}/{args.repeats} ...", file=sys.stderr, flush=True)
                run = run_once(subject, n, args.threads, args.timeout)
                run.update(repeat=repeat, mode=args.mode)
                results["runs"].append(run)
                print(f"[peer]   {json.dumps(run['measures'])}", file=sys.stderr, flush=True)
                if args.json:
                    args.json.write_text(json.dumps(results, indent=1))
    results["wall_s"] = time.monotonic() - started
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print(report.markdown(results, sizes, args.repeats, operators))


if __name__ == "__main__":
    main()
