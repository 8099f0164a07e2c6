"""A revision resolved to what serving pods need: the input of every serving builder."""

from __future__ import annotations

from dataclasses import dataclass

from kubetune.api.modeldeployment import ModelStorage


@dataclass(frozen=True)
class ServedRevision:
    """One version of the model, as the serving pods load it.

    `revision` is a short hash of everything that changes what is served
    (sources, serving settings but not replica count), so the same inputs
    always give the same Deployment name and a restart finds what it built.
    """

    revision: str
    mode: str                      # "adapter" or "merged"
    model_uri: str                 # adapter directory (adapter mode) or full weights (merged mode)
    base_model_uri: str | None     # adapter mode: the base model
    lora_rank: int | None          # adapter mode: the adapter's rank
    storage: ModelStorage | None   # how to reach s3:// sources (credentials as a Secret reference)
    fine_tune_job: str | None = None
