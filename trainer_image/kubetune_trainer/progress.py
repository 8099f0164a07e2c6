"""Progress reporting: one small interface, a console bar locally and a status patch on a cluster."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from typing import Protocol

from kubetune.api.common import GROUP, VERSION
from kubetune.api.finetunejob import CheckpointRef, DatasetSummary, EvaluationSummary, Progress

log = logging.getLogger(__name__)


# The status sections the trainer owns besides progress, by the key they occupy in status.
Section = DatasetSummary | CheckpointRef | EvaluationSummary
SECTION_KEYS: dict[type, str] = {DatasetSummary: "dataset", CheckpointRef: "lastCheckpoint", EvaluationSummary: "evaluation"}


class ProgressReporter(Protocol):
    def report(self, progress: Progress, force: bool = False) -> None:
        """Publish the latest progress; `force` bypasses throttling (the final report)."""

    def publish(self, section: Section) -> None:
        """Publish a rare, whole status section: the data summary, a new complete checkpoint, the evaluation."""

    def close(self) -> None: ...


class ConsoleReporter:
    """A tqdm bar over optimizer steps with the latest losses and throughput."""

    def __init__(self) -> None:
        self._bar = None

    def report(self, progress: Progress, force: bool = False) -> None:
        from tqdm.auto import tqdm

        if progress.total_steps is None or progress.step is None:
            return
        if self._bar is None:
            self._bar = tqdm(total=progress.total_steps, unit="step", dynamic_ncols=True, initial=progress.step)
        self._bar.update(progress.step - self._bar.n)
        fields = {}
        if progress.train_loss is not None:
            fields["loss"] = f"{progress.train_loss:.4f}"
        if progress.eval_loss is not None:
            fields["eval"] = f"{progress.eval_loss:.4f}"
        if progress.tokens_per_second is not None:
            fields["tok/s"] = f"{progress.tokens_per_second:.0f}"
        self._bar.set_postfix(fields, refresh=True)

    def publish(self, section: Section) -> None:
        pass  # a local run prints the data report and the final summary itself

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class KubernetesStatusReporter:
    """Merge-patches status.progress (and nothing else) of the trainer's own FineTuneJob.

    Uses the pod's ServiceAccount through the status subresource; the operator
    grants a Role limited to this one object. At most one patch per
    `min_interval_s`; a failed patch is logged and training goes on.
    """

    PLURAL = "finetunejobs"

    def __init__(self, name: str, namespace: str, min_interval_s: float = 10.0, api: object | None = None):
        self.name, self.namespace, self.min_interval_s = name, namespace, min_interval_s
        self._api = api
        self._last_sent = float("-inf")
        self._pending: Progress | None = None

    def _client(self) -> object:
        if self._api is None:
            from kubernetes import client, config

            config.load_incluster_config()
            self._api = client.CustomObjectsApi()
        return self._api

    @staticmethod
    def body(progress: Progress) -> dict:
        return {"status": {"progress": progress.to_wire()}}

    def report(self, progress: Progress, force: bool = False) -> None:
        self._pending = progress
        now = time.monotonic()
        if not force and now - self._last_sent < self.min_interval_s:
            return
        self._last_sent = now
        if self._patch(self.body(progress)):
            self._pending = None

    def publish(self, section: Section) -> None:
        # Called from the checkpoint uploader's thread too; each call is one independent patch.
        self._patch({"status": {SECTION_KEYS[type(section)]: section.to_wire()}})

    def _patch(self, body: dict) -> bool:
        try:
            self._client().patch_namespaced_custom_object_status(GROUP, VERSION, self.namespace, self.PLURAL, self.name, body)
            return True
        except Exception as err:  # noqa: BLE001 - status is informative; never fail training over it
            log.warning("could not report status to %s/%s: %s", self.namespace, self.name, err)
            return False

    def close(self) -> None:
        if self._pending is not None:
            self.report(self._pending, force=True)


def make_reporter(kind: str, name: str, namespace: str) -> ProgressReporter:
    if kind == "kubernetes":
        return KubernetesStatusReporter(name, namespace)
    if kind == "console":
        return ConsoleReporter()
    raise ValueError(f"progressReporter: unknown reporter {kind!r} (expected console or kubernetes)")


def now() -> datetime:
    return datetime.now(timezone.utc)
