"""The kubelet loop: every pod on a fake node whose images are all mapped runs here for real.

Level-triggered: every `interval` s the runner lists the pods bound to the fake
nodes and moves each of its pods one step on (start, retry a config error,
report exit, stop on deletion); pods it does not own are KWOK's.
"""

from __future__ import annotations

import itertools
import json
import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from .images import LocalImage
from .probe import Prober
from .resolve import ConfigError, Resolver, VolumeError
from .sandbox import ContainerProcess, PodSandbox
from .status import ContainerState, now, pod_status, termination_message

log = logging.getLogger("pod_runner")

CONFIG_RETRY_S = 3.0  # the kubelet retries a pod's config/mount errors every few seconds too


@dataclass
class PodRun:
    uid: str
    namespace: str
    name: str
    sandbox: PodSandbox
    pod_ip: str
    host_ip: str
    start_time: str = field(default_factory=now)
    containers: list[ContainerState] = field(default_factory=list)
    processes: dict[str, ContainerProcess] = field(default_factory=dict)
    next_attempt: float = 0.0
    reported: str = ""            # the last status body sent (patch only on change)
    deletion_seen: float | None = None
    grace_s: float = 30.0
    finished: bool = False
    deleted: bool = False

    launched: bool = False        # containers were started (or failed to start): never started again

    @property
    def started(self) -> bool:
        return self.launched


