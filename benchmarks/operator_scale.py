"""How the operator copes with many FineTuneJobs at once, on the simulated cluster.

Starts etcd + kube-apiserver + controller-manager + scheduler + KWOK (the e2e
fixtures' arrangement), runs `kubetune operator` as its own ServiceAccount,
creates N FineTuneJobs as fast as a few client threads can, and measures:

- apply -> Job created: from a FineTuneJob's create call returning to its Job
  showing up on a watch (p50 / p99 / max);
- total: first apply to the last Job seen, and to the last status written;
- the operator's peak RSS (VmHWM) and CPU seconds (utime + stime).

Goal on 2 cores: p99 <= 20 s and peak RSS <= 200 MB.

    KUBEBUILDER_ASSETS=$(bash hack/build-k8s.sh) PATH=$(bash hack/tools.sh):$PATH \\
        $(bash hack/bootstrap.sh)/bin/python benchmarks/operator_scale.py --jobs 500

`--queue NAME` sets spec.queueName (Jobs created suspended for Kueue, no pods);
`--workers N` sets the operator's KUBETUNE_WORKERS.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kubernetes import client as k8s, watch  # noqa: E402

from kubetune.api import GROUP, VERSION  # noqa: E402
from tests.e2e.operator_process import OperatorProcess  # noqa: E402
from tests.support.cluster_fixtures import _start_kwok  # noqa: E402
from tests.support.controlplane import ControlPlane  # noqa: E402
from tests.support.tools import assets_dir  # noqa: E402

NS = "scale"


def finetunejob(name: str, queue: str | None) -> dict:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneJob", "metadata": {"name": name, "namespace": NS},
        "spec": {
            "baseModel": {"uri": "s3://models/llama-3-8b"},
            "dataset": {"train": "s3://data/train.jsonl"},
            "storage": {"uri": "s3://runs/scale"},
            "resources": {"gpusPerNode": 1, "cpu": "1", "memory": "4Gi"},
        },
    }
    if queue:
        body["spec"]["queueName"] = queue  # created suspended for Kueue (not installed): no pods
    return body


def proc_usage(pid: int) -> tuple[float, float]:
    """(peak RSS in MB, CPU seconds) of a live process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    hwm_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return hwm_kb / 1024, (int(fields[11]) + int(fields[12])) / ticks


