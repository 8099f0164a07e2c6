"""The fine-tuning recipe, one rank's part of it, in this order (see `run`):

1. setup    config check, work directory, data check (downloads), model, base-model scores
2. resume   the newest complete checkpoint, if any, with its TrainingState
3. train    transformers' Trainer; checkpoints upload in the background as they are saved
4. save     wait until every checkpoint is complete in storage; a stopped run ends here (75)
5. evaluate export the adapter or model, score the tuned model, write reports (rank 0)
6. cleanup  the uploader thread and the progress reporter, whatever happened

Storage is the source of truth: the local work directory is scratch, every checkpoint is
uploaded (manifest last) and a restart resumes from the newest complete one with optimizer,
scheduler, RNG and data position restored. With several ranks, each phase ends in an
agreement (ranks.py), so every rank leaves a phase the same way.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune.api.finetunejob import CheckpointRef, Progress
from kubetune.api.trainer_config import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, EXIT_PREEMPTED, TrainerConfig

from . import data as data_mod
from . import metrics, stop
from .backends import Storage, open_storage
from .callbacks import make_callbacks
from .checkpoints import CheckpointUploader, complete_checkpoints, download_checkpoint
from .errors import BadInput
from .evaluate import Budget, answered, generation_budget, score, scores_from_json, scores_to_json
from .model import load_model, load_tokenizer, model_directory, prepare_for_training, trainable_summary
from .outputs import BASE_EVAL, DATA_REPORT, METRICS, dataset_summary, finish
from .progress import ProgressReporter, now
from .ranks import BAD_INPUT, PREEMPTED, OtherRankFailed, Ranks
from .sources import resolve_uri
from .tokenize import PackedCollator, PaddedCollator, count_tokens, encode, padding_efficiency, training_rows
from .training_state import RESUME_STATE, TrainingState

log = logging.getLogger(__name__)


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


class TrainingRun:
    """One rank's view of the run: its storage, reporter and ranks, the training state a checkpoint
    carries, and the bookkeeping of progress."""

    def __init__(self, cfg: TrainerConfig, base_dir: Path, work_dir: Path, reporter: ProgressReporter, ranks: Ranks):
        self.cfg, self.spec, self.base_dir, self.work_dir = cfg, cfg.spec, base_dir, work_dir
        self.reporter, self.ranks = reporter, ranks
        self.storage = open_storage(cfg.storage_uri, cfg.storage_endpoint, cfg.storage_region)
        keep = self.spec.storage.checkpoints_kept if self.spec.storage else 2
        self.uploader = CheckpointUploader(
            self.storage, keep,
            on_complete=lambda info: reporter.publish(
                CheckpointRef(uri=self.storage.uri(info.key), step=info.step, time=now())),
        )
        self.state = TrainingState()  # the resume payload (kubetune-state.json in each checkpoint)
        self.total_steps = 0
        self.tokens_per_step = 0.0
        self.tokens_per_second: float | None = None
        self.eta: float | None = None
        self.train_loss: float | None = None
        self.stopped_early = False
        self.preempted = False
        self.last_log = (time.monotonic(), 0)
        self.last_save_time = time.monotonic()

    # -- bookkeeping ------------------------------------------------------------------------
    def say(self, *args: Any, **kwargs: Any) -> None:
        """print, on rank 0 only: one copy of each line in the pod log."""
        if self.ranks.is_main:
            print(*args, **kwargs)

    def record(self, entry: dict[str, Any]) -> None:
        entry = {k: v for k, v in entry.items() if v is not None}
        self.state.metrics.append(entry)
        if not self.ranks.is_main:
            return  # every rank sees the same (reduced) losses; one writes them
        with (self.work_dir / METRICS).open("a") as f:
            f.write(json.dumps(entry) + "\n")

    def restore(self, state: TrainingState) -> None:
        self.state = state
        self.uploader.best_step = state.best_step
        # Steps after the checkpoint were lost with the old process and are redone: drop their records.
        if self.ranks.is_main:
            (self.work_dir / METRICS).write_text("".join(json.dumps(m) + "\n" for m in state.metrics))

    def report(self, state: Any, force: bool) -> None:
        total = state.max_steps or self.total_steps
        self.reporter.report(
            Progress(
                step=state.global_step, total_steps=total, epoch=round(state.epoch or 0.0, 3),
                percent=min(100, int(100 * state.global_step / total)) if total else None,
                train_loss=self.train_loss, eval_loss=self.state.eval_loss,
                tokens_per_second=round(self.tokens_per_second, 1) if self.tokens_per_second else None,
                eta_seconds=int(self.eta) if self.eta is not None else None, updated_at=now(),
            ),
            force=force,
        )

    def save_data_report(self, report: data_mod.DataReport) -> None:
        if not self.ranks.is_main:
            return
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
        scores = score(model, tokenizer, eval_set, budget, between_batches=lambda: stop.check("base-model scoring"))
        self.storage.put_json(scores_to_json(scores), BASE_EVAL)
        return scores

    def latest_checkpoint(self) -> Path | None:
        """The newest complete checkpoint, in the pod's work directory: the pod's local main
        downloads it (run through Ranks.main_first), the other local ranks read that copy."""
        ckpts = complete_checkpoints(self.storage)
        if not ckpts:
            return None
        latest = ckpts[-1]
        local = self.work_dir / "resume" / f"checkpoint-{latest.step}"
        if self.ranks.is_local_main:
            download_checkpoint(self.storage, latest, local)
        state_file = local / RESUME_STATE
        if state_file.is_file():
            self.restore(TrainingState.from_json(state_file.read_text()))
        return local


def run(cfg: TrainerConfig, base_dir: Path, work_dir: Path, reporter: ProgressReporter,
        ranks: Ranks | None = None) -> RunResult:
    """The whole job, on one rank. Returns the exit code in the result; raises only on bugs."""
    stop.install()
    ranks = ranks or Ranks()
    problems = validate_config(cfg)
    r = TrainingRun(cfg, base_dir, work_dir, reporter, ranks)
    result = RunResult(EXIT_OK, r.storage)
    try:
        # 1. setup. Every rank reads the same config; the local main reports its problems, once.
        ranks.main_first(lambda: _clean_work_dir(work_dir, ranks, problems))
        report, tokenizer, model_dir = ranks.main_first(r.check_data)
        result.data_report = report.to_dict()
        if ranks.is_main:
            print(report.format_text(limit=10), flush=True)
        prepared = _setup_model(r, report, tokenizer, model_dir)
        # 2. resume
        resume = ranks.main_first(r.latest_checkpoint)
        if resume is not None:
            result.resumed_from = int(resume.name.split("-")[-1])
            r.say(f"resuming from the complete checkpoint at step {result.resumed_from}", flush=True)
        # 3. train
        trainer = _train(r, prepared, tokenizer, resume)
        result.steps = trainer.state.global_step
        # 4. save. Every rank waits for rank 0's uploads: a rank that reports 75 vouches for a
        # complete checkpoint. A stop during training is handled just below, not as a failure here.
        ranks.main_only(r.uploader.wait, stop_counts=False)
        if r.preempted:
            result.message = f"preempted: complete checkpoint at step {result.steps} in {r.storage.uri('checkpoints')}"
            r.say(result.message, flush=True)
            result.exit_code = EXIT_PREEMPTED
        # 5. evaluate: rank 0 exports, evaluates and reports; the other ranks are done
        elif ranks.is_main:
            r.report(trainer.state, force=True)
            finish(r, prepared.model, tokenizer, model_dir, prepared.final_set, prepared.base, prepared.budget, result)
    except BadInput as err:
        log.error("%s", err)
        print(f"\nbad input, nothing trained:\n{err}", flush=True)
        result.exit_code = EXIT_BAD_INPUT
        result.message = f"{err}\n{err.headline}" if err.headline else str(err)
    except stop.Preempted as err:
        # Nothing of this phase is taken for complete: checkpoints have their manifest written
        # last, outputs count only after exit 0. A retry resumes from the last complete checkpoint.
        result.message = f"preempted: {err}; the next attempt resumes from the last complete checkpoint"
        print(result.message, flush=True)
        result.exit_code = EXIT_PREEMPTED
    except OtherRankFailed as err:  # that rank reports the details; this one follows its decision
        result.message = str(err)
        result.exit_code = {PREEMPTED: EXIT_PREEMPTED, BAD_INPUT: EXIT_BAD_INPUT}.get(err.outcome, EXIT_FAILED)
    finally:
        # 6. cleanup
        r.uploader.close()
        reporter.close()
    return result


def _clean_work_dir(work_dir: Path, ranks: Ranks, problems: list[str]) -> None:
    """Scratch from an earlier attempt on this pod goes; the pod's local main alone deletes it."""
    if problems:
        raise BadInput("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))
    if not ranks.is_local_main:
        return
    work_dir.mkdir(parents=True, exist_ok=True)
    for scratch in ("trainer", "resume", "best", "output", METRICS):
        p = work_dir / scratch
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


@dataclass
class Prepared:
    """What setup hands to training and evaluation."""
    rows: list[dict]
    eval_rows: list[dict]
    real_tokens: int
    final_set: list[data_mod.Example]
    budget: Budget
    model: Any
    base: Any  # base-model scores (rank 0), or None


def _setup_model(r: TrainingRun, report: data_mod.DataReport, tokenizer: Any, model_dir: Path) -> Prepared:
    """Training rows, the evaluation set, the model (with its adapter) and the base-model scores."""
    from transformers import set_seed

    spec, hp, ranks = r.spec, r.spec.hyperparameters, r.ranks
    say = r.say
    set_seed(hp.seed)
    encoded = [encode(ex, tokenizer) for ex in report.train]
    rows = training_rows(encoded, hp.max_seq_length, hp.packing, hp.seed)
    real_tokens = sum(len(e) for e in encoded)
    efficiency = padding_efficiency(rows, hp.batch_size)
    say(f"training rows: {len(rows)} from {len(encoded)} examples ({'packed' if hp.packing else 'padded'}; "
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
        say(f"scoring the base model on {len(final_set)} held-out examples ...", flush=True)
        base = ranks.main_only(lambda: r.base_scores(model, tokenizer, final_set, budget))
    set_seed(hp.seed)  # the adapter's init must not depend on whether base scoring ran
    model = prepare_for_training(model, spec)
    say(f"method {spec.method}: {trainable_summary(model)}", flush=True)
    return Prepared(rows, eval_rows, real_tokens, final_set, budget, model, base)


def _train(r: TrainingRun, p: Prepared, tokenizer: Any, resume: Path | None) -> Any:
    """transformers' Trainer over the prepared rows, from `resume` if given. Returns the Trainer."""
    import torch
    from transformers import PrinterCallback, Trainer, TrainingArguments

    spec, hp, ranks = r.spec, r.spec.hyperparameters, r.ranks
    rows, eval_rows, real_tokens, model = p.rows, p.eval_rows, p.real_tokens, p.model
    cuda = torch.cuda.is_available()
    world = ranks.world  # the group is up before any phase (Ranks.start), so this is the real size
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
        data_collator=collator, callbacks=make_callbacks(r),
    )
    trainer.remove_callback(PrinterCallback)  # progress goes through our reporter, not raw dicts on stdout
    if args.world_size > 1:  # one line per worker: proof in the pod log that the ranks formed one group
        print(f"distributed: process {args.process_index} of {args.world_size} ({torch.distributed.get_backend()})", flush=True)
    # Eval rows are unpacked; they need the padding collator whatever the training setting.
    trainer.get_eval_dataloader = _eval_loader(trainer, eval_rows, PaddedCollator(tokenizer.pad_token_id), hp.batch_size)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    return trainer


def _eval_loader(trainer: Any, rows: list[dict], collator: Any, batch_size: int):
    from torch.utils.data import DataLoader

    def loader(eval_dataset: Any = None) -> Any:
        return DataLoader(rows, batch_size=batch_size, collate_fn=collator, shuffle=False)

    return loader
