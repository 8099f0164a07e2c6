"""The fine-tuning recipe, in a fixed order: check → setup → (resume) → train → save → evaluate.

Storage is the source of truth: the local work directory is scratch, every
checkpoint is uploaded (manifest last) and a restart resumes from the newest
complete one with optimizer, scheduler, RNG and data position restored.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune.api.finetunejob import CheckpointRef, DatasetSummary, EvaluationSummary, Progress
from kubetune.api.trainer_config import EXIT_BAD_INPUT, EXIT_OK, EXIT_PREEMPTED, TrainerConfig

from . import data as data_mod
from . import metrics
from .evaluate import Budget, answered, compare, generation_budget, score, scores_from_json, scores_to_json
from .model import export, load_model, load_tokenizer, model_directory, prepare_for_training, trainable_summary
from .progress import ProgressReporter, now
from .storage import (
    CheckpointUploader,
    LocalStorage,
    Storage,
    complete_checkpoints,
    download_checkpoint,
    open_storage,
    resolve_uri,
)
from .tokenize import PackedCollator, PaddedCollator, encode, padding_efficiency, training_rows, count_tokens

log = logging.getLogger(__name__)

DATA_REPORT = "reports/data-validation.json"
BASE_EVAL = "reports/base-scores.json"
EVAL_REPORT = "reports/evaluation.json"
METRICS = "metrics.jsonl"
LOSS_CURVE = "loss-curve.png"
ADAPTER = "adapter"
MERGED = "merged"
RESUME_STATE = "kubetune-state.json"  # inside each checkpoint: best eval, patience, metrics so far


class BadInput(Exception):
    """Bad data or configuration: retrying cannot help (exit code 65).

    `headline`, when the text's last line is not the one a user should read first (the pod's
    termination message ends with it and the operator quotes that line in status).
    """

    def __init__(self, text: str, headline: str | None = None):
        super().__init__(text)
        self.headline = headline


def data_headline(report: data_mod.DataReport) -> str:
    """The first defect with its file and line: what a user fixes first."""
    more = f" (and {len(report.errors) - 1} more)" if len(report.errors) > 1 else ""
    return f"bad data: {report.errors[0]}{more}"


@dataclass
class RunResult:
    exit_code: int
    storage: Storage
    message: str = ""  # why it stopped, for the pod's termination message (last line first to read)
    artifacts: dict[str, str] = field(default_factory=dict)
    evaluation: dict[str, Any] | None = None
    data_report: dict[str, Any] | None = None
    resumed_from: int | None = None
    steps: int = 0


def validate_config(cfg: TrainerConfig) -> list[str]:
    """Every problem in the config that the schema cannot see, at once (before any work starts)."""
    spec, hp = cfg.spec, cfg.spec.hyperparameters
    problems = []
    if spec.method == "qlora":
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            problems.append("spec.method: qlora needs bitsandbytes, which is not installed")
    if spec.early_stopping.enabled and spec.dataset.validation is None and spec.dataset.validation_split == 0:
        problems.append("spec.earlyStopping.enabled: needs validation data (dataset.validation or validationSplit > 0)")
    if hp.max_steps is not None and spec.storage and spec.storage.checkpoint_interval_steps > hp.max_steps:
        problems.append(
            f"spec.storage.checkpointIntervalSteps: {spec.storage.checkpoint_interval_steps} > maxSteps {hp.max_steps}; "
            "no checkpoint would be taken"
        )
    if cfg.progress_reporter not in ("console", "kubernetes"):
        problems.append(f"progressReporter: unknown reporter {cfg.progress_reporter!r} (expected console or kubernetes)")
    return problems


class _Preemption:
    """SIGTERM sets a flag; the training loop saves at the end of the current step and stops."""

    def __init__(self) -> None:
        self.requested = threading.Event()

    def install(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.requested.set())


def _make_callbacks(run: "_Run") -> list[Any]:
    from transformers import TrainerCallback

    class KubetuneCallback(TrainerCallback):
        """Progress, metrics history, checkpoint upload, best tracking, early stopping, preemption."""

        def on_train_begin(self, args, state, control, **kw):
            run.total_steps = state.max_steps
            run.last_log = (time.monotonic(), state.global_step)

        def on_step_end(self, args, state, control, **kw):
            if run.preemption.requested.is_set():
                log.warning("SIGTERM: saving a checkpoint at step %d and stopping", state.global_step)
                control.should_save = True
                control.should_training_stop = True
                run.preempted = True
            minutes = run.spec.storage.checkpoint_interval_minutes if run.spec.storage else None
            if minutes and time.monotonic() - run.last_save_time >= minutes * 60:
                control.should_save = True
            return control

        def on_log(self, args, state, control, logs=None, **kw):
            logs = logs or {}
            if "loss" in logs and "train_runtime" not in logs:
                t, s = time.monotonic(), state.global_step
                t0, s0 = run.last_log
                rate = (s - s0) / (t - t0) if t > t0 and s > s0 else None
                run.last_log = (t, s)
                entry = {"step": s, "epoch": state.epoch, "loss": logs["loss"], "learningRate": logs.get("learning_rate"),
                         "gradNorm": logs.get("grad_norm")}
                run.record(entry)
                run.train_loss = logs["loss"]
                if rate:
                    run.tokens_per_second = rate * run.tokens_per_step
                    run.eta = (state.max_steps - s) / rate
                run.report(state, force=False)
            if "eval_loss" in logs:
                run.record({"step": state.global_step, "epoch": state.epoch, "evalLoss": logs["eval_loss"]})

        def on_evaluate(self, args, state, control, metrics=None, **kw):
            loss = (metrics or {}).get("eval_loss")
            if loss is None:
                return control
            run.eval_loss = loss
            es = run.spec.early_stopping
            if run.best_eval_loss is None or loss < run.best_eval_loss - es.min_delta:
                run.best_eval_loss, run.evals_without_improvement = loss, 0
                run.best_step = state.global_step
                run.uploader.best_step = state.global_step
                control.should_save = True  # the best state must exist as a checkpoint to be kept
            else:
                run.evals_without_improvement += 1
                if es.enabled and run.evals_without_improvement >= es.patience:
                    log.info("early stopping: eval loss has not improved for %d evaluations", es.patience)
                    run.stopped_early = True
                    control.should_training_stop = True
                    control.should_save = True
            run.report(state, force=False)
            return control

        def on_save(self, args, state, control, **kw):
            if not state.is_world_process_zero:
                return  # one uploader per job: rank 0's
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            (ckpt / RESUME_STATE).write_text(json.dumps(run.resume_state()))
            run.uploader.submit(ckpt, state.global_step, {"evalLoss": run.eval_loss, "trainLoss": run.train_loss})
            run.last_save_time = time.monotonic()

    return [KubetuneCallback()]


class _Run:
    def __init__(self, cfg: TrainerConfig, base_dir: Path, work_dir: Path, reporter: ProgressReporter, preemption: _Preemption):
        self.cfg, self.spec, self.base_dir, self.work_dir = cfg, cfg.spec, base_dir, work_dir
        self.reporter, self.preemption = reporter, preemption
        self.storage = open_storage(cfg.storage_uri, cfg.storage_endpoint, cfg.storage_region)
        keep = self.spec.storage.checkpoints_kept if self.spec.storage else 2
        self.uploader = CheckpointUploader(
            self.storage, keep,
            on_complete=lambda info: reporter.publish(
                CheckpointRef(uri=self.storage.uri(info.key), step=info.step, time=now())),
        )
        self.metrics: list[dict[str, Any]] = []
        self.total_steps = 0
        self.tokens_per_step = 0.0
        self.tokens_per_second: float | None = None
        self.eta: float | None = None
        self.train_loss: float | None = None
        self.eval_loss: float | None = None
        self.best_eval_loss: float | None = None
        self.best_step: int | None = None
        self.evals_without_improvement = 0
        self.stopped_early = False
        self.preempted = False
        self.last_log = (time.monotonic(), 0)
        self.last_save_time = time.monotonic()

    # -- bookkeeping ------------------------------------------------------------------------
    def record(self, entry: dict[str, Any]) -> None:
        entry = {k: v for k, v in entry.items() if v is not None}
        self.metrics.append(entry)
        with (self.work_dir / METRICS).open("a") as f:
            f.write(json.dumps(entry) + "\n")

    def resume_state(self) -> dict[str, Any]:
        return {"bestEvalLoss": self.best_eval_loss, "bestStep": self.best_step,
                "evalsWithoutImprovement": self.evals_without_improvement, "evalLoss": self.eval_loss, "metrics": self.metrics}

    def restore(self, state: dict[str, Any]) -> None:
        self.best_eval_loss, self.best_step = state["bestEvalLoss"], state["bestStep"]
        self.evals_without_improvement, self.eval_loss = state["evalsWithoutImprovement"], state["evalLoss"]
        self.uploader.best_step = self.best_step
        # Steps after the checkpoint were lost with the old process and are redone: drop their records.
        self.metrics = list(state["metrics"])
        (self.work_dir / METRICS).write_text("".join(json.dumps(m) + "\n" for m in self.metrics))

    def report(self, state: Any, force: bool) -> None:
        total = state.max_steps or self.total_steps
        self.reporter.report(
            Progress(
                step=state.global_step, total_steps=total, epoch=round(state.epoch or 0.0, 3),
                percent=min(100, int(100 * state.global_step / total)) if total else None,
                train_loss=self.train_loss, eval_loss=self.eval_loss,
                tokens_per_second=round(self.tokens_per_second, 1) if self.tokens_per_second else None,
                eta_seconds=int(self.eta) if self.eta is not None else None, updated_at=now(),
            ),
            force=force,
        )

    def save_data_report(self, report: data_mod.DataReport) -> None:
        self.storage.put_json(report.to_dict(), DATA_REPORT)
        self.reporter.publish(dataset_summary(report, self.storage.uri(DATA_REPORT)))

    # -- phases -----------------------------------------------------------------------------
    def check_data(self) -> tuple[data_mod.DataReport, Any, Path]:
        ds = self.spec.dataset
        resolve = lambda uri: resolve_uri(uri, self.base_dir, self.cfg.storage_endpoint, self.cfg.storage_region)  # noqa: E731
        paths, sources = {}, {}
        try:
            for role in ("train", "validation", "test"):
                uri = getattr(ds, role)
                if uri is not None:
                    paths[role] = resolve(uri)
                    sources[paths[role]] = uri
        except FileNotFoundError as err:
            raise BadInput(f"spec.dataset: {err}") from err
        # Structure first: a broken file fails before a model is downloaded.
        report = data_mod.check_dataset(paths["train"], ds.format, paths.get("validation"), paths.get("test"),
                                        ds.validation_split, ds.seed, sources=sources)
        if not report.ok:
            self.save_data_report(report)
            raise BadInput(report.format_text(), data_headline(report))
        try:
            model_dir = model_directory(resolve(self.spec.base_model.uri))
        except FileNotFoundError as err:
            raise BadInput(f"spec.baseModel.uri: {err}") from err
        tokenizer = load_tokenizer(model_dir)
        limit = self.spec.hyperparameters.max_seq_length
        too_long, stats = data_mod.token_length_check(report.train + report.validation + report.test, count_tokens(tokenizer), limit)
        report.errors += too_long
        report.token_lengths = stats
        self.save_data_report(report)
        if not report.ok:
            raise BadInput(report.format_text(), data_headline(report))
        return report, tokenizer, model_dir

    def base_scores(self, model: Any, tokenizer: Any, eval_set: list[data_mod.Example], budget: Budget) -> Any:
        """Base-model scores, computed once per run and kept in storage (a resumed run reuses them)."""
        stored = self.storage.get_json(BASE_EVAL)
        scores = scores_from_json(stored) if stored is not None else None
        # Reuse only a score of the same examples with the same budget (an older format is recomputed).
        if scores is not None and scores.max_new_tokens == budget.max_new_tokens and len(scores.answers) == len(answered(eval_set)):
            return scores
        scores = score(model, tokenizer, eval_set, budget)
        self.storage.put_json(scores_to_json(scores), BASE_EVAL)
        return scores

    def latest_checkpoint(self) -> Path | None:
        ckpts = complete_checkpoints(self.storage)
        if not ckpts:
            return None
        latest = ckpts[-1]
        local = download_checkpoint(self.storage, latest, self.work_dir / "resume" / f"checkpoint-{latest.step}")
        state_file = local / RESUME_STATE
        if state_file.is_file():
            self.restore(json.loads(state_file.read_text()))
        return local


def run(cfg: TrainerConfig, base_dir: Path, work_dir: Path, reporter: ProgressReporter) -> RunResult:
    """The whole job. Returns the exit code in the result; raises only on bugs."""
    problems = validate_config(cfg)
    preemption = _Preemption()
    preemption.install()
    work_dir.mkdir(parents=True, exist_ok=True)
    for scratch in ("trainer", "resume", METRICS):
        p = work_dir / scratch
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    r = _Run(cfg, base_dir, work_dir, reporter, preemption)
    result = RunResult(EXIT_OK, r.storage)
    try:
        if problems:
            raise BadInput("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))
        report, tokenizer, model_dir = r.check_data()
        result.data_report = report.to_dict()
        print(report.format_text(limit=10), flush=True)
        _train_and_evaluate(r, report, tokenizer, model_dir, result)
    except BadInput as err:
        log.error("%s", err)
        print(f"\nbad input, nothing trained:\n{err}", flush=True)
        result.exit_code = EXIT_BAD_INPUT
        result.message = f"{err}\n{err.headline}" if err.headline else str(err)
    finally:
        r.uploader.close()
        reporter.close()
    return result


def _train_and_evaluate(r: _Run, report: data_mod.DataReport, tokenizer: Any, model_dir: Path, result: RunResult) -> None:
    import torch
    from transformers import PrinterCallback, Trainer, TrainingArguments, set_seed

    spec, hp = r.spec, r.spec.hyperparameters
    set_seed(hp.seed)
    encoded = [encode(ex, tokenizer) for ex in report.train]
    rows = training_rows(encoded, hp.max_seq_length, hp.packing, hp.seed)
    real_tokens = sum(len(e) for e in encoded)
    efficiency = padding_efficiency(rows, hp.batch_size)
    print(f"training rows: {len(rows)} from {len(encoded)} examples ({'packed' if hp.packing else 'padded'}; "
          f"{100 * efficiency:.1f}% real tokens)", flush=True)
    eval_rows = training_rows([encode(ex, tokenizer) for ex in report.validation], hp.max_seq_length, False, hp.seed)
    final_set = (report.test or report.validation)[: spec.evaluation.max_samples]
    scored = answered(final_set)
    if scored:
        try:  # a declared shape that does not fit the answers fails before any training
            metrics.choose_shape(spec.evaluation.answer_shape, [ex.final_answer() for ex in scored], [ex.where for ex in scored])
        except ValueError as err:
            raise BadInput(f"spec.{err}") from err
    budget = generation_budget(tokenizer, final_set, spec.evaluation.max_new_tokens)

    model = load_model(model_dir, spec, spec.base_model.trust_remote_code)
    base = None
    if spec.evaluation.compare_with_base and final_set:
        print(f"scoring the base model on {len(final_set)} held-out examples ...", flush=True)
        base = r.base_scores(model, tokenizer, final_set, budget)
    set_seed(hp.seed)  # the adapter's init must not depend on whether base scoring ran
    model = prepare_for_training(model, spec)
    print(f"method {spec.method}: {trainable_summary(model)}", flush=True)

    resume = r.latest_checkpoint()
    if resume is not None:
        result.resumed_from = int(resume.name.split("-")[-1])
        print(f"resuming from the complete checkpoint at step {result.resumed_from}", flush=True)

    cuda = torch.cuda.is_available()
    world = max(1, torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1)
    r.tokens_per_step = real_tokens / max(len(rows), 1) * hp.batch_size * hp.gradient_accumulation_steps * world
    steps_per_epoch = math.ceil(len(rows) / (hp.batch_size * world) / hp.gradient_accumulation_steps)
    total = hp.max_steps or math.ceil(steps_per_epoch * hp.epochs)
    args = TrainingArguments(
        output_dir=str(r.work_dir / "trainer"),
        per_device_train_batch_size=hp.batch_size,
        per_device_eval_batch_size=hp.batch_size,
        gradient_accumulation_steps=hp.gradient_accumulation_steps,
        learning_rate=hp.learning_rate,
        num_train_epochs=hp.epochs,
        max_steps=hp.max_steps or -1,
        warmup_steps=math.ceil(hp.warmup_ratio * total),
        lr_scheduler_type=hp.scheduler,
        weight_decay=hp.weight_decay,
        logging_steps=1,  # every step goes into the metrics history; the reporter throttles itself
        eval_strategy="steps" if eval_rows else "no",
        eval_steps=spec.evaluation.eval_steps,
        save_strategy="steps",
        save_steps=spec.storage.checkpoint_interval_steps if spec.storage else 100,
        save_total_limit=None,  # the uploader prunes local copies once they are safely stored
        seed=hp.seed,
        data_seed=hp.seed,
        report_to=[],
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=not cuda,
        bf16=cuda and spec.method != "full" and torch.cuda.is_bf16_supported(),
        gradient_checkpointing=False,  # enabled on the model in prepare_for_training
    )
    collator = PackedCollator(tokenizer.pad_token_id) if hp.packing else PaddedCollator(tokenizer.pad_token_id)
    trainer = Trainer(
        model=model, args=args, train_dataset=rows, eval_dataset=eval_rows or None,
        data_collator=collator, callbacks=_make_callbacks(r),
    )
    # Eval rows are unpacked; they need the padding collator whatever the training setting.
    trainer.remove_callback(PrinterCallback)  # progress goes through our reporter, not raw dicts on stdout
    if args.world_size > 1:  # one line per worker: proof in the pod log that the ranks formed one group
        print(f"distributed: process {args.process_index} of {args.world_size} ({torch.distributed.get_backend()})", flush=True)
    trainer.get_eval_dataloader = _eval_loader(trainer, eval_rows, PaddedCollator(tokenizer.pad_token_id), hp.batch_size)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    result.steps = trainer.state.global_step
    r.uploader.wait()
    if r.preempted:
        result.message = f"preempted: complete checkpoint at step {trainer.state.global_step} in {r.storage.uri('checkpoints')}"
        print(result.message, flush=True)
        result.exit_code = EXIT_PREEMPTED
        return
    if not trainer.is_world_process_zero():
        return  # rank 0 exports, evaluates and reports; the other workers are done
    r.report(trainer.state, force=True)
    _finish(r, model, tokenizer, model_dir, final_set, base, budget, result)


def dataset_summary(report: data_mod.DataReport, report_uri: str) -> DatasetSummary:
    return DatasetSummary(
        format=report.format, examples=len(report.train), validation_examples=len(report.validation),
        invalid_lines=len(report.errors), duplicates_removed=len(report.duplicates),
        leaked_examples=len(report.leaked), warnings=report.warnings[:50], report_uri=report_uri,
    )


def evaluation_summary(evaluation: dict[str, Any]) -> EvaluationSummary:
    """status.evaluation: the headline metric for the answers' shape, and the regressions the deployment gate reads."""
    base, tuned = evaluation.get("base") or {}, evaluation["tuned"]
    head = evaluation.get("headline")
    b_metrics, t_metrics = base.get("metrics") or {}, tuned.get("metrics") or {}
    return EvaluationSummary(
        samples=evaluation["samples"], shape=evaluation.get("shape"), metric=head,
        base_score=metrics.headline(b_metrics, head) if head else None,
        tuned_score=metrics.headline(t_metrics, head) if head else None,
        base_loss=base.get("loss"), tuned_loss=tuned["loss"],
        base_perplexity=base.get("perplexity"), tuned_perplexity=tuned["perplexity"],
        base_exact_match=metrics.headline(b_metrics, "exactMatch"), tuned_exact_match=metrics.headline(t_metrics, "exactMatch"),
        regressions=evaluation.get("regressions"), improvements=evaluation.get("improvements"),
    )


