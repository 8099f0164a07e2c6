"""Base vs tuned on held-out examples: loss, perplexity, and generated answers scored by shape.

Loss is the mean over answer tokens only (the same mask as training), so it says
how well each model predicts the reference answers. Every example with an answer
is also generated greedily and scored by `metrics` (exact match, JSON, labels or
ROUGE-L): the generation budget comes from the longest reference, so long answers
are scored like short ones. Used by the trainer and by `kubetune evaluate`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

from . import metrics
from .data import Example
from .tokenize import IGNORE_INDEX, encode, prompt_text


@dataclass
class ModelScores:
    loss: float
    perplexity: float
    answers: list[str]          # one per example that has a reference answer, in order
    max_new_tokens: int         # the budget they were generated with (a stored score is reused only for the same)
    seconds: float = 0.0        # generation time
    truncated: int = 0          # answers still running when the budget ran out (no end-of-turn)


@dataclass
class Budget:
    max_new_tokens: int
    longest_reference: int
    over_budget: int  # references longer than the budget (only when evaluation.maxNewTokens caps it): cannot match

    def to_dict(self) -> dict[str, int]:
        return {"maxNewTokens": self.max_new_tokens, "longestReferenceTokens": self.longest_reference,
                "referencesOverBudget": self.over_budget}


def answered(examples: list[Example]) -> list[Example]:
    """The examples generation can score: those ending in an assistant answer (not plain-text examples)."""
    return [ex for ex in examples if ex.final_answer() is not None]


def generation_budget(tokenizer: Any, examples: list[Example], cap: int | None) -> Budget:
    """Longest reference plus a margin, so a correct answer is never cut short and an answer that
    runs on past the reference is seen running on (it is then wrong), not truncated into a match."""
    lengths = [len(tokenizer(ex.final_answer(), add_special_tokens=False)["input_ids"]) for ex in answered(examples)]
    longest = max(lengths, default=0)
    budget = longest + max(8, longest // 4)
    if cap is not None:
        budget = min(budget, cap)
    return Budget(budget, longest, sum(n > budget for n in lengths))


def _nothing() -> None:
    pass


def mean_answer_loss(model: Any, tokenizer: Any, examples: list[Example], batch_size: int = 8,
                     between_batches: Callable[[], None] = _nothing) -> float:
    """Token-weighted mean cross-entropy over answer tokens. `between_batches` may raise to stop
    (the trainer's SIGTERM check)."""
    import torch

    total, count = 0.0, 0
    device = next(model.parameters()).device
    encoded = [encode(ex, tokenizer) for ex in examples]
    model.eval()
    with torch.no_grad():
        for i in range(0, len(encoded), batch_size):
            between_batches()
            batch = encoded[i : i + batch_size]
            width = max(len(e) for e in batch)
            pad = tokenizer.pad_token_id
            ids = torch.tensor([e.input_ids + [pad] * (width - len(e)) for e in batch], device=device)
            labels = torch.tensor([e.labels + [IGNORE_INDEX] * (width - len(e)) for e in batch], device=device)
            mask = torch.tensor([[1] * len(e) + [0] * (width - len(e)) for e in batch], device=device)
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
            shift_logits, shift_labels = logits[:, :-1], labels[:, 1:]
            loss = torch.nn.functional.cross_entropy(
                shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
            )
            total += loss.item()
            count += int((shift_labels != IGNORE_INDEX).sum())
    return total / max(count, 1)


def default_batch_size() -> int:
    import torch

    # On a GPU a wide batch costs little more than a narrow one; on CPU memory traffic grows with it.
    return 64 if torch.cuda.is_available() else 16


def generate_answers(model: Any, tokenizer: Any, examples: list[Example], max_new_tokens: int,
                     batch_size: int | None = None, between_batches: Callable[[], None] = _nothing) -> tuple[list[str], int]:
    """Greedy answers, batched with left padding; prompts of similar length share a batch.
    Also returns how many answers were cut off by the budget (they never ended their turn)."""
    import torch

    batch_size = batch_size or default_batch_size()
    device = next(model.parameters()).device
    prompts = [prompt_text(ex, tokenizer) for ex in examples]
    lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    # Longest first: little padding per batch, and a batch that does not fit in memory fails at once.
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    answers: list[str] = [""] * len(prompts)
    truncated = 0
    stops = {t for t in (tokenizer.eos_token_id, tokenizer.pad_token_id) if t is not None}
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                between_batches()
                idx = order[start : start + batch_size]
                enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False).to(device)
                out = model.generate(
                    **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id, use_cache=True
                )
                new = out[:, enc["input_ids"].shape[1] :]
                texts = tokenizer.batch_decode(new, skip_special_tokens=True)
                truncated += sum(new.shape[1] >= max_new_tokens and not stops & set(row.tolist()) for row in new)
                for i, text in zip(idx, texts):
                    answers[i] = text
    finally:
        tokenizer.padding_side = side
    return answers, truncated


