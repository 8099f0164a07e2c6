"""`kubetune train`, `kubetune validate-data`, `kubetune trainer-run` and `kubetune pull-model`.

Imported by the operator's CLI even where torch is absent, so torch and
transformers are imported only inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from kubetune.api.trainer_config import (
    CONFIG_ENV,
    CONFIG_PATH,
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_OK,
    TrainerConfig,
    run_root,
)


def register(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="fine-tune locally from a FineTuneJob manifest")
    train.add_argument("-f", "--filename", required=True, help="FineTuneJob YAML")
    train.add_argument("--output-dir", help="run directory or s3:// prefix, used as is (default: <spec.storage.uri>/<namespace>/<name>, else ./runs/<name>)")
    train.add_argument("--storage-endpoint", help="S3 endpoint URL (default: spec.storage.endpoint)")
    train.add_argument("--max-steps", type=int, help="override spec.hyperparameters.maxSteps")
    train.add_argument("--work-dir", help="scratch directory (default: <output-dir>/.work, or a temp dir for s3://)")
    train.set_defaults(func=_train)

    check = sub.add_parser("validate-data", help="check a JSONL dataset and print a report (exit 65 on defects)")
    check.add_argument("file", help="training JSONL")
    check.add_argument("--validation", help="validation JSONL (checked for leakage from train)")
    check.add_argument("--test", help="test JSONL")
    check.add_argument("--format", default="auto", choices=["auto", "chat", "alpaca", "prompt-completion", "text"])
    check.add_argument("--validation-split", type=float, default=0.1)
    check.add_argument("--seed", type=int, default=42)
    who = check.add_mutually_exclusive_group()
    who.add_argument("--model", help="model URI or path whose tokenizer and chat template measure lengths (pkg://, path, .gguf)")
    who.add_argument("--tokenizer", help="same as --model: a tokenizer directory or .gguf")
    check.add_argument("--max-seq-length", type=int, default=1024)
    check.add_argument("--json", action="store_true", help="print the JSON report instead of text")
    check.set_defaults(func=_validate_data)

    run = sub.add_parser("trainer-run", help=f"in-container entry point: run the TrainerConfig at ${CONFIG_ENV}")
    run.set_defaults(func=_trainer_run)

    from .evaluate_command import register as register_evaluate

    register_evaluate(sub)

    pull = sub.add_parser("pull-model", help="download an s3:// prefix (or a hf:// model) into a directory")
    pull.add_argument("uri", help="s3://bucket/prefix or hf://org/name")
    pull.add_argument("dest", help="directory to fill (created if missing)")
    pull.set_defaults(func=_pull_model)


def _logging() -> None:
    logging.basicConfig(level=os.environ.get("KUBETUNE_LOG_LEVEL", "WARNING"), format="%(levelname)s %(name)s: %(message)s")


def _validate_data(args: argparse.Namespace) -> int:
    from .data import DataError, check_dataset

    count, limit = None, None
    model = args.model or args.tokenizer
    try:
        if model:
            from .model import load_tokenizer, model_directory
            from .sources import resolve_uri
            from .tokenize import count_tokens

            count, limit = count_tokens(load_tokenizer(model_directory(resolve_uri(model, Path.cwd())))), args.max_seq_length
        report = check_dataset(
            Path(args.file), args.format,
            Path(args.validation) if args.validation else None, Path(args.test) if args.test else None,
            args.validation_split, args.seed, count_tokens=count, max_seq_length=limit,
        )
    except (DataError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format_text())
    return EXIT_OK if report.ok else EXIT_BAD_INPUT


def _train(args: argparse.Namespace) -> int:
    from kubetune.api.manifest import ManifestError, load_manifest

    _logging()
    try:
        manifest = load_manifest(args.filename, expect_kind="FineTuneJob")
    except (ManifestError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    spec = manifest.spec
    if args.max_steps is not None:
        spec = spec.model_copy(update={"hyperparameters": spec.hyperparameters.model_copy(update={"max_steps": args.max_steps})})
    if args.output_dir:
        storage_uri = args.output_dir
    elif spec.storage:
        storage_uri = run_root(spec.storage.uri, manifest.namespace, manifest.name)
    else:
        storage_uri = str(Path("runs") / manifest.name)
    endpoint = args.storage_endpoint or (spec.storage.endpoint if spec.storage else None)
    cfg = TrainerConfig(
        job_name=manifest.name, namespace=manifest.namespace, storage_uri=storage_uri, storage_endpoint=endpoint,
        storage_region=spec.storage.region if spec.storage else None, progress_reporter="console", spec=spec,
    )
    if args.work_dir:
        work_dir = Path(args.work_dir)
    elif storage_uri.startswith("s3://"):
        work_dir = Path(os.environ.get("TMPDIR", "/tmp")) / "kubetune-work" / f"{manifest.namespace}-{manifest.name}"
    else:
        work_dir = Path(storage_uri) / ".work"
    return _execute(cfg, manifest.source.parent.resolve(), work_dir, local=True)


def _trainer_run(args: argparse.Namespace) -> int:
    from .last_words import redact_output

    redact_output()  # before logging binds to stderr: the pod log never shows the credentials
    _logging()
    from .launch import TopologyError, launch_command

    try:
        launcher = launch_command(os.environ)
    except TopologyError as err:
        print(f"error: bad distributed environment: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    work_dir = Path(os.environ.get("KUBETUNE_WORK_DIR", "/tmp/kubetune-work"))
    if launcher is not None:
        # accelerate starts one worker per GPU, each re-entering trainer-run with RANK set; this
        # process stays the pod's main process and exits with the code the ranks agreed on.
        from .supervisor import supervise

        local_ranks = int(os.environ["NUM_PROCESSES"]) // int(os.environ.get("NUM_MACHINES") or 1)
        code, message = supervise(launcher, work_dir, local_ranks)
        if code != EXIT_OK:
            _last_words(message)
        return code
    from .supervisor import worker_output

    worker_output()
    path = Path(os.environ.get(CONFIG_ENV, CONFIG_PATH))
    try:
        cfg = TrainerConfig.model_validate_json(path.read_text())
    except Exception as err:  # noqa: BLE001 - a bad config is bad input whatever the cause
        print(f"error: cannot read the trainer config {path}: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    # On a cluster relative data paths are rejected by the operator; resolve against the cwd anyway.
    return _execute(cfg, Path.cwd(), work_dir, local=False)


def _pull_model(args: argparse.Namespace) -> int:
    """The serving pods' init container: S3 access from the standard AWS_* variables."""
    _logging()
    dest = Path(args.dest)
    try:
        if args.uri.startswith("s3://") and args.uri.removeprefix("s3://").strip("/").count("/") >= 1:
            count, size = _pull_s3(args.uri, dest)
        elif args.uri.startswith("hf://") and args.uri.removeprefix("hf://").count("/") == 1:
            from huggingface_hub import snapshot_download

            snapshot_download(args.uri.removeprefix("hf://"), local_dir=dest, token=os.environ.get("HF_TOKEN"))
            files = [p for p in dest.rglob("*") if p.is_file() and ".cache" not in p.parts]
            count, size = len(files), sum(p.stat().st_size for p in files)
        else:
            print(f"error: {args.uri}: pull-model takes s3://bucket/prefix or hf://org/name", file=sys.stderr)
            return EXIT_BAD_INPUT
    except Exception as err:  # noqa: BLE001 - one line for the pod's termination message
        print(f"error: cannot pull {args.uri}: {type(err).__name__}: {err}".replace("\n", " "), file=sys.stderr)
        return EXIT_FAILED
    print(f"pulled {count} files ({size / 2**20:.1f} MiB) from {args.uri} into {dest}")
    return EXIT_OK


