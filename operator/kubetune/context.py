"""What every handler of both controllers needs; one instance lives in kopf's memo."""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass, field

from kubetune.finetunejob.retries import RetryQueue
from kubetune.k8s import Kube
from kubetune.settings import OperatorSettings


@dataclass(frozen=True)
class Context:
    """What every handler needs; kept in kopf's memo. Keys are namespace/name."""

    kube: Kube
    settings: OperatorSettings
    # Job uid -> the Job state last reconciled; Job events that change nothing in it are skipped.
    handled_jobs: dict[str, tuple] = field(default_factory=dict)
    # Job uid -> (its FineTuneJob's namespace/name, Kueue's verdict last read from its Workload) for
    # every trainer Job found queued; a Workload event with another verdict reconciles that job.
    kueue_verdicts: dict[str, tuple[str, tuple[str, str] | None]] = field(default_factory=dict)
    # Trainer pod uid -> the blocker reason last acted on (None: none); see finetunejob.handlers.on_trainer_pod.
    pod_blockers: dict[str, str | None] = field(default_factory=dict)
    # FineTuneJob uid -> the generation this process last reconciled it at (finetunejob.handlers.reconcile_trigger).
    acted_generations: dict[str, int] = field(default_factory=dict)
    # FineTuneJobs whose last reconcile failed, retried on timers (finetunejob/retries.py).
    retries: RetryQueue = field(default_factory=RetryQueue)
    # namespace/name -> time.monotonic() of its last reconciliation; the resync skips recent ones.
    last_reconciled: dict[str, float] = field(default_factory=dict)
    # namespace/name -> lock: a ModelDeployment is reconciled by one thread at a time, so the
    # rollout tick and an event never take the same analysis measurement twice.
    rollout_locks: defaultdict[str, threading.Lock] = field(default_factory=lambda: defaultdict(threading.Lock))
    # namespace/name of every ModelDeployment seen -> the FineTuneJob it refers to (or None).
    known_deployments: dict[str, str | None] = field(default_factory=dict)
    # namespace -> time.monotonic() its trainer identity was last found complete (finetunejob/identity.py).
    trainer_identities: dict[str, float] = field(default_factory=dict)
    # ModelDeployments with a canary, a retirement or an unhealthy phase: ticked often.
    active_rollouts: set[str] = field(default_factory=set)


