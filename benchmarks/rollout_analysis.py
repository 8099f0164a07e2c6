"""How fast and how reliably canary analysis decides, on the simulated cluster with the real Prometheus.

Runs the operator (as its own ServiceAccount) and, per run, one ModelDeployment whose
revisions are played by vLLM stand-ins under bounded loopback load that follows the
served weight (tests/e2e/rollout_harness.py). Two kinds of run, alternating:

- healthy: the canary answers like the stable; the right decision is Promoted;
- degraded: once the canary has passed one analysis round, and after a further random
  part of an interval (a fault does not wait for the analysis schedule), its stand-in
  starts answering 50 % HTTP 500; the right decision is a rollback. Measured: the time
  from the injection to the canary's weight being 0 (its Deployment scaled to 0
  replicas), in seconds and in analysis intervals. With failureLimit 1 two failed
  measurements are needed by definition.

Goals: degradation -> weight 0 in at most 2 intervals; 0 wrong decisions.

    KUBEBUILDER_ASSETS=$(bash hack/build-k8s.sh) PATH=$(bash hack/tools.sh):$PATH \\
        $(bash hack/bootstrap.sh)/bin/python benchmarks/rollout_analysis.py --runs 10 --interval 5
"""

from __future__ import annotations

import argparse
import random
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kubernetes import client as k8s  # noqa: E402

from tests.e2e.operator_process import OperatorProcess  # noqa: E402
from tests.e2e.rollout_harness import Serving  # noqa: E402
from tests.support.cluster_fixtures import _start_kwok  # noqa: E402
from tests.support.controlplane import ControlPlane  # noqa: E402
from tests.support.procs import wait_for  # noqa: E402
from tests.support.prometheus_fixtures import Prometheus  # noqa: E402
from tests.support.serving_fixtures import StandIns  # noqa: E402
from tests.support.tools import assets_dir  # noqa: E402


def one_run(cp: ControlPlane, prom: Prometheus, standins: StandIns, degraded: bool, interval: int,
            pause: int, failure_limit: int, rng: random.Random) -> tuple[str, float | None]:
    """(outcome, seconds from injection to canary weight 0, or None)."""
    s = Serving(cp, prom, standins)
    try:
        s.apply(rollout={"steps": [{"weight": 50, "pauseSeconds": pause}], "scaleDownDelaySeconds": 30},
                analysis={"intervalSeconds": interval, "failureLimit": failure_limit,
                          "metrics": [{"name": "errors", "builtin": "error-rate", "max": 0.1}],
                          "noData": {"minSamples": 5, "timeoutSeconds": 120, "outcome": "Pause"}})
        stable = s.wait(lambda st: st.get("phase") == "Healthy", "stable")["stable"]["revision"]
        s.serve(stable)
        s.start_load(rate=30, seconds=pause + 120)
        s.patch({"model": {"uri": "s3://models/adapter-v2"}})
        canary = s.wait(lambda st: st.get("canary"), "canary")["canary"]["revision"]
        server = s.serve(canary)
        injected = None
        if degraded:
            s.wait(lambda st: (st.get("analysis") or {}).get("successful", 0) >= 1, "one passed round", 120)
            time.sleep(rng.uniform(0, interval))
            server.set_faults(error_rate=0.5)
            injected = time.monotonic()
        apps = k8s.AppsV1Api(cp.api_client())

        def decided():
            st = s.status()
            if st.get("phase") == "RolledBack":
                dep = apps.read_namespaced_deployment(f"bot-{canary}", s.ns)
                return ("RolledBack", time.monotonic()) if dep.spec.replicas == 0 else None
            if (st.get("stable") or {}).get("revision") == canary:
                return ("Promoted", time.monotonic())
            return None
        outcome, at = wait_for(decided, pause + 180, "a decision", interval=0.1)
        return outcome, (at - injected) if injected is not None and outcome == "RolledBack" else None
    finally:
        s.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="runs in all, alternating healthy and degraded")
    parser.add_argument("--interval", type=int, default=5, help="analysis.intervalSeconds")
    parser.add_argument("--pause", type=int, default=30, help="pauseSeconds of the one 50 %% step")
    parser.add_argument("--failure-limit", type=int, default=1, help="analysis.failureLimit")
    parser.add_argument("--seed", type=int, default=1, help="seed of the injection moments")
    args = parser.parse_args()
    # A plain SIGTERM would skip `finally` and leave the cluster's processes running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix="kubetune-rollout-bench-"))
    cp = ControlPlane(assets_dir(), workdir)
    prom = Prometheus(workdir / "prometheus")
    standins = StandIns(workdir / "standins")
    (workdir / "standins").mkdir()
    try:
        cp.start()
        cp.start_controllers()
        _start_kwok(cp)
        cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
        cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/modeldeployments.kubetune.io")
        cp.restart_controller_manager()
        prom.start()
        op = OperatorProcess(cp, env={"KUBETUNE_PROMETHEUS_ADDRESS": prom.url, "KUBETUNE_ROLLOUT_TICK_SECONDS": "1",
                                      "KUBETUNE_TRAINER_IMAGE": "kubetune-trainer:bench"}).start()
        rows, times, wrong = [], [], 0
        rng = random.Random(args.seed)
        for i in range(args.runs):
            degraded = i % 2 == 1
            outcome, seconds = one_run(cp, prom, standins, degraded, args.interval, args.pause, args.failure_limit, rng)
            right = outcome == ("RolledBack" if degraded else "Promoted")
            wrong += not right
            if seconds is not None:
                times.append(seconds)
            rows.append((i + 1, "degraded" if degraded else "healthy", outcome, right, seconds))
        op.stop()
        print(f"\ncanary analysis: {args.runs} runs, intervalSeconds {args.interval}, failureLimit {args.failure_limit}, "
              f"error-rate max 0.1, degraded = 50 % HTTP 500, load 30 req/s, rollout tick 1 s\n")
        print("| run | canary | decision | right | injection -> weight 0 |")
        print("|---|---|---|---|---|")
        for n, kind, outcome, right, seconds in rows:
            when = f"{seconds:.1f} s = {seconds / args.interval:.2f} intervals" if seconds is not None else ""
            print(f"| {n} | {kind} | {outcome} | {'yes' if right else 'NO'} | {when} |")
        if times:
            print(f"\ninjection -> weight 0: median {statistics.median(times):.1f} s "
                  f"({statistics.median(times) / args.interval:.2f} intervals), max {max(times):.1f} s "
                  f"({max(times) / args.interval:.2f} intervals); wrong decisions: {wrong}")
    finally:
        standins.close()
        prom.stop()
        cp.stop()


if __name__ == "__main__":
    main()