def score(model: Any, tokenizer: Any, examples: list[Example], budget: Budget, batch_size: int | None = None,
          between_batches: Callable[[], None] = _nothing) -> ModelScores:
    loss = mean_answer_loss(model, tokenizer, examples, between_batches=between_batches)
    started = time.monotonic()
    todo = answered(examples)
    answers, truncated = (generate_answers(model, tokenizer, todo, budget.max_new_tokens, batch_size, between_batches)
                          if todo else ([], 0))
    return ModelScores(loss=loss, perplexity=math.exp(min(loss, 50.0)), answers=answers,
                       max_new_tokens=budget.max_new_tokens, seconds=time.monotonic() - started, truncated=truncated)


def compare(examples: list[Example], base: ModelScores | None, tuned: ModelScores, shape_setting: str = "auto",
            budget: Budget | None = None) -> dict[str, Any]:
    """The evaluation report (reports/evaluation.json, the `kubetune evaluate` output)."""
    scored = answered(examples)
    refs = [ex.final_answer() for ex in scored]
    report: dict[str, Any] = {"samples": len(examples), "scoredExamples": len(scored)}
    if scored:
        shape, source = metrics.choose_shape(shape_setting, refs, [ex.where for ex in scored])
        gen = metrics.report(shape, [ex.where for ex in scored], refs, base.answers if base else None, tuned.answers)
        report.update({"shape": shape, "shapeFrom": source, "headline": gen["headline"], "correctWhen": gen["correctWhen"]})
        if budget is not None:
            report["generation"] = budget.to_dict()
    else:
        gen = {}
    report["tuned"] = _summary(tuned, gen.get("tuned"))
    if base is not None:
        report["base"] = _summary(base, gen.get("base"))
        for key in ("regressions", "improvements", "regressedExamples", "improvedExamples"):
            report[key] = gen.get(key, 0 if key in ("regressions", "improvements") else [])
    return report


def _summary(s: ModelScores, measured: dict[str, Any] | None) -> dict[str, Any]:
    return {"loss": s.loss, "perplexity": s.perplexity, "generationSeconds": round(s.seconds, 2),
            "answersCutByBudget": s.truncated, "metrics": measured or {}}


def scores_from_json(d: dict[str, Any]) -> ModelScores | None:
    """A stored base score, or None when it predates this format (it is then recomputed)."""
    if "maxNewTokens" not in d or not isinstance(d.get("answers"), list) or None in d["answers"]:
        return None
    return ModelScores(loss=d["loss"], perplexity=d["perplexity"], answers=d["answers"],
                       max_new_tokens=d["maxNewTokens"], seconds=d.get("seconds", 0.0), truncated=d.get("truncated", 0))


def scores_to_json(s: ModelScores) -> dict[str, Any]:
    return {"loss": s.loss, "perplexity": s.perplexity, "answers": s.answers, "maxNewTokens": s.max_new_tokens,
            "seconds": s.seconds, "truncated": s.truncated}
