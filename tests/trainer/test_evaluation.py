"""The evaluation end to end through tokenizer, batching and generation, with models whose answers are scripted.

A scripted model answers each prompt with a fixed text (through the real tokenizer, left
padding, batching and decoding) and predicts every token with equal probability, so the
expected scores can be worked out by hand: loss = ln(vocabulary size), and the metrics
follow from the scripted answers.
"""

from __future__ import annotations

import json
import math
import pytest

from kubetune_trainer import evaluate
from kubetune_trainer.data import read_jsonl
from kubetune_trainer.evaluate import compare, generation_budget, score
from kubetune_trainer.metrics import format_report

from .tiny import write_jsonl

pytestmark = pytest.mark.trainer


class ScriptedLM:
    """Answers each prompt with script[prompt text]; uniform logits."""

    def __init__(self, tokenizer, script: dict[str, str], vocab: int):
        import torch

        self.tok, self.script, self.vocab = tokenizer, script, vocab
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.batches: list[int] = []

    def parameters(self):
        return iter([self.weight])

    def eval(self):
        return self

    def __call__(self, input_ids, attention_mask):
        import torch
        from types import SimpleNamespace

        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.vocab))

    def generate(self, input_ids, attention_mask, max_new_tokens, pad_token_id, **_):
        import torch

        assert bool(attention_mask[:, -1].all()), "prompts must be left-padded for generation"
        self.batches.append(len(input_ids))
        rows = []
        for ids, mask in zip(input_ids, attention_mask):
            prompt = self.tok.decode(ids[mask.bool()])
            new = self.tok(self.script[prompt], add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]
            rows.append(new[:max_new_tokens])
        width = max(len(r) for r in rows)
        new = torch.tensor([r + [pad_token_id] * (width - len(r)) for r in rows])
        return torch.cat([input_ids, new], dim=1)


