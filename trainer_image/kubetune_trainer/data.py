"""Reading and checking training data before any model is loaded.

Every defect is reported with its file and line so a user can fix the data
instead of guessing; duplicates and train/validation overlap are removed and
counted; the seeds' data-quality guidance becomes warnings. Nothing here
imports torch: `kubetune validate-data` runs on a laptop without it.
"""

from __future__ import annotations

import json
import random
import re
import statistics
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

FORMATS = ("chat", "alpaca", "prompt-completion", "text")
ROLES = ("system", "user", "assistant", "tool")

# Seeds: ~100 examples is the floor for any gain, 1,000+ for a reliable one.
MIN_EXAMPLES_WARNING = 100
# An output counts as a "class label" when it is this short; a dataset is
# classification-like when most outputs are labels drawn from few values.
LABEL_MAX_WORDS = 4
IMBALANCE_RATIO = 5.0


class DataError(ValueError):
    """The data cannot be trained on; the message says what to fix."""


@dataclass(frozen=True)
class Example:
    """One training example, normalised to chat messages or plain text.

    alpaca and prompt-completion become a user turn and an assistant turn, so
    every supervised format is trained through the same template and loss mask.
    """

    source: str
    line: int
    messages: tuple[tuple[str, str], ...] = ()
    text: str | None = None

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"

    def final_answer(self) -> str | None:
        """The last assistant turn (what exact-match scoring compares), if any."""
        if self.messages and self.messages[-1][0] == "assistant":
            return self.messages[-1][1]
        return None

    def key(self) -> str:
        """The exact content, for duplicate detection."""
        if self.text is not None:
            return self.text
        return json.dumps(self.messages, ensure_ascii=False)

    def normalised_key(self) -> str:
        """Content with case, Unicode forms and whitespace runs folded: 'Hello  World' == 'hello world'."""
        return " ".join(unicodedata.normalize("NFKC", self.key()).casefold().split())


@dataclass
class Defect:
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class FileReport:
    """What one file contained."""

    source: str
    format: str | None = None
    lines: int = 0
    examples: list[Example] = field(default_factory=list)
    errors: list[Defect] = field(default_factory=list)
    duplicates: list[Defect] = field(default_factory=list)


@dataclass
class DataReport:
    """The outcome of checking a dataset; `to_dict()` is the JSON written to storage."""

    format: str
    train: list[Example]
    validation: list[Example]
    test: list[Example]
    errors: list[Defect]
    warnings: list[str]
    duplicates: list[Defect]
    leaked: list[Defect]
    files: dict[str, int]
    validation_from_split: bool
    token_lengths: dict[str, float] | None = None

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "format": self.format,
            "files": self.files,
            "trainExamples": len(self.train),
            "validationExamples": len(self.validation),
            "testExamples": len(self.test),
            "validationFromSplit": self.validation_from_split,
            "invalidLines": len(self.errors),
            "errors": [str(d) for d in self.errors],
            "duplicatesRemoved": len(self.duplicates),
            "duplicates": [str(d) for d in self.duplicates],
            "leakedExamples": len(self.leaked),
            "leaked": [str(d) for d in self.leaked],
            "warnings": self.warnings,
            "tokenLengths": self.token_lengths,
        }

    def format_text(self, limit: int = 50) -> str:
        """A readable report for the terminal: errors first, each with file:line."""
        out = []
        verdict = "OK" if self.ok else f"FAILED: {len(self.errors)} invalid line(s)"
        out.append(f"Data check: {verdict}")
        out.append(f"  format: {self.format}")
        for src, n in self.files.items():
            out.append(f"  {src}: {n} lines")
        split = " (held out from train)" if self.validation_from_split else ""
        out.append(f"  examples: train {len(self.train)}, validation {len(self.validation)}{split}, test {len(self.test)}")
        out.append(f"  duplicates removed: {len(self.duplicates)}; validation examples also in train (removed): {len(self.leaked)}")
        if self.token_lengths:
            t = self.token_lengths
            out.append(
                f"  tokens per example: min {t['min']:.0f}, mean {t['mean']:.1f}, p50 {t['p50']:.0f}, "
                f"p95 {t['p95']:.0f}, max {t['max']:.0f} (limit {t['limit']:.0f})"
            )
        for title, items in (("errors", self.errors), ("duplicates", self.duplicates), ("leakage", self.leaked)):
            if items:
                out.append(f"{title}:")
                out.extend(f"  {d}" for d in items[:limit])
                if len(items) > limit:
                    out.append(f"  ... and {len(items) - limit} more (see the JSON report)")
        if self.warnings:
            out.append("warnings:")
            out.extend(f"  {w}" for w in self.warnings)
        return "\n".join(out)


def detect_format(record: dict[str, Any]) -> str | None:
    """The format a JSON object is written in, judged by its keys."""
    if "messages" in record:
        return "chat"
    if "instruction" in record:
        return "alpaca"
    if "prompt" in record or "completion" in record:
        return "prompt-completion"
    if "text" in record:
        return "text"
    return None


