"""Base vs tuned on the held-out split: loss and perplexity, exact match, regressions.

Loss is the mean over answer tokens only (the same mask as training), so it
says how well each model predicts the reference answers. Exact match applies
to short answers (a reference of a few tokens): greedy generation, compared
after trimming and collapsing whitespace.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from .data import Example
from .tokenize import IGNORE_INDEX, encode, prompt_text

SHORT_ANSWER_TOKENS = 32


@dataclass
class ModelScores:
    loss: float
    perplexity: float
    exact_match: float | None
    answers: list[str | None] = field(default_factory=list)


def _normalise(text: str) -> str:
    return " ".join(text.split())


def mean_answer_loss(model: Any, tokenizer: Any, examples: list[Example], batch_size: int = 8) -> float:
    """Token-weighted mean cross-entropy over answer tokens."""
    import torch

    total, count = 0.0, 0
    device = next(model.parameters()).device
    encoded = [encode(ex, tokenizer) for ex in examples]
    model.eval()
    with torch.no_grad():
        for i in range(0, len(encoded), batch_size):
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


def short_answer_indices(tokenizer: Any, examples: list[Example]) -> list[int]:
    return [
        i for i, ex in enumerate(examples)
        if (a := ex.final_answer()) is not None and len(tokenizer(a, add_special_tokens=False)["input_ids"]) <= SHORT_ANSWER_TOKENS
    ]


def generate_answers(model: Any, tokenizer: Any, examples: list[Example], max_new_tokens: int, batch_size: int = 16) -> list[str]:
    """Greedy answers, batched with left padding."""
    import torch

    device = next(model.parameters()).device
    prompts = [prompt_text(ex, tokenizer) for ex in examples]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    answers = []
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(prompts), batch_size):
                enc = tokenizer(prompts[i : i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False).to(device)
                out = model.generate(
                    **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id, use_cache=True
                )
                answers += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
    return answers


def score(model: Any, tokenizer: Any, examples: list[Example], max_new_tokens: int) -> ModelScores:
    loss = mean_answer_loss(model, tokenizer, examples)
    short = short_answer_indices(tokenizer, examples)
    answers: list[str | None] = [None] * len(examples)
    exact = None
    if short:
        limit = min(max_new_tokens, SHORT_ANSWER_TOKENS + 8)
        generated = generate_answers(model, tokenizer, [examples[i] for i in short], limit)
        for i, text in zip(short, generated):
            answers[i] = text
        exact = sum(_normalise(answers[i]) == _normalise(examples[i].final_answer()) for i in short) / len(short)
    return ModelScores(loss=loss, perplexity=math.exp(min(loss, 50.0)), exact_match=exact, answers=answers)


def compare(examples: list[Example], base: ModelScores | None, tuned: ModelScores) -> dict[str, Any]:
    """The evaluation report: summary numbers and the per-example answers that changed correctness."""
    report: dict[str, Any] = {"samples": len(examples), "tuned": _summary(tuned)}
    if base is None:
        return report
    report["base"] = _summary(base)
    regressions, fixes = [], []
    for ex, b, t in zip(examples, base.answers, tuned.answers):
        if b is None or t is None:
            continue
        ref = _normalise(ex.final_answer())
        b_ok, t_ok = _normalise(b) == ref, _normalise(t) == ref
        item = {"where": ex.where, "reference": ex.final_answer(), "base": b, "tuned": t}
        if b_ok and not t_ok:
            regressions.append(item)
        elif t_ok and not b_ok:
            fixes.append(item)
    report["regressions"] = len(regressions)
    report["improvements"] = len(fixes)
    report["regressedExamples"] = regressions
    report["improvedExamples"] = fixes[:20]
    return report


def _summary(s: ModelScores) -> dict[str, Any]:
    d = asdict(s)
    d.pop("answers")
    return {"loss": d["loss"], "perplexity": d["perplexity"], "exactMatch": d["exact_match"]}


def scores_from_json(d: dict[str, Any]) -> ModelScores:
    return ModelScores(loss=d["loss"], perplexity=d["perplexity"], exact_match=d["exactMatch"], answers=d.get("answers", []))


def scores_to_json(s: ModelScores) -> dict[str, Any]:
    return {**_summary(s), "answers": s.answers}
