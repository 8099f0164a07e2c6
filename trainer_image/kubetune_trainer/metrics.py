"""Scoring generated answers against references: the metrics that fit the answers' shape.

Pure Python (no torch), so the rules are unit-tested by hand-computed examples and
`kubetune evaluate` and the trainer share them. Every metric covers every example and
says how many it covers; nothing is silently left out.

Shapes, decided from the references unless `spec.evaluation.answerShape` says otherwise:
  json   every reference is a JSON object or array: valid-JSON rate, structural equality
         (headline), accuracy per top-level field
  label  short answers (<= 4 words) drawn from few values: accuracy (headline), macro-F1
  short  other short answers (<= 8 words, e.g. dates, numbers): exact match (headline)
  text   free text: ROUGE-L F1 (headline); an answer counts as right at ROUGE-L >= 0.5
Exact match (whitespace-normalised) is reported for every shape.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable

SHAPES = ("json", "label", "short", "text")
LABEL_MAX_WORDS = 4
SHORT_MAX_WORDS = 8
TEXT_PASS_ROUGE = 0.5
REGRESSED_LISTED = 50  # the gate counts all regressions; the report lists this many for a reviewer
IMPROVED_LISTED = 20
HEADLINE = {"json": "jsonMatch", "label": "accuracy", "short": "exactMatch", "text": "rougeL"}
CORRECT_WHEN = {
    "json": "the answer parses as JSON equal to the reference (key order and whitespace ignored)",
    "label": "the answer equals the reference label (case and whitespace ignored)",
    "short": "the answer equals the reference (whitespace normalised)",
    "text": f"ROUGE-L F1 against the reference >= {TEXT_PASS_ROUGE}",
}


def normalise(text: str) -> str:
    return " ".join(text.split())


def _label(text: str) -> str:
    return normalise(text).casefold()


def parse_json(text: str) -> tuple[bool, Any]:
    """(parsed, value). Strict: a code fence or prose around the JSON makes it invalid, as it would for a parser."""
    try:
        return True, json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return False, None


def canonical(value: Any) -> Any:
    """A comparable form of a JSON value in which true != 1 and 1 == 1.0 (Python's == conflates the first)."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (int, float)):
        return ("num", float(value))
    if isinstance(value, dict):
        return ("obj", tuple(sorted((k, canonical(v)) for k, v in value.items())))
    if isinstance(value, list):
        return ("arr", tuple(canonical(v) for v in value))
    return (type(value).__name__, value)


def detect_shape(references: list[str]) -> str:
    refs = [r.strip() for r in references]
    if refs and all(r[:1] in "{[" and parse_json(r)[0] for r in refs):
        return "json"
    if refs and all(len(r.split()) <= LABEL_MAX_WORDS for r in refs):
        # A label set repeats: on average each value is the answer at least twice.
        if len(refs) >= 4 and len({_label(r) for r in refs}) * 2 <= len(refs):
            return "label"
    if refs and all(len(r.split()) <= SHORT_MAX_WORDS for r in refs):
        return "short"
    return "text"


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.casefold())


def rouge_l(reference: str, candidate: str) -> float:
    """ROUGE-L F1 over lower-cased word tokens: longest common subsequence, by dynamic programming."""
    ref, cand = _words(reference), _words(candidate)
    if not ref or not cand:
        return float(ref == cand)
    prev = [0] * (len(cand) + 1)
    for r in ref:
        row = [0]
        for j, c in enumerate(cand, start=1):
            row.append(prev[j - 1] + 1 if r == c else max(prev[j], row[j - 1]))
        prev = row
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(cand), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def _metric(hits: list[float]) -> dict[str, Any]:
    return {"value": sum(hits) / len(hits) if hits else None, "examples": len(hits)}


def macro_f1(references: list[str], answers: list[str]) -> float:
    """Mean F1 over the reference label set; an answer outside that set is a miss for its true class."""
    refs, preds = [_label(r) for r in references], [_label(a) for a in answers]
    scores = []
    for label in sorted(set(refs)):
        tp = sum(r == label and p == label for r, p in zip(refs, preds))
        fp = sum(r != label and p == label for r, p in zip(refs, preds))
        fn = sum(r == label and p != label for r, p in zip(refs, preds))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / len(scores)