def _eval_loader(trainer: Any, rows: list[dict], collator: Any, batch_size: int):
    from torch.utils.data import DataLoader

    def loader(eval_dataset: Any = None) -> Any:
        return DataLoader(rows, batch_size=batch_size, collate_fn=collator, shuffle=False)

    return loader


def _finish(r: _Run, model: Any, tokenizer: Any, model_dir: Path, final_set: list, base: Any, budget: Budget,
            result: RunResult) -> None:
    spec = r.spec
    if r.best_step is not None and r.best_step != result.steps:
        _load_best_weights(r, model)
    adapter_dir = r.work_dir / "output" / ADAPTER
    merged_dir = r.work_dir / "output" / MERGED if spec.output.merge_adapter and spec.method != "full" else None
    export(model, tokenizer, spec, adapter_dir, model_dir, merged_dir)
    out_name = ADAPTER if spec.method != "full" else "model"
    _upload_dir(r.storage, adapter_dir, out_name)
    result.artifacts["adapterUri" if spec.method != "full" else "modelUri"] = r.storage.uri(out_name)
    if merged_dir is not None:
        _upload_dir(r.storage, merged_dir, MERGED)
        result.artifacts["mergedUri"] = r.storage.uri(MERGED)
    if final_set:
        print(f"scoring the tuned model on {len(final_set)} held-out examples ...", flush=True)
        if spec.method == "lora":
            # Unmerged LoRA adds small ops per adapted layer to every generated token: +16% generation
            # time on CPU (measured, docs/benchmarks.md). The adapter is exported already, so merge.
            # Not for qlora: merging into 4-bit weights would round the update away.
            model.merge_adapter()
        tuned = score(model, tokenizer, final_set, budget)
        evaluation = compare(final_set, base, tuned, spec.evaluation.answer_shape, budget)
        evaluation["bestStep"] = r.best_step
        evaluation["stoppedEarly"] = r.stopped_early
        r.storage.put_json(evaluation, EVAL_REPORT)
        result.evaluation = evaluation
        r.reporter.publish(evaluation_summary(evaluation))
        result.artifacts["evaluationReportUri"] = r.storage.uri(EVAL_REPORT)
    r.storage.put_bytes((r.work_dir / METRICS).read_bytes(), METRICS)
    result.artifacts["metricsUri"] = r.storage.uri(METRICS)
    if isinstance(r.storage, LocalStorage):
        png = r.work_dir / LOSS_CURVE
        plot_loss_curve(r.metrics, png)
        r.storage.put_file(png, LOSS_CURVE)
        result.artifacts["lossCurve"] = r.storage.uri(LOSS_CURVE)


def _load_best_weights(r: _Run, model: Any) -> None:
    """Export the best evaluated state, not the last one (early stopping runs past the best on purpose)."""
    from safetensors.torch import load_file

    local = r.work_dir / "trainer" / f"checkpoint-{r.best_step}"
    if not local.is_dir():
        ckpt = next(c for c in complete_checkpoints(r.storage) if c.step == r.best_step)
        local = download_checkpoint(r.storage, ckpt, r.work_dir / "best")
    if (local / "adapter_model.safetensors").is_file():
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(local / "adapter_model.safetensors"))
    else:
        model.load_state_dict(load_file(local / "model.safetensors"), strict=False)
    print(f"exporting the best checkpoint (step {r.best_step}, eval loss {r.best_eval_loss:.4f})", flush=True)


def _upload_dir(storage: Storage, local: Path, key: str) -> None:
    for p in sorted(local.rglob("*")):
        if p.is_file():
            storage.put_file(p, f"{key}/{p.relative_to(local).as_posix()}")


def plot_loss_curve(metrics: list[dict[str, Any]], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(m["step"], m["loss"]) for m in metrics if "loss" in m]
    evals = [(m["step"], m["evalLoss"]) for m in metrics if "evalLoss" in m]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1)
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (answer tokens)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
