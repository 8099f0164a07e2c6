"""What a finished run leaves in storage: outputs, the evaluation report, metrics, status sections.

Rank 0 alone writes them, after training. A SIGTERM here stops between files (exit 75): a
half-written output is never read, because outputs count only after exit 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune.api.finetunejob import DatasetSummary, EvaluationSummary

from . import data as data_mod
from . import metrics, stop
from .backends import LocalStorage, Storage
from .checkpoints import complete_checkpoints, download_checkpoint
from .evaluate import Budget, compare, score
from .model import export

if TYPE_CHECKING:
    from .recipe import RunResult, TrainingRun

DATA_REPORT = "reports/data-validation.json"
BASE_EVAL = "reports/base-scores.json"
EVAL_REPORT = "reports/evaluation.json"
METRICS = "metrics.jsonl"
LOSS_CURVE = "loss-curve.png"
ADAPTER = "adapter"
MERGED = "merged"


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


def finish(r: "TrainingRun", model: Any, tokenizer: Any, model_dir: Path, final_set: list, base: Any, budget: Budget,
           result: "RunResult") -> None:
    """Export the best state, upload it, score the tuned model against the base, write the reports."""
    spec = r.spec
    if r.state.best_step is not None and r.state.best_step != result.steps:
        _load_best_weights(r, model)
    stop.check("export")
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
        tuned = score(model, tokenizer, final_set, budget, between_batches=lambda: stop.check("tuned-model scoring"))
        evaluation = compare(final_set, base, tuned, spec.evaluation.answer_shape, budget)
        evaluation["bestStep"] = r.state.best_step
        evaluation["stoppedEarly"] = r.stopped_early
        r.storage.put_json(evaluation, EVAL_REPORT)
        result.evaluation = evaluation
        r.reporter.publish(evaluation_summary(evaluation))
        result.artifacts["evaluationReportUri"] = r.storage.uri(EVAL_REPORT)
    r.storage.put_bytes((r.work_dir / METRICS).read_bytes(), METRICS)
    result.artifacts["metricsUri"] = r.storage.uri(METRICS)
    if isinstance(r.storage, LocalStorage):
        png = r.work_dir / LOSS_CURVE
        plot_loss_curve(r.state.metrics, png)
        r.storage.put_file(png, LOSS_CURVE)
        result.artifacts["lossCurve"] = r.storage.uri(LOSS_CURVE)


def _load_best_weights(r: "TrainingRun", model: Any) -> None:
    """Export the best evaluated state, not the last one (early stopping runs past the best on purpose)."""
    from safetensors.torch import load_file

    local = r.work_dir / "trainer" / f"checkpoint-{r.state.best_step}"
    if not local.is_dir():
        ckpt = next(c for c in complete_checkpoints(r.storage) if c.step == r.state.best_step)
        local = download_checkpoint(r.storage, ckpt, r.work_dir / "best")
    if (local / "adapter_model.safetensors").is_file():
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(local / "adapter_model.safetensors"))
    else:
        model.load_state_dict(load_file(local / "model.safetensors"), strict=False)
    print(f"exporting the best checkpoint (step {r.state.best_step}, eval loss {r.state.best_eval_loss:.4f})", flush=True)


def _upload_dir(storage: Storage, local: Path, key: str) -> None:
    for p in sorted(local.rglob("*")):
        if p.is_file():
            stop.check("upload")  # a half-uploaded output is never read: outputs count only after exit 0
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