def correctness(shape: str) -> Callable[[str, str], bool]:
    """Per-example 'right' under the shape's headline metric: what regressions and improvements count."""
    if shape == "json":
        def ok(ref: str, ans: str) -> bool:
            valid, value = parse_json(ans)
            return valid and canonical(value) == canonical(json.loads(ref))
        return ok
    if shape == "label":
        return lambda ref, ans: _label(ref) == _label(ans)
    if shape == "text":
        return lambda ref, ans: rouge_l(ref, ans) >= TEXT_PASS_ROUGE
    return lambda ref, ans: normalise(ref) == normalise(ans)


def shape_metrics(shape: str, references: list[str], answers: list[str]) -> dict[str, Any]:
    """Every metric of the shape, each as {"value", "examples"} over all the examples given."""
    assert len(references) == len(answers)
    out: dict[str, Any] = {"exactMatch": _metric([float(normalise(r) == normalise(a)) for r, a in zip(references, answers)])}
    if shape == "json":
        parsed = [parse_json(a) for a in answers]
        out["validJson"] = _metric([float(ok) for ok, _ in parsed])
        ok = correctness("json")
        out["jsonMatch"] = _metric([float(ok(r, a)) for r, a in zip(references, answers)])
        out["fieldAccuracy"] = field_accuracy(references, [v if valid else None for valid, v in parsed])
    elif shape == "label":
        out["accuracy"] = _metric([float(_label(r) == _label(a)) for r, a in zip(references, answers)])
        out["macroF1"] = {"value": macro_f1(references, answers) if references else None, "examples": len(references),
                          "labels": len({_label(r) for r in references})}
    elif shape == "text":
        out["rougeL"] = _metric([rouge_l(r, a) for r, a in zip(references, answers)])
    return out


def field_accuracy(references: list[str], predictions: list[Any]) -> dict[str, Any]:
    """Per top-level field of the reference objects: the share of examples whose answer has it with the same value.

    An invalid or non-object answer gets every field wrong. The overall value is the share of all
    reference fields that were right (a micro average). References that are arrays have no fields.
    """
    per: dict[str, list[float]] = {}
    for ref_text, pred in zip(references, predictions):
        ref = json.loads(ref_text)
        if not isinstance(ref, dict):
            continue
        for key, value in ref.items():
            right = isinstance(pred, dict) and key in pred and canonical(pred[key]) == canonical(value)
            per.setdefault(key, []).append(float(right))
    every = [h for hits in per.values() for h in hits]
    return {**_metric(every), "fields": {k: _metric(v) for k, v in sorted(per.items())}}


def choose_shape(setting: str, references: list[str], where: list[str] | None = None) -> tuple[str, str]:
    """(shape, where it came from). A declared json shape must fit every reference: a clear error otherwise."""
    if setting == "auto":
        return detect_shape(references), "detected"
    if setting not in SHAPES:
        raise ValueError(f"evaluation.answerShape: unknown shape {setting!r} (expected auto or one of {', '.join(SHAPES)})")
    if setting == "json":
        bad = [i for i, r in enumerate(references) if not parse_json(r)[0]]
        if bad:
            raise ValueError(f"evaluation.answerShape: json, but {len(bad)} reference answer(s) are not valid JSON "
                             f"(first: {where[bad[0]] if where else f'held-out answer {bad[0] + 1}'})")
    return setting, "spec"


def report(
    shape: str, where: list[str], references: list[str], base: list[str] | None, tuned: list[str],
) -> dict[str, Any]:
    """Metrics for tuned (and base) and the examples that changed correctness under the headline metric.

    `regressions` is what a ModelDeployment's quality gate reads: examples the base got right
    and the tuned model gets wrong. All are counted; the first REGRESSED_LISTED are listed.
    """
    out: dict[str, Any] = {
        "shape": shape, "headline": HEADLINE[shape], "correctWhen": CORRECT_WHEN[shape],
        "tuned": shape_metrics(shape, references, tuned),
    }
    if base is None:
        return out
    out["base"] = shape_metrics(shape, references, base)
    ok = correctness(shape)
    regressed, improved = [], []
    for w, ref, b, t in zip(where, references, base, tuned):
        b_ok, t_ok = ok(ref, b), ok(ref, t)
        if b_ok != t_ok:
            (regressed if b_ok else improved).append({"where": w, "reference": ref, "base": b, "tuned": t})
    out["regressions"], out["improvements"] = len(regressed), len(improved)
    out["regressedExamples"] = regressed[:REGRESSED_LISTED]
    out["improvedExamples"] = improved[:IMPROVED_LISTED]
    return out


