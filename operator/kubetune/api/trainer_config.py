"""The contract between the operator and the trainer.

The operator renders a TrainerConfig into an annotation of the trainer pod
template, which a downwardAPI volume writes to CONFIG_PATH; the trainer reads
it back with the same model. Exit codes tell
the Job's podFailurePolicy what happened.
"""

from __future__ import annotations

from pydantic import Field

from .common import KubeModel
from .finetunejob import FineTuneJobSpec

CONFIG_ENV = "KUBETUNE_CONFIG"          # path of the rendered TrainerConfig (JSON)
CONFIG_PATH = "/etc/kubetune/config.json"

EXIT_OK = 0
EXIT_FAILED = 1          # a bug or an unexpected error: counts against backoffLimit
EXIT_BAD_INPUT = 65      # EX_DATAERR: bad data or config; retrying cannot help, fail the Job at once
EXIT_PREEMPTED = 75      # EX_TEMPFAIL: SIGTERM handled, complete checkpoint saved; retry without counting


def run_root(storage_uri: str, namespace: str, name: str) -> str:
    """The prefix of one job's runs: <storage.uri>/<namespace>/<name>.

    `kubetune train` uses it as the run root itself (rerunning the same manifest resumes);
    the operator adds the FineTuneJob's uid below it, so each incarnation is its own run
    (builders.trainer.config.run_storage_uri).
    """
    return f"{storage_uri.rstrip('/')}/{namespace}/{name}"


class TrainerConfig(KubeModel):
    """Everything the trainer needs, resolved by the operator (or by `kubetune train` locally)."""

    job_name: str = Field(..., description="FineTuneJob name (also the run name).")
    namespace: str = Field("default", description="FineTuneJob namespace.")
    job_uid: str | None = Field(None, description="FineTuneJob UID; guards progress reports against a recreated job.")
    storage_uri: str = Field(..., description="Resolved root for this run: s3://bucket/prefix/<ns>/<name>/<run uid> on a cluster, <prefix>/<ns>/<name> or a local directory with kubetune train.")
    storage_endpoint: str | None = Field(None, description="S3 endpoint URL, if not AWS.")
    storage_region: str | None = Field(None, description="S3 region.")
    progress_reporter: str = Field("console", description="console (local runs) or kubernetes (patch own status).")
    spec: FineTuneJobSpec = Field(..., description="The FineTuneJob spec, defaults applied.")
