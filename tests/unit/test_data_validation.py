"""Data validation: defects on known lines with exact messages, dedupe, leakage, warnings, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubetune_trainer.data import check_dataset, read_jsonl

pytestmark = pytest.mark.unit


def chat(user: str, answer: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]})


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_every_defect_is_reported_with_file_line_and_exact_message(tmp_path):
    f = write(tmp_path / "train.jsonl", [
        chat("hi", "hello"),                                                                  # 1 ok
        '{"messages": [{"role": "user", "content": "x"}',                                     # 2 invalid JSON
        json.dumps({"messages": [{"role": "bot", "content": "x"}, {"role": "assistant", "content": "y"}]}),  # 3
        json.dumps({"messages": [{"role": "user", "content": "only a question"}]}),          # 4
        json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]}),  # 5
        json.dumps({"prompt": "p", "completion": "c"}),                                       # 6 other format
        "[1, 2]",                                                                             # 7
        "",                                                                                   # 8 blank: fine
        chat("second", "fine"),                                                               # 9 ok
    ])
    report = check_dataset(f, "auto", validation_split=0)
    assert [str(e) for e in report.errors] == [
        f"{f}:2: invalid JSON: Expecting ',' delimiter (column 47)",
        f"{f}:3: messages[0].role: unknown role 'bot' (expected one of system, user, assistant, tool)",
        f"{f}:4: no assistant turn",
        f"{f}:5: messages[1].content: empty",
        f"{f}:6: missing field 'messages'",
        f"{f}:7: expected a JSON object, got list",
    ]
    assert not report.ok and len(report.train) == 2 and report.format == "chat"


@pytest.mark.parametrize("fmt,line,message", [
    ("alpaca", json.dumps({"instruction": "do it"}), "missing field 'output'"),
    ("alpaca", json.dumps({"instruction": "do it", "output": 3}), "output: expected a string, got int"),
    ("prompt-completion", json.dumps({"prompt": "", "completion": "c"}), "prompt: empty"),
    ("text", json.dumps({"text": ""}), "text: empty"),
])
def test_format_specific_messages(tmp_path, fmt, line, message):
    f = write(tmp_path / "d.jsonl", [line])
    assert [str(e) for e in read_jsonl(f, fmt).errors] == [f"{f}:1: {message}"]


def test_auto_detects_each_format_and_normalises_to_chat(tmp_path):
    cases = {
        "alpaca": json.dumps({"instruction": "Add", "input": "1 2", "output": "3"}),
        "prompt-completion": json.dumps({"prompt": "1+2=", "completion": "3"}),
        "text": json.dumps({"text": "free text"}),
        "chat": chat("1+2", "3"),
    }
    for fmt, line in cases.items():
        r = read_jsonl(write(tmp_path / f"{fmt}.jsonl", [line]), "auto")
        assert r.format == fmt and not r.errors
    alpaca = read_jsonl(tmp_path / "alpaca.jsonl", "auto").examples[0]
    assert alpaca.messages == (("user", "Add\n\n1 2"), ("assistant", "3"))


def test_exact_and_normalised_duplicates_removed_with_their_originals(tmp_path):
    f = write(tmp_path / "t.jsonl", [chat("Hello world", "A"), chat("Hello world", "A"), chat("hello   WORLD", "a"), chat("other", "B")])
    report = check_dataset(f, validation_split=0)
    assert [str(d) for d in report.duplicates] == [
        f"{f}:2: duplicate of {f}:1; removed",
        f"{f}:3: near-duplicate (differs only in case/whitespace) of {f}:1; removed",
    ]
    assert len(report.train) == 2 and report.ok


def test_leakage_between_train_and_validation_is_reported_and_removed(tmp_path):
    train = write(tmp_path / "train.jsonl", [chat(f"q{i}", f"a{i}") for i in range(5)])
    val = write(tmp_path / "val.jsonl", [chat("Q3", "A3"), chat("new", "x")])
    report = check_dataset(train, validation_path=val)
    assert [str(d) for d in report.leaked] == [f"{val}:1: also in training data at {train}:4; removed from evaluation"]
    assert len(report.validation) == 1
    assert any("also occur in the training data" in w for w in report.warnings)


def test_validation_split_is_deterministic(tmp_path):
    f = write(tmp_path / "t.jsonl", [chat(f"q{i}", f"a{i}") for i in range(50)])
    a, b = check_dataset(f, validation_split=0.2, seed=1), check_dataset(f, validation_split=0.2, seed=1)
    assert [e.line for e in a.validation] == [e.line for e in b.validation] and len(a.validation) == 10
    assert {e.line for e in a.validation}.isdisjoint({e.line for e in a.train})


def test_warnings_for_too_few_examples_and_class_imbalance(tmp_path):
    lines = [chat(f"review {i}", "positive") for i in range(40)] + [chat(f"bad review {i}", "negative") for i in range(4)]
    report = check_dataset(write(tmp_path / "t.jsonl", lines), validation_split=0)
    assert report.warnings[0] == "only 44 training examples; fewer than 100 rarely improve a model (1,000+ give reliable gains)"
    assert report.warnings[1].startswith("class imbalance: 'positive' has 40 examples but 'negative' only 4 (10x)")


def test_too_long_examples_are_errors_with_lengths_and_stats(tmp_path):
    f = write(tmp_path / "t.jsonl", [chat("short", "a"), chat("word " * 50, "b")])
    report = check_dataset(f, validation_split=0, count_tokens=lambda ex: sum(len(c.split()) for _, c in ex.messages), max_seq_length=20)
    assert [str(e) for e in report.errors] == [f"{f}:2: too long: 51 tokens after templating > maxSeqLength 20"]
    assert report.token_lengths["max"] == 51 and report.token_lengths["min"] == 2


def test_validate_data_cli_prints_report_and_exits_65_on_defects(tmp_path, capsys):
    from kubetune.cli import main

    good = write(tmp_path / "good.jsonl", [chat(f"q{i}", f"a{i}") for i in range(10)])
    assert main(["validate-data", str(good)]) == 0
    assert "Data check: OK" in capsys.readouterr().out
    bad = write(tmp_path / "bad.jsonl", [chat("q", "a"), "{nope"])
    assert main(["validate-data", str(bad)]) == 65
    out = capsys.readouterr().out
    assert "Data check: FAILED: 1 invalid line(s)" in out and f"{bad}:2: invalid JSON" in out
    assert main(["validate-data", str(bad), "--json"]) == 65
    assert json.loads(capsys.readouterr().out)["invalidLines"] == 1


def test_commands_module_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, kubetune_trainer.commands; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