def headline(metrics: dict[str, Any], name: str) -> float | None:
    return (metrics.get(name) or {}).get("value")


NAMES = {"jsonMatch": "JSON match", "validJson": "valid JSON", "fieldAccuracy": "field accuracy", "accuracy": "accuracy",
         "macroF1": "macro-F1", "rougeL": "ROUGE-L F1", "exactMatch": "exact match"}
RATES = {"jsonMatch", "validJson", "fieldAccuracy", "accuracy", "exactMatch"}  # shown in percent; F1 scores as 0-1


def _value(name: str, v: float | None) -> str:
    if v is None:
        return "n/a"
    return f"{100 * v:.1f}%" if name in RATES else f"{v:.3f}"


def format_report(ev: dict[str, Any], listed: int = 5) -> str:
    """The report as a terminal reads it: headline first, every metric with its coverage, then the
    regressed and improved examples (the first `listed` of each; all are in the JSON report)."""
    tuned, base = ev["tuned"], ev.get("base")
    arrow = "base → tuned" if base else "tuned"
    shape = f"; answers: {ev['shape']} ({ev['shapeFrom']})" if "shape" in ev else ""
    lines = [f"Held-out evaluation ({ev['samples']} examples{shape}), {arrow}:"]

    def row(label: str, b: str | None, t: str, extra: str = "") -> None:
        lines.append(f"  {label:<16} {(b + ' → ') if b is not None else ''}{t}{extra}")

    row("loss", f"{base['loss']:.3f}" if base else None, f"{tuned['loss']:.3f}")
    row("perplexity", f"{base['perplexity']:.2f}" if base else None, f"{tuned['perplexity']:.2f}")
    if "headline" not in ev:
        lines.append("  (no example ends in an answer to generate: loss only)")
        return "\n".join(lines)
    head = ev["headline"]
    names = [head] + [n for n in tuned["metrics"] if n != head]
    for name in names:
        t = tuned["metrics"][name]
        b = base["metrics"][name] if base else None
        extra = f"  ({ev['improvements']} fixed, {ev['regressions']} regressed)" if base and name == head else ""
        # Per-field accuracy counts fields (examples x fields), not examples.
        cover = f"  [{t['examples']} {'fields' if t.get('fields') else 'examples'}]"
        row(NAMES[name] + (" *" if name == head else ""), _value(name, b["value"]) if b else None,
            _value(name, t["value"]), extra + cover)
        for field, fm in t.get("fields", {}).items():
            bf = b["fields"].get(field) if b else None
            row(f"  .{field}", _value(name, bf["value"]) if bf else ("n/a" if base else None), _value(name, fm["value"]),
                f"  [{fm['examples']}]")
    gen = ev.get("generation")
    note = f"  * headline; an answer counts as right when {ev['correctWhen']}"
    if gen:
        note += f".\n  Generation budget {gen['maxNewTokens']} new tokens (longest reference {gen['longestReferenceTokens']})"
        if gen["referencesOverBudget"]:
            note += f"; {gen['referencesOverBudget']} reference(s) are longer than evaluation.maxNewTokens and cannot match"
    cut = [f"{who} {ev[who]['answersCutByBudget']}" for who in ("base", "tuned") if ev.get(who, {}).get("answersCutByBudget")]
    if cut:
        note += f"; answers cut off by the budget (unfinished, so usually wrong): {', '.join(cut)}"
    if ev["scoredExamples"] != ev["samples"]:
        note += f"; {ev['samples'] - ev['scoredExamples']} example(s) have no answer to generate (loss only)"
    lines.append(note + ".")
    for title, key, total in (("Regressed (base right, tuned wrong)", "regressedExamples", "regressions"),
                              ("Improved (base wrong, tuned right)", "improvedExamples", "improvements")):
        items = ev.get(key) or []
        if not items:
            continue
        lines.append(f"{title}: {ev[total]}" + (f", first {listed}:" if ev[total] > listed else ":"))
        for item in items[:listed]:
            lines.append(f"  {item['where']}")
            for who in ("reference", "base", "tuned"):
                lines.append(f"    {who:<9} {_clip(item[who])}")
    return "\n".join(lines)


def _clip(text: str, width: int = 110) -> str:
    text = normalise(text)
    return text if len(text) <= width else text[: width - 1] + "…"