def _chat(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def _scripted(tokenizer, examples, answers: list[str]) -> ScriptedLM:
    from kubetune_trainer.tokenize import prompt_text

    return ScriptedLM(tokenizer, {prompt_text(ex, tokenizer): a for ex, a in zip(examples, answers)}, len(tokenizer))


PEOPLE = [
    {"name": "Ada Lovelace", "email": "ada@analytical.example", "company": "Analytical Engines Ltd", "city": "London",
     "role": "mathematician", "phone": "+44 20 7946 0018"},
    {"name": "Alan Turing", "email": "alan@bletchley.example", "company": "Bletchley Park", "city": "Wilmslow",
     "role": "cryptanalyst", "phone": "+44 1625 555 0199"},
    {"name": "Grace Hopper", "email": "grace@navy.example", "company": "US Navy", "city": "Arlington",
     "role": "rear admiral", "phone": "+1 703 555 0142"},
    {"name": "Edsger Dijkstra", "email": "ewd@eindhoven.example", "company": "TU Eindhoven", "city": "Nuenen",
     "role": "professor", "phone": "+31 40 555 0107"},
    {"name": "Barbara Liskov", "email": "liskov@mit.example", "company": "MIT", "city": "Cambridge",
     "role": "professor", "phone": "+1 617 555 0175"},
]


def test_long_json_answers_are_all_scored_with_a_wrong_field_and_a_listed_regression(tiny_model, tmp_path, monkeypatch):
    from kubetune_trainer.model import load_tokenizer

    tok = load_tokenizer(tiny_model)
    refs = [json.dumps(p) for p in PEOPLE]
    path = write_jsonl(tmp_path / "people.jsonl", [_chat(f"Extract the contact: {p['name']} ...", r) for p, r in zip(PEOPLE, refs)])
    examples = read_jsonl(path, "auto").examples
    lengths = [len(tok(r, add_special_tokens=False)["input_ids"]) for r in refs]
    assert min(lengths) > 32, "every answer is longer than the old 32-token limit"

    wrong_city = json.dumps({**PEOPLE[1], "city": "Manchester"})
    base = _scripted(tok, examples, ["I cannot help with that.", refs[1], refs[2], "{\"name\": ", refs[4]])
    tuned = _scripted(tok, examples, [refs[0], wrong_city, refs[2], refs[3], refs[4]])
    monkeypatch.setattr(evaluate, "default_batch_size", lambda: 2)  # 5 prompts: three batches, reordered by length
    budget = generation_budget(tok, examples, cap=None)
    report = compare(examples, score(base, tok, examples, budget), score(tuned, tok, examples, budget), "auto", budget)
    assert tuned.batches == [2, 2, 1]

    assert report["samples"] == 5 and report["scoredExamples"] == 5 and report["shape"] == "json"
    t, b = report["tuned"]["metrics"], report["base"]["metrics"]
    assert all(m["examples"] == 5 for m in (t["jsonMatch"], t["validJson"], t["exactMatch"]))
    assert t["jsonMatch"]["value"] == 4 / 5 and b["jsonMatch"]["value"] == 3 / 5
    assert t["validJson"]["value"] == 1.0 and b["validJson"]["value"] == 3 / 5
    # Six fields x five answers; only the city of row 2 is wrong.
    assert t["fieldAccuracy"]["value"] == pytest.approx(29 / 30) and t["fieldAccuracy"]["fields"]["city"]["value"] == 4 / 5
    assert report["regressions"] == 1 and report["improvements"] == 2
    assert report["regressedExamples"][0]["where"] == f"{path}:2" and report["regressedExamples"][0]["tuned"] == wrong_city
    # Uniform logits: every answer token costs ln(V) nats.
    assert report["tuned"]["loss"] == pytest.approx(math.log(len(tok)), rel=1e-5)
    assert report["tuned"]["perplexity"] == pytest.approx(len(tok), rel=1e-4)
    assert "(2 fixed, 1 regressed)" in format_report(report)
    assert report["tuned"]["answersCutByBudget"] == 0  # every scripted answer ended its turn within the budget
    assert budget.longest_reference == max(lengths) and budget.max_new_tokens == max(lengths) + max(8, max(lengths) // 4)


def test_a_maxnewtokens_cap_below_a_reference_is_reported_not_hidden(tiny_model, tmp_path):
    from kubetune_trainer.model import load_tokenizer

    tok = load_tokenizer(tiny_model)
    refs = [json.dumps(p) for p in PEOPLE[:2]]
    examples = read_jsonl(write_jsonl(tmp_path / "d.jsonl", [_chat(f"q{i}", r) for i, r in enumerate(refs)]), "chat").examples
    budget = generation_budget(tok, examples, cap=16)
    perfect = _scripted(tok, examples, refs)
    report = compare(examples, None, score(perfect, tok, examples, budget), "auto", budget)
    # Both rows are still counted; a perfect model cannot match them within 16 tokens, and the report says so.
    assert report["tuned"]["metrics"]["jsonMatch"] == {"value": 0.0, "examples": 2}
    assert report["generation"]["referencesOverBudget"] == 2 and report["tuned"]["answersCutByBudget"] == 2
    assert "2 reference(s) are longer than evaluation.maxNewTokens" in format_report(report)


@pytest.mark.parametrize("shape", ["label", "text"])
def test_labels_and_free_text_through_generation(shape, tiny_model, tmp_path):
    from kubetune_trainer.model import load_tokenizer

    tok = load_tokenizer(tiny_model)
    if shape == "label":
        refs = ["billing", "outage", "billing", "outage"]
        base_answers = ["billing", "billing", "billing", "billing"]
        tuned_answers = ["Billing", "outage", "outage", "outage"]
        # base: rows 1 and 3 right (2/4); tuned: rows 1, 2, 4 (3/4). Row 3 regressed; rows 2 and 4 improved.
        # F1 = 2tp / (2tp + fp + fn). base: billing tp2 fp2 -> 2/3, outage 0 -> macro 1/3.
        # tuned: billing tp1 fn1 -> 2/3, outage tp2 fp1 -> 4/5 -> macro 11/15.
        expected = {"accuracy": (2 / 4, 3 / 4), "macroF1": (1 / 3, 11 / 15)}
    else:
        refs = ["the invoice was paid twice so we refunded the second payment today",
                "your order left the warehouse and should arrive within three working days",
                "we moved your meeting to thursday at ten because the room was taken",
                "the password reset link expires after one hour so please use it soon"]
        base_answers = [refs[0], "your order left", "no idea", "no idea"]
        tuned_answers = ["the invoice was paid twice", refs[1], refs[2], "no idea"]
        # Each reference has 12 words; a candidate that is a prefix of k words has P = 1, R = k/12:
        # "your order left" F1 = 2(3/12)/(15/12) = 0.4; "the invoice was paid twice" = 2(5/12)/(17/12) = 10/17.
        expected = {"rougeL": ((1 + 0.4 + 0 + 0) / 4, (10 / 17 + 1 + 1 + 0) / 4)}
    path = write_jsonl(tmp_path / f"{shape}.jsonl", [_chat(f"question {i}", r) for i, r in enumerate(refs)])
    examples = read_jsonl(path, "auto").examples
    budget = generation_budget(tok, examples, cap=None)
    report = compare(examples, score(_scripted(tok, examples, base_answers), tok, examples, budget),
                     score(_scripted(tok, examples, tuned_answers), tok, examples, budget), "auto", budget)
    assert report["shape"] == shape
    for name, (b, t) in expected.items():
        assert report["base"]["metrics"][name]["value"] == pytest.approx(b), name
        assert report["tuned"]["metrics"][name]["value"] == pytest.approx(t), name
        assert report["tuned"]["metrics"][name]["examples"] == 4
    if shape == "label":
        assert [e["where"] for e in report["regressedExamples"]] == [f"{path}:3"]
        assert [e["where"] for e in report["improvedExamples"]] == [f"{path}:2", f"{path}:4"]
    else:
        # Row 1 drops from 1.0 to 10/17, still above 0.5 (right); rows 2 and 3 rise from below 0.5 to 1.
        assert report["regressions"] == 0 and report["improvements"] == 2


def test_a_stored_base_score_of_the_old_format_is_recomputed():
    assert evaluate.scores_from_json({"loss": 1.0, "perplexity": 2.7, "exactMatch": 0.5, "answers": ["a", None]}) is None
    s = evaluate.ModelScores(1.0, 2.7, ["a"], 12, 0.5, truncated=1)
    assert evaluate.scores_from_json(evaluate.scores_to_json(s)) == s