class PodRunner:
    """netns: run containers in this network namespace (tests/support/netns.py) and probe their
    readiness there; without one, pods share the machine's namespace, their IPs are labels only
    (never contacted) and a running container counts as ready."""

    def __init__(self, api_client: k8s.ApiClient, apiserver_port: int, workdir: Path,
                 images: dict[str, LocalImage], nodes: set[str], interval: float = 0.5,
                 netns=None, ip_base: str = "10.245"):
        self.core = k8s.CoreV1Api(api_client)
        self.port, self.workdir, self.images, self.nodes, self.interval = apiserver_port, workdir, images, nodes, interval
        self.netns = netns
        self.prober = Prober(netns.call) if netns is not None else None
        self.runs: dict[str, PodRun] = {}
        self.errors: list[str] = []  # runner-side failures (shown when a test fails)
        self._ips = (f"{ip_base}.{i // 250}.{i % 250 + 2}" for i in itertools.count())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.log_file = workdir / "pod-runner.log"
        workdir.mkdir(parents=True, exist_ok=True)

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> "PodRunner":
        self._thread = threading.Thread(target=self._loop, name="pod-runner", daemon=True)
        self._thread.start()
        return self

    def stop(self, grace_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        procs = [p for run in self.runs.values() for p in run.processes.values() if p.poll() is None]
        for p in procs:
            p.send(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.1)
        for p in procs:
            if p.poll() is None:
                p.send(signal.SIGKILL)
                p.proc.wait(5)

    def _note(self, text: str) -> None:
        with open(self.log_file, "a") as f:
            f.write(f"{now()} {text}\n")

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception as err:  # noqa: BLE001 - the loop must survive a bad tick; the error is kept for the report
                self.errors.append(f"{now()} {type(err).__name__}: {err}")
                self._note(f"tick failed: {type(err).__name__}: {err}")
            self._stop.wait(self.interval)

    # -- the loop's one step ------------------------------------------------------------------------
    def owns(self, pod: dict) -> bool:
        spec = pod.get("spec") or {}
        return spec.get("nodeName") in self.nodes and all(c["image"] in self.images for c in spec["containers"])

    def tick(self) -> None:
        raw = self.core.list_pod_for_all_namespaces(field_selector="spec.nodeName!=", _preload_content=False)
        pods = [p for p in json.loads(raw.data)["items"] if self.owns(p)]
        for pod in pods:
            try:
                self.reconcile(pod)
            except ApiException as err:
                if err.status not in (404, 409):  # gone or changed meanwhile: the next tick sees the truth
                    raise
        seen = {p["metadata"]["uid"] for p in pods}
        for uid, run in list(self.runs.items()):
            if uid not in seen and not run.deleted:
                # Deleted with grace 0 by someone else (force delete): nothing left to report to.
                for p in run.processes.values():
                    p.send(signal.SIGKILL)
                run.deleted = True
                self._note(f"{run.namespace}/{run.name}: pod gone, processes killed")
        self._refresh_hosts(pods)

    def reconcile(self, pod: dict) -> None:
        meta, status = pod["metadata"], pod.get("status") or {}
        run = self.runs.get(meta["uid"])
        deleting = meta.get("deletionTimestamp") is not None
        if run is None:
            if deleting or status.get("phase") in ("Succeeded", "Failed"):
                if deleting:
                    self._delete_now(meta)
                return
            run = self._new_run(pod)
        if run.deleted:
            return
        if not run.started:
            if deleting:  # never started: nothing to stop
                run.deleted = True
                self._delete_now(meta)
                return
            if time.monotonic() >= run.next_attempt:
                self._try_start(run, pod)
        elif not run.finished:
            if deleting:
                self._stop_containers(run, meta)
            self._probe(run, pod)
            self._collect(run, pod)
        if run.finished and deleting:
            # The final status is written first: the Job controller counts a pod from its last status.
            run.deleted = True
            self._delete_now(meta)

    # -- steps ----------------------------------------------------------------------------------
    def _new_run(self, pod: dict) -> PodRun:
        meta = pod["metadata"]
        root = self.workdir / "pods" / f"{meta['namespace']}_{meta['name']}_{meta['uid'][:8]}"
        run = PodRun(meta["uid"], meta["namespace"], meta["name"], PodSandbox(root, pod), next(self._ips),
                     self._host_ip(pod["spec"]["nodeName"]),
                     containers=[ContainerState(c["name"], c["image"]) for c in pod["spec"]["containers"]])
        self.runs[run.uid] = run
        self._note(f"{run.namespace}/{run.name}: new pod on {pod['spec']['nodeName']}, dir {root}")
        return run

    def _host_ip(self, node: str) -> str:
        addresses = (self.core.read_node(node).status.addresses or [])
        return next((a.address for a in addresses if a.type == "InternalIP"), "10.240.0.1")

    def _try_start(self, run: PodRun, pod: dict) -> None:
        resolver = Resolver(self.core, pod, run.pod_ip, run.host_ip)
        containers = pod["spec"]["containers"]
        try:
            volumes = [resolver.volume(v) for v in pod["spec"].get("volumes") or []]
        except VolumeError as err:
            self._waiting(run, pod, "ContainerCreating", f"MountVolume.SetUp failed: {err}")
            return
        envs = []
        for i, c in enumerate(containers):
            try:
                envs.append(self._base_env(run, c) | resolver.env(c))
            except ConfigError as err:
                self._waiting(run, pod, "CreateContainerConfigError", str(err), only=i)
                return
        run.sandbox.write_volumes(volumes)
        self._refresh_hosts([pod])
        started = now()
        for c, env, state in zip(containers, envs, run.containers):
            state.probed_ready = self.prober is None or not c.get("readinessProbe")
            try:
                run.processes[c["name"]] = run.sandbox.start(c, self.images[c["image"]], env,
                                                             wrap=self.netns.command if self.netns else None)
                state.started_at, state.waiting = started, None
            except (OSError, ValueError) as err:  # e.g. the command is not on the image's PATH
                state.waiting, state.exit_code, state.started_at, state.finished_at = None, 128, started, started
                state.message = f"StartError: {err}"
        self._note(f"{run.namespace}/{run.name}: started {sorted(run.processes)} as "
                   f"{ {n: p.proc.pid for n, p in run.processes.items()} }")
        run.launched = True
        self._report(run, pod)
        if all(s.terminated for s in run.containers):
            run.finished = True

    def _base_env(self, run: PodRun, container: dict) -> dict[str, str]:
        image = self.images[container["image"]]
        host, port = "127.0.0.1", str(self.port)
        derived = image.from_pod(run.sandbox.pod, run.pod_ip) if image.from_pod else {}
        # What every container gets from the kubelet: its hostname and the "kubernetes" Service,
        # which here is the test apiserver on loopback (the in-cluster client reads these two).
        return {**image.env, **derived, "HOSTNAME": run.sandbox.hostname, "KUBERNETES_SERVICE_HOST": host,
                "KUBERNETES_SERVICE_PORT": port, "KUBERNETES_SERVICE_PORT_HTTPS": port,
                "KUBERNETES_PORT": f"tcp://{host}:{port}", "KUBERNETES_PORT_443_TCP": f"tcp://{host}:{port}"}

    def _waiting(self, run: PodRun, pod: dict, reason: str, message: str, only: int | None = None) -> None:
        for i, state in enumerate(run.containers):
            state.waiting = (reason, message) if only is None or i == only else ("ContainerCreating", "")
        run.next_attempt = time.monotonic() + CONFIG_RETRY_S
        self._report(run, pod)

    def _stop_containers(self, run: PodRun, meta: dict) -> None:
        t = time.monotonic()
        if run.deletion_seen is None:
            run.deletion_seen = t
            run.grace_s = float(meta.get("deletionGracePeriodSeconds") or 0)
            self._note(f"{run.namespace}/{run.name}: deletion requested, SIGTERM (grace {run.grace_s:.0f}s)")
            for p in run.processes.values():
                p.send(signal.SIGTERM)
        elif t - run.deletion_seen >= run.grace_s:
            for p in run.processes.values():
                if p.poll() is None and not p.killed:
                    self._note(f"{run.namespace}/{run.name}/{p.name}: grace period over, SIGKILL")
                    p.send(signal.SIGKILL)
                    p.killed = True

    def _probe(self, run: PodRun, pod: dict) -> None:
        """Readiness probes of running containers (every tick; a kubelet honours periodSeconds)."""
        if self.prober is None or run.deletion_seen is not None:
            if run.deletion_seen is not None:
                for state in run.containers:
                    state.probed_ready = False  # a terminating pod is never ready
            return
        for c, state in zip(pod["spec"]["containers"], run.containers):
            if state.running and c.get("readinessProbe"):
                ready = self.prober.ready(c, run.pod_ip)
                if ready != state.probed_ready:
                    self._note(f"{run.namespace}/{run.name}/{state.name}: readiness {ready}")
                state.probed_ready = ready

    def _collect(self, run: PodRun, pod: dict) -> None:
        for state in run.containers:
            proc = run.processes.get(state.name)
            if proc is None or state.terminated:
                continue
            code = proc.poll()
            if code is None:
                continue
            state.exit_code, state.finished_at = code, now()
            state.message = termination_message(proc.message_file, proc.log, proc.policy, code)
            self._note(f"{run.namespace}/{run.name}/{state.name}: exited {code}")
        self._report(run, pod)  # sends only what changed (exits, readiness)
        if all(s.terminated for s in run.containers):
            run.finished = True

    def _report(self, run: PodRun, pod: dict) -> None:
        body = pod_status(run.containers, run.pod_ip if run.started else None, run.host_ip, run.start_time)
        key = json.dumps({k: v for k, v in body.items() if k != "conditions"}, sort_keys=True)
        if key == run.reported:
            return
        self.core.patch_namespaced_pod_status(run.name, run.namespace, {"status": body})
        run.reported = key

    def _delete_now(self, meta: dict) -> None:
        try:
            self.core.delete_namespaced_pod(meta["name"], meta["namespace"], grace_period_seconds=0,
                                            body=k8s.V1DeleteOptions(grace_period_seconds=0,
                                                                     preconditions=k8s.V1Preconditions(uid=meta["uid"])))
        except ApiException as err:
            if err.status not in (404, 409):
                raise

    def _refresh_hosts(self, pods: list[dict]) -> None:
        """Pods with a subdomain reach their peers by <hostname>.<subdomain>.<ns>.svc: all on loopback here."""
        groups: dict[tuple[str, str], list[str]] = {}
        for p in pods:
            sub = p["spec"].get("subdomain")
            if sub:
                host = p["spec"].get("hostname") or p["metadata"]["name"]
                ns = p["metadata"]["namespace"]
                groups.setdefault((ns, sub), []).extend(
                    [f"{host}.{sub}.{ns}.svc.cluster.local", f"{host}.{sub}.{ns}.svc", f"{host}.{sub}.{ns}", f"{host}.{sub}"])
        for p in pods:
            run = self.runs.get(p["metadata"]["uid"])
            if run is None or run.deleted:
                continue
            sub = p["spec"].get("subdomain")
            names = [run.sandbox.hostname] + (groups.get((run.namespace, sub), []) if sub else [])
            run.sandbox.write_hosts(list(dict.fromkeys(names)))

    # -- for tests -----------------------------------------------------------------------------
    def run_of(self, namespace: str, name: str) -> PodRun | None:
        return next((r for r in self.runs.values() if (r.namespace, r.name) == (namespace, name)), None)

    def logs(self, namespace: str, name: str, container: str | None = None) -> str:
        """What `kubectl logs` would show (the runner has no kubelet API, so tests read it here)."""
        run = self.run_of(namespace, name)
        if run is None:
            raise KeyError(f"pod {namespace}/{name} never ran here")
        container = container or run.containers[0].name
        path = run.sandbox.log_path(container)
        return path.read_text(errors="replace") if path.is_file() else ""

    def describe(self, lines: int = 30) -> str:
        from ..procs import tail

        parts = [f"--- pod runner ({self.log_file}) ---", tail(self.log_file, lines), *self.errors[-5:]]
        for run in list(self.runs.values())[-6:]:
            for state in run.containers:
                parts.append(f"--- pod {run.namespace}/{run.name} container {state.name} ---")
                parts.append(tail(run.sandbox.log_path(state.name), lines))
        return "\n".join(parts)
