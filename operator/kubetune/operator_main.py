"""The operator process: kopf with deliberate settings, plus /metrics.

One replica (standalone, no peering): the Deployment uses the Recreate
strategy, and every decision is idempotent (deterministic child names,
create-if-absent), so an overlap during a restart cannot double a Job.
"""

from __future__ import annotations

import asyncio
import logging
import os
import types

import kopf
import kopf._cogs.clients.api as kopf_api
import orjson
from kubernetes import client, config
from prometheus_client import start_http_server

from kubetune.api.resources import MODELDEPLOYMENT
from kubetune.finetunejob.handlers import resync_loop, start_retries  # importing registers the handlers with kopf
from kubetune.modeldeployment.handlers import tick_loop
from kubetune.k8s import Kube
from kubetune.context import Context
from kubetune.settings import OperatorSettings

ANNOTATION_PREFIX = "kubetune.io"


# The only kind with kopf create/update/resume handlers (modeldeployment/handlers.py), so the only
# one kopf needs a diff base for; tests/unit/test_operator_settings.py keeps this true.
DIFFED_KINDS = frozenset({MODELDEPLOYMENT.kind})


class LeanDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's diff base in annotations, only where it is used and built without copying what it
    throws away.

    kopf builds (deep-copying the whole body) and reads a diff base on every event of every
    watched kind, though only changing handlers use it: here that is ModelDeployments; the
    FineTuneJobs, trainer Jobs and pods have event handlers only, and get none. That work was
    ~13 % of the operator's CPU in a 1,000-job burst even with the copy trimmed (py-spy --gil).
    Where it is built, it is built from the spec, labels and annotations only, not from a copy of
    the whole body with managedFields and status; tests/unit/test_operator_settings.py compares
    it with kopf's own.
    """

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return super().fetch(body=body) if body.get("kind") in DIFFED_KINDS else None

    def build(self, *, body: kopf.Body, extra_fields=None) -> kopf.BodyEssence:
        if body.get("kind") not in DIFFED_KINDS:
            return kopf.BodyEssence()
        if extra_fields:  # a handler watches a field outside the spec: kopf's own way
            return super().build(body=body, extra_fields=extra_fields)
        meta = body.get("metadata", {})
        lean = {key: value for key, value in body.items() if key not in ("metadata", "status")}
        lean["metadata"] = {key: meta[key] for key in ("name", "namespace", "labels", "annotations") if key in meta}
        return super().build(body=kopf.Body(lean), extra_fields=extra_fields)


def decode_watch_events_with_orjson() -> None:
    """kopf decodes each watch event with the standard library's json.loads (one call in kopf
    1.45's api.stream; pinned in pyproject.toml): ~11 % of the operator's CPU in a 1,000-job burst
    (py-spy --gil), a third of that with orjson. tests/unit/test_operator_settings.py fails if a kopf
    upgrade moves that call."""
    kopf_api.json = types.SimpleNamespace(loads=orjson.loads)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: object) -> None:
    # Events: only the operator's explicit ones (a phase change, an ignored spec
    # change), not every log line, so a busy cluster is not flooded.
    settings.posting.level = logging.INFO
    settings.posting.loggers = False
    settings.posting.reporting_component = "kubetune-operator"
    settings.posting.reporting_instance = os.environ.get("POD_NAME", "kubetune-operator")
    # The handler threads bound the API calls in flight. kopf's per-object workers linger
    # idle_timeout (5 s) after their object's last event, and each holds copies of its body:
    # 64 slots throttled a burst to ~10 new jobs/s, no cap let memory grow with the burst;
    # 300 balanced latency and memory for 500 simultaneous jobs (docs/benchmarks.md).
    settings.queueing.worker_limit = 300
    settings.execution.max_workers = memo.ctx.settings.workers
    # Handler state lives in annotations: the structural status schema would prune status.kopf.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = LeanDiffBaseStorage(prefix=ANNOTATION_PREFIX)
    settings.execution.default_backoff = 5  # an apiserver hiccup should not stall a job for a minute
    # Single replica: no KopfPeering objects; no CRD/namespace scanning (needs no cluster-wide reads).
    settings.peering.standalone = True
    settings.scanning.disabled = True
    # Reconnect watches that went quiet (e.g. a silently dropped connection).
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60


@kopf.on.startup()
async def start_background(memo: kopf.Memo, logger: logging.Logger, **_: object) -> None:
    """The time-driven work kopf has no place for without finalizers: plain asyncio tasks."""
    start_retries(memo.ctx)
    memo.background = [asyncio.create_task(resync_loop(memo.ctx, logger)),
                       asyncio.create_task(tick_loop(memo.ctx, logger))]


@kopf.on.cleanup()
async def stop_background(memo: kopf.Memo, **_: object) -> None:
    for task in memo.get("background", []):
        task.cancel()


def api_client(pool_size: int) -> client.ApiClient:
    """In-cluster credentials in a pod; otherwise $KUBECONFIG / ~/.kube/config."""
    cfg = client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=cfg)
    else:
        config.load_kube_config(client_configuration=cfg)
    cfg.connection_pool_maxsize = pool_size
    return client.ApiClient(cfg)


def run(namespaces: list[str], metrics_port: int, liveness_port: int) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # kopf's per-object debug chatter is not useful at INFO; keep our own loggers.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # every liveness probe otherwise
    settings = OperatorSettings.from_env()
    decode_watch_events_with_orjson()
    if metrics_port:
        start_http_server(metrics_port)
    kopf.run(
        clusterwide=not namespaces,
        namespaces=namespaces,
        standalone=True,
        liveness_endpoint=f"http://0.0.0.0:{liveness_port}/healthz" if liveness_port else None,
        memo=kopf.Memo(ctx=Context(kube=Kube(api_client(settings.workers)), settings=settings)),
    )
    return 0