def _pull_s3(uri: str, dest: Path) -> tuple[int, int]:
    """Every object under the prefix (an init container that restarts resumes). Returns (files, bytes)."""
    from .backends import S3Storage
    from .sources import download_prefix

    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    store = S3Storage(f"s3://{bucket}", os.environ.get("AWS_ENDPOINT_URL"),
                      os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"))
    sizes = download_prefix(store, prefix, dest)
    if not sizes:
        raise FileNotFoundError(f"no objects under {uri.rstrip('/')}/ (pull-model copies a prefix: a model directory)")
    return len(sizes), sum(sizes.values())


def _execute(cfg: TrainerConfig, base_dir: Path, work_dir: Path, local: bool) -> int:
    """Run the recipe on this rank. A rank of several (RANK set by the launcher) leaves its exit
    code and message in the work directory for the pod's main process (supervisor.py), which
    writes the termination message; a single process writes it itself."""
    from .progress import make_reporter
    from .ranks import Ranks, write_exit
    from .recipe import run

    started = time.monotonic()
    ranks = Ranks()
    try:
        ranks = Ranks.start()
        reporter = make_reporter(cfg.progress_reporter, cfg.job_name, cfg.namespace) if ranks.is_main else _Silent()
        result = run(cfg, base_dir, work_dir, reporter, ranks)
        code, message = result.exit_code, result.message
    except Exception as err:
        logging.getLogger("kubetune").exception("training failed")
        code, message, result = EXIT_FAILED, f"training failed: {type(err).__name__}: {err}", None
    if code == EXIT_OK and ranks.is_main and result is not None:
        print(summary(result, time.monotonic() - started))
    if "RANK" in os.environ:
        write_exit(work_dir, int(os.environ["RANK"]), code, message)
    elif not local and message and code != EXIT_OK:
        _last_words(message)
    return code


class _Silent:
    """The progress reporter of ranks other than 0: one rank reports for the job."""

    def report(self, progress, force: bool = False) -> None:
        pass

    def publish(self, section) -> None:
        pass

    def close(self) -> None:
        pass


def _last_words(message: str) -> None:
    """The pod's termination message (redacted), ending with the line the operator quotes in status."""
    from .last_words import Redactor, termination_message, write_termination_message

    lines = message.strip().splitlines() or [""]
    write_termination_message(termination_message("\n".join(lines[:-1]), lines[-1], Redactor.from_env()))


def summary(result, seconds: float) -> str:
    """The last thing a user reads: where the outputs are and what changed."""
    lines = ["", f"Done in {seconds / 60:.1f} min ({result.steps} steps"
             + (f", resumed from step {result.resumed_from}" if result.resumed_from else "") + ")."]
    for name, uri in result.artifacts.items():
        lines.append(f"  {name:<20} {uri}")
    if result.evaluation:
        from .metrics import format_report

        lines.append(format_report(result.evaluation))
    return "\n".join(lines)