def _string_field(record: dict[str, Any], name: str, required: bool = True) -> tuple[str | None, str | None]:
    """(value, problem) for a string field."""
    if name not in record:
        return None, f"missing field '{name}'" if required else None
    value = record[name]
    if not isinstance(value, str):
        return None, f"{name}: expected a string, got {type(value).__name__}"
    if required and not value.strip():
        return None, f"{name}: empty"
    return value, None


def parse_record(record: Any, fmt: str, source: str, line: int) -> tuple[Example | None, list[str]]:
    """One JSON value as an Example in the given format, or the list of its problems."""
    if not isinstance(record, dict):
        return None, [f"expected a JSON object, got {type(record).__name__}"]
    problems: list[str] = []
    if fmt == "chat":
        messages = record.get("messages")
        if not isinstance(messages, list) or not messages:
            return None, ["missing field 'messages'" if messages is None else "messages: expected a non-empty list"]
        turns = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict):
                problems.append(f"messages[{i}]: expected an object with role and content")
                continue
            role = m.get("role")
            if role not in ROLES:
                problems.append(f"messages[{i}].role: unknown role {role!r} (expected one of {', '.join(ROLES)})")
            content = m.get("content")
            if not isinstance(content, str):
                problems.append(f"messages[{i}].content: expected a string")
            elif not content.strip():
                problems.append(f"messages[{i}].content: empty")
            turns.append((role, content))
        if not problems and not any(r == "assistant" for r, _ in turns):
            problems.append("no assistant turn")
        if problems:
            return None, problems
        return Example(source, line, messages=tuple(turns)), []
    if fmt == "alpaca":
        instruction, p1 = _string_field(record, "instruction")
        extra, p2 = _string_field(record, "input", required=False)
        output, p3 = _string_field(record, "output")
        problems = [p for p in (p1, p2, p3) if p]
        if problems:
            return None, problems
        prompt = instruction if not (extra and extra.strip()) else f"{instruction}\n\n{extra}"
        return Example(source, line, messages=(("user", prompt), ("assistant", output))), []
    if fmt == "prompt-completion":
        prompt, p1 = _string_field(record, "prompt")
        completion, p2 = _string_field(record, "completion")
        problems = [p for p in (p1, p2) if p]
        if problems:
            return None, problems
        return Example(source, line, messages=(("user", prompt), ("assistant", completion))), []
    if fmt == "text":
        text, p = _string_field(record, "text")
        if p:
            return None, [p]
        return Example(source, line, text=text), []
    raise ValueError(f"unknown format {fmt!r}")


def read_jsonl(path: Path, fmt: str, source: str | None = None) -> FileReport:
    """Parse a JSONL file; with fmt 'auto' the first JSON object's keys decide the format for the file."""
    source = source or str(path)
    report = FileReport(source=source, format=None if fmt == "auto" else fmt)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"{source}: cannot read: {err.strerror or err}") from err
    for number, line_bytes in enumerate(raw.splitlines(), start=1):
        report.lines = number
        try:
            line = line_bytes.decode("utf-8")
        except UnicodeDecodeError as err:
            report.errors.append(Defect(f"{source}:{number}", f"not UTF-8 (byte {err.start})"))
            continue
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            report.errors.append(Defect(f"{source}:{number}", f"invalid JSON: {err.msg} (column {err.colno})"))
            continue
        if report.format is None:
            detected = detect_format(record) if isinstance(record, dict) else None
            if detected is None:
                report.errors.append(
                    Defect(f"{source}:{number}", "cannot detect the format: expected messages, instruction/output, prompt/completion or text")
                )
                continue
            report.format = detected
        example, problems = parse_record(record, report.format, source, number)
        report.errors.extend(Defect(f"{source}:{number}", p) for p in problems)
        if example is not None:
            report.examples.append(example)
    if not raw.strip():
        report.errors.append(Defect(f"{source}", "the file is empty"))
    return report


def deduplicate(examples: list[Example]) -> tuple[list[Example], list[Defect]]:
    """Keep the first of exact or normalised duplicates; report each dropped one with its original."""
    first_seen: dict[str, Example] = {}
    kept, dropped = [], []
    for ex in examples:
        exact, norm = ex.key(), ex.normalised_key()
        original = first_seen.get(exact) or first_seen.get(norm)
        if original is not None:
            kind = "duplicate" if original.key() == exact else "near-duplicate (differs only in case/whitespace)"
            dropped.append(Defect(ex.where, f"{kind} of {original.where}; removed"))
            continue
        first_seen.setdefault(exact, ex)
        first_seen.setdefault(norm, ex)
        kept.append(ex)
    return kept, dropped


def remove_leakage(train: list[Example], held_out: list[Example]) -> tuple[list[Example], list[Defect]]:
    """Held-out examples that also occur in train inflate the evaluation: drop them from the held-out side."""
    seen = {ex.normalised_key(): ex for ex in train}
    kept, leaked = [], []
    for ex in held_out:
        original = seen.get(ex.normalised_key())
        if original is not None:
            leaked.append(Defect(ex.where, f"also in training data at {original.where}; removed from evaluation"))
        else:
            kept.append(ex)
    return kept, leaked


