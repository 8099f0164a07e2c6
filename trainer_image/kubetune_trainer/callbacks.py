"""The Trainer callback: progress, the metrics history, checkpoint uploads, best tracking, early
stopping, and the stop every rank agrees on at a step boundary."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import stop
from .training_state import RESUME_STATE

if TYPE_CHECKING:
    from .recipe import TrainingRun

log = logging.getLogger(__name__)


def make_callbacks(run: "TrainingRun") -> list[Any]:
    from transformers import TrainerCallback

    class KubetuneCallback(TrainerCallback):
        """Progress, metrics history, checkpoint upload, best tracking, early stopping, preemption."""

        def on_train_begin(self, args, state, control, **kw):
            run.total_steps = state.max_steps
            run.last_log = (time.monotonic(), state.global_step)

        def on_step_end(self, args, state, control, **kw):
            # Decisions that change what the ranks do next are agreed on (one small all-reduce per
            # step): a SIGTERM seen by any rank, or a save due by any rank's clock. Ranks that
            # decided alone would stop or save at different steps and hang in a collective.
            minutes = run.spec.storage.checkpoint_interval_minutes if run.spec.storage else None
            save_due = bool(minutes) and time.monotonic() - run.last_save_time >= minutes * 60
            stop_now, save_now = run.ranks.agree(int(stop.requested()), int(save_due))
            if stop_now:
                if run.ranks.is_main:
                    log.warning("SIGTERM: saving a checkpoint at step %d and stopping", state.global_step)
                stop.request()  # phases after training see it too, on every rank
                control.should_save = True
                control.should_training_stop = True
                run.preempted = True
            if save_now:
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
            run.state.eval_loss = loss
            es = run.spec.early_stopping
            if run.state.best_eval_loss is None or loss < run.state.best_eval_loss - es.min_delta:
                run.state.best_eval_loss, run.state.evals_without_improvement = loss, 0
                run.state.best_step = state.global_step
                run.uploader.best_step = state.global_step
                control.should_save = True  # the best state must exist as a checkpoint to be kept
            else:
                run.state.evals_without_improvement += 1
                if es.enabled and run.state.evals_without_improvement >= es.patience:
                    log.info("early stopping: eval loss has not improved for %d evaluations", es.patience)
                    run.stopped_early = True
                    control.should_training_stop = True
                    control.should_save = True
            run.report(state, force=False)
            return control

        def on_save(self, args, state, control, **kw):
            # Every rank has written its part (its rng_state_<rank>.pth) before rank 0 uploads the
            # directory: the Trainer does not wait for them before calling back.
            run.ranks.agree(0)
            run.last_save_time = time.monotonic()
            if not run.ranks.is_main:
                return  # one uploader per job: rank 0's
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            (ckpt / RESUME_STATE).write_text(run.state.to_json())
            run.uploader.submit(ckpt, state.global_step, {"evalLoss": run.state.eval_loss, "trainLoss": run.train_loss})

    return [KubetuneCallback()]