def reconcile_summary(metrics: str) -> str:
    """'trigger: count (mean ms)' from the operator's own histogram."""
    sums, counts = {}, {}
    for line in metrics.splitlines():
        for name, into in (("kubetune_reconcile_duration_seconds_sum", sums),
                           ("kubetune_reconcile_duration_seconds_count", counts)):
            if line.startswith(name + "{"):
                trigger = line.split('trigger="', 1)[1].split('"', 1)[0]
                into[trigger] = float(line.rsplit(" ", 1)[1])
    errors = {}
    for line in metrics.splitlines():
        if line.startswith("kubetune_reconcile_errors_total{"):
            errors[line.split('trigger="', 1)[1].split('"', 1)[0]] = int(float(line.rsplit(" ", 1)[1]))
    return ", ".join(f"{t}: {int(counts[t])} ({1000 * sums[t] / counts[t]:.0f} ms, {errors.get(t, 0)} errors)"
                     for t in sorted(counts) if counts[t])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def run(jobs: int, threads: int, crds: Path, workers: int | None, queue: str | None,
        extra_env: dict[str, str]) -> None:
    cp = ControlPlane(assets_dir(), Path(tempfile.mkdtemp(prefix="kubetune-scale-")))
    try:
        cp.start()
        cp.start_controllers()
        _start_kwok(cp)
        cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crds))
        cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/finetunejobs.kubetune.io")
        cp.create_namespace(NS)
        env = {"KUBETUNE_TRAINER_IMAGE": "kubetune-trainer:bench", **extra_env}
        if workers:
            env["KUBETUNE_WORKERS"] = str(workers)
        op = OperatorProcess(cp, env=env).start()
        idle_rss, idle_cpu = proc_usage(op.pid)

        api = cp.api_client()
        custom, batch = k8s.CustomObjectsApi(api), k8s.BatchV1Api(cp.api_client())
        applied: dict[str, float] = {}
        seen: dict[str, float] = {}
        all_seen = threading.Event()

        def watch_jobs() -> None:
            for event in watch.Watch().stream(batch.list_namespaced_job, NS, timeout_seconds=600):
                name = event["object"].metadata.name.removesuffix("-train")
                seen.setdefault(name, time.monotonic())
                if len(seen) >= jobs:
                    all_seen.set()
                    return

        watcher = threading.Thread(target=watch_jobs, daemon=True)
        watcher.start()
        time.sleep(1)  # the watch is established

        def create(i: int) -> None:
            name = f"ftj-{i:04d}"
            custom.create_namespaced_custom_object(GROUP, VERSION, NS, "finetunejobs", finetunejob(name, queue))
            applied[name] = time.monotonic()

        t0 = time.monotonic()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(create, range(jobs)))
        t_applied = time.monotonic() - t0
        if not all_seen.wait(600):
            raise SystemExit(f"only {len(seen)}/{jobs} Jobs appeared within 600 s")
        t_jobs = max(seen.values()) - t0

        def statuses_written() -> int:
            items = custom.list_namespaced_custom_object(GROUP, VERSION, NS, "finetunejobs")["items"]
            return sum(1 for o in items if (o.get("status") or {}).get("phase"))

        while statuses_written() < jobs:
            if time.monotonic() - t0 > 900:
                raise SystemExit("statuses did not converge within 900 s")
            time.sleep(1)
        t_status = time.monotonic() - t0
        peak_rss, cpu = proc_usage(op.pid)
        latencies = [seen[n] - applied[n] for n in applied]
        pods = ("queued for Kueue, so no pods" if queue else
                "KWOK runs each 1-GPU trainer pod for 1 s on 16 fake GPUs")
        print(f"\nkubetune operator, {jobs} FineTuneJobs created by {threads} client threads; {pods}; "
              f"whole cluster on {os.cpu_count()} CPUs\n")
        print("| measure | value |")
        print("|---|---|")
        print(f"| apply -> Job created, p50 | {statistics.median(latencies):.2f} s |")
        print(f"| apply -> Job created, p99 | {percentile(latencies, 0.99):.2f} s |")
        print(f"| apply -> Job created, max | {max(latencies):.2f} s |")
        print(f"| all {jobs} applied | {t_applied:.1f} s |")
        print(f"| first apply -> last Job created | {t_jobs:.1f} s |")
        print(f"| first apply -> every status written | {t_status:.1f} s |")
        print(f"| operator peak RSS (VmHWM) | {peak_rss:.0f} MB (idle {idle_rss:.0f} MB) |")
        print(f"| operator CPU | {cpu - idle_cpu:.1f} s (startup {idle_cpu:.1f} s) |")
        print(f"| reconciles (mean duration) | {reconcile_summary(op.metrics())} |")
        op.stop()
    finally:
        cp.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--threads", type=int, default=8, help="client threads creating FineTuneJobs")
    parser.add_argument("--crds", type=Path, default=REPO / "crds")
    parser.add_argument("--workers", type=int, help="the operator's KUBETUNE_WORKERS (default: its own default)")
    parser.add_argument("--queue", help="set spec.queueName: Jobs are created suspended, no pods run")
    parser.add_argument("--operator-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for the operator process (e.g. MALLOC_ARENA_MAX=2)")
    args = parser.parse_args()
    extra_env = dict(item.split("=", 1) for item in args.operator_env)
    run(args.jobs, args.threads, args.crds, args.workers, args.queue, extra_env)


if __name__ == "__main__":
    main()