def split_validation(examples: list[Example], share: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Deterministic hold-out: the same seed and data give the same split on every attempt."""
    if share <= 0 or len(examples) < 2:
        return examples, []
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(examples) * share))
    held = set(order[:n_val])
    return [e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held]


def quality_warnings(train: list[Example]) -> list[str]:
    """The seeds' guidance, as warnings: too little data, and class imbalance for label-like outputs."""
    warnings = []
    if 0 < len(train) < MIN_EXAMPLES_WARNING:
        warnings.append(
            f"only {len(train)} training examples; fewer than {MIN_EXAMPLES_WARNING} rarely improve a model "
            f"(1,000+ give reliable gains)"
        )
    answers = [a.strip() for a in (ex.final_answer() for ex in train) if a is not None]
    if len(answers) >= 20 and all(len(a.split()) <= LABEL_MAX_WORDS for a in answers):
        counts = Counter(answers)
        # Few distinct short answers reused often: the task is classification-like.
        if len(counts) <= max(2, len(answers) // 10):
            (top, n_top), (low, n_low) = counts.most_common()[0], counts.most_common()[-1]
            if n_top >= IMBALANCE_RATIO * n_low:
                warnings.append(
                    f"class imbalance: {top!r} has {n_top} examples but {low!r} only {n_low} "
                    f"({n_top / n_low:.0f}x); the model will lean towards {top!r}"
                )
    return warnings


def token_length_check(
    examples: list[Example], count_tokens: Callable[[Example], int], limit: int
) -> tuple[list[Defect], dict[str, float] | None]:
    """Examples longer than the limit after templating (errors), and length statistics."""
    lengths, errors = [], []
    for ex in examples:
        n = count_tokens(ex)
        lengths.append(n)
        if n > limit:
            errors.append(Defect(ex.where, f"too long: {n} tokens after templating > maxSeqLength {limit}"))
    if not lengths:
        return errors, None
    ordered = sorted(lengths)
    stats = {
        "min": float(ordered[0]),
        "mean": statistics.fmean(ordered),
        "p50": float(ordered[len(ordered) // 2]),
        "p95": float(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]),
        "max": float(ordered[-1]),
        "total": float(sum(ordered)),
        "limit": float(limit),
    }
    return errors, stats


def check_dataset(
    train_path: Path,
    fmt: str = "auto",
    validation_path: Path | None = None,
    test_path: Path | None = None,
    validation_split: float = 0.1,
    seed: int = 42,
    count_tokens: Callable[[Example], int] | None = None,
    max_seq_length: int | None = None,
    sources: dict[Path, str] | None = None,
) -> DataReport:
    """All checks at once. `sources` maps a downloaded path back to the URI users know (for messages)."""
    sources = sources or {}
    reports = {"train": read_jsonl(train_path, fmt, sources.get(train_path))}
    for role, path in (("validation", validation_path), ("test", test_path)):
        if path is not None:
            reports[role] = read_jsonl(path, fmt, sources.get(path))
    errors = [d for r in reports.values() for d in r.errors]
    formats = {r.format for r in reports.values() if r.format}
    if len(formats) > 1:
        errors.append(Defect(
            ", ".join(r.source for r in reports.values()),
            "files are in different formats: " + ", ".join(f"{r.source}={r.format}" for r in reports.values()),
        ))
    train, duplicates = deduplicate(reports["train"].examples)
    validation_from_split = "validation" not in reports
    if validation_from_split:
        train, validation = split_validation(train, validation_split, seed)
    else:
        validation, dups = deduplicate(reports["validation"].examples)
        duplicates += dups
    leaked: list[Defect] = []
    validation, leaks = remove_leakage(train, validation)
    leaked += leaks
    test: list[Example] = []
    if "test" in reports:
        test, dups = deduplicate(reports["test"].examples)
        duplicates += dups
        test, leaks = remove_leakage(train, test)
        leaked += leaks
    token_stats = None
    if count_tokens is not None and max_seq_length is not None:
        too_long, token_stats = token_length_check(train + validation + test, count_tokens, max_seq_length)
        errors += too_long
    if not reports["train"].errors and not train:
        errors.append(Defect(reports["train"].source, "no training examples"))
    warnings = quality_warnings(train)
    if leaked:
        warnings.append(f"{len(leaked)} held-out example(s) also occur in the training data; they were removed from evaluation")
    if not validation:
        warnings.append("no validation examples: evaluation and early stopping are off")
    errors.sort(key=_defect_order)
    return DataReport(
        format=next(iter(formats)) if len(formats) == 1 else (fmt if fmt != "auto" else "unknown"),
        train=train,
        validation=validation,
        test=test,
        errors=errors,
        warnings=warnings,
        duplicates=duplicates,
        leaked=leaked,
        files={r.source: r.lines for r in reports.values()},
        validation_from_split=validation_from_split,
        token_lengths=token_stats,
    )


_WHERE = re.compile(r"^(.*):(\d+)$")


def _defect_order(d: Defect) -> tuple[str, int]:
    m = _WHERE.match(d.where)
    return (m.group(1), int(m.group(2))) if m else (d.where, 0)
