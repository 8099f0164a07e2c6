"""Answer-shape detection and the metrics of each shape, against scores worked out by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubetune_trainer import metrics
from kubetune_trainer.metrics import choose_shape, detect_shape, format_report, report, rouge_l, shape_metrics

pytestmark = pytest.mark.unit

PEOPLE = [
    {"name": "Ada Lovelace", "city": "London", "age": 36},
    {"name": "Alan Turing", "city": "Wilmslow", "age": 41},
    {"name": "Grace Hopper", "city": "New York", "age": 85},
    {"name": "Linus Torvalds", "city": "Helsinki", "age": 20},
]
REFS = [json.dumps(p) for p in PEOPLE]
WHERE = [f"test.jsonl:{i}" for i in range(1, 5)]


def test_shapes_are_detected_from_the_references():
    assert detect_shape(REFS) == "json"
    assert detect_shape(["2007-09-15", "1968-08-25", "1999-05-19"]) == "short"  # every date differs: not labels
    assert detect_shape(["spam", "ham", "spam", "ham"]) == "label"
    assert detect_shape(["The meeting moved to Thursday because the room was booked twice."] * 2) == "text"
    # One reference that is prose makes the set not JSON (every reference must parse).
    assert detect_shape(REFS + ["no JSON here"]) != "json"


def test_json_metrics_count_a_wrong_field_an_invalid_answer_and_key_order():
    tuned = [
        '{"age": 36,  "city": "London", "name": "Ada Lovelace"}',  # same object, other key order and spacing
        '{"name": "Alan Turing", "city": "Manchester", "age": 41}',  # one wrong field
        "```json\n" + REFS[2] + "\n```",  # a code fence: a JSON parser would reject it
        REFS[3],  # identical text
    ]
    m = shape_metrics("json", REFS, tuned)
    assert m["validJson"] == {"value": 3 / 4, "examples": 4}
    assert m["jsonMatch"] == {"value": 2 / 4, "examples": 4}  # rows 1 and 4
    assert m["exactMatch"] == {"value": 1 / 4, "examples": 4}  # only row 4 is the same text
    fields = m["fieldAccuracy"]
    # name right in 1, 2, 4; city right in 1, 4; age right in 1, 2, 4: 8 of 12 field values.
    assert fields["value"] == pytest.approx(8 / 12) and fields["examples"] == 12
    assert fields["fields"] == {"age": {"value": 0.75, "examples": 4}, "city": {"value": 0.5, "examples": 4},
                                "name": {"value": 0.75, "examples": 4}}


def test_json_booleans_are_not_numbers_but_1_equals_1_0():
    ok = metrics.correctness("json")
    assert not ok('{"active": true}', '{"active": 1}')  # Python's True == 1 must not leak in
    assert ok('{"score": 1}', '{"score": 1.0}')
    assert not ok('{"tags": ["a", "b"]}', '{"tags": ["b", "a"]}')  # array order matters


def test_report_lists_the_regression_and_the_improvement_under_the_headline():
    base = ["not json", REFS[1], "{", REFS[3]]
    tuned = [REFS[0], REFS[1].replace("Wilmslow", "Manchester"), "{", REFS[3]]
    r = report("json", WHERE, REFS, base, tuned)
    assert r["headline"] == "jsonMatch"
    assert r["regressions"] == 1 and r["improvements"] == 1
    [reg] = r["regressedExamples"]
    assert reg["where"] == "test.jsonl:2" and reg["base"] == REFS[1] and "Manchester" in reg["tuned"]
    assert [i["where"] for i in r["improvedExamples"]] == ["test.jsonl:1"]
    assert r["base"]["jsonMatch"]["value"] == 2 / 4 and r["tuned"]["jsonMatch"]["value"] == 2 / 4
    text = format_report({"samples": 4, "scoredExamples": 4, "shapeFrom": "detected", **r,
                          "tuned": {"loss": 0.5, "perplexity": 1.65, "metrics": r["tuned"]},
                          "base": {"loss": 1.0, "perplexity": 2.72, "metrics": r["base"]}})
    assert "JSON match *     50.0% → 50.0%  (1 fixed, 1 regressed)  [4 examples]" in text
    assert "test.jsonl:2" in text and "Manchester" in text


def test_regressions_are_all_counted_but_the_listing_is_bounded():
    n = metrics.REGRESSED_LISTED + 7
    refs = ["yes", "no"] * n
    r = report("label", [f"f:{i}" for i in range(2 * n)], refs, refs, ["maybe"] * (2 * n))
    assert r["regressions"] == 2 * n and len(r["regressedExamples"]) == metrics.REGRESSED_LISTED


def test_label_accuracy_and_macro_f1():
    refs = ["positive", "negative", "positive", "neutral", "negative", "positive"]
    answers = ["Positive", "negative", "negative", "neutral", "spam", "positive"]
    assert detect_shape(refs) == "label"
    m = shape_metrics("label", refs, answers)
    assert m["accuracy"] == {"value": 4 / 6, "examples": 6}  # labels compare case-insensitively
    assert m["exactMatch"]["value"] == 3 / 6  # exact match does not fold case
    # F1 per class, 2tp / (2tp + fp + fn): positive 4/5, negative 2/4, neutral 2/2; "spam" is only a miss.
    assert m["macroF1"]["value"] == pytest.approx((0.8 + 0.5 + 1.0) / 3)
    assert m["macroF1"]["labels"] == 3


def test_rouge_l_is_the_lcs_f1_over_words():
    # LCS "the cat on the mat" = 5 of 6 words each way.
    assert rouge_l("the cat sat on the mat", "The cat lay on the mat.") == pytest.approx(5 / 6)
    # LCS "a c": precision 2/2, recall 2/4, F1 = 2 * 1 * 0.5 / 1.5.
    assert rouge_l("a b c d", "a c") == pytest.approx(2 / 3)
    assert rouge_l("a b", "c d") == 0.0 and rouge_l("", "") == 1.0


def test_text_regressions_use_the_rouge_threshold():
    refs = ["the parcel arrives on monday morning at the front desk of the office",
            "please reset the router and call support if the light stays red"]
    base = [refs[0], "call support"]  # row 2: LCS 2 of 2 and 12 words: F1 = 2*1*(2/12)/(1+2/12) = 2/7 < 0.5
    tuned = ["the parcel arrives", refs[1]]  # row 1: 3 of 13 words: F1 = 2*1*(3/13)/(1+3/13) = 0.375
    r = report("text", ["a:1", "a:2"], refs, base, tuned)
    assert r["tuned"]["rougeL"]["value"] == pytest.approx((0.375 + 1.0) / 2)
    assert r["base"]["rougeL"]["value"] == pytest.approx((1.0 + 2 / 7) / 2)
    assert r["regressions"] == 1 and r["regressedExamples"][0]["where"] == "a:1"
    assert r["improvements"] == 1


def test_a_declared_json_shape_that_does_not_fit_names_the_line():
    with pytest.raises(ValueError, match=r"answerShape: json, but 1 reference answer\(s\) are not valid JSON \(first: t:2\)"):
        choose_shape("json", [REFS[0], "plain"], ["t:1", "t:2"])
    assert choose_shape("text", ["2020-01-01"]) == ("text", "spec")
    assert choose_shape("auto", REFS) == ("json", "detected")


def test_the_json_extraction_example_tests_unseen_contacts():
    from kubetune.api.manifest import load_manifest
    from kubetune_trainer.data import read_jsonl

    examples_dir = Path(__file__).resolve().parents[2] / "manifests" / "examples"
    spec = load_manifest(examples_dir / "json-extraction.yaml").spec
    train = read_jsonl(examples_dir / spec.dataset.train, "chat")
    test = read_jsonl(examples_dir / spec.dataset.test, "chat")
    assert not train.errors and not test.errors and len(test.examples) == 60
    answers = [json.loads(ex.final_answer()) for ex in test.examples]
    assert detect_shape([ex.final_answer() for ex in test.examples]) == "json"
    train_names = {json.loads(ex.final_answer())["name"].split()[0] for ex in train.examples}
    assert not {a["name"].split()[0] for a in answers} & train_names, "test first names must be unseen in train"
