"""`kubetune evaluate`: the trainer's scoring, from the command line, on any JSONL file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubetune.cli import main

from .tiny import task_examples, write_job, write_jsonl

pytestmark = pytest.mark.trainer


def _identity_adapter(base: Path, out: Path) -> Path:
    """A LoRA adapter as PEFT initialises it: B = 0, so the tuned model computes exactly what the base does."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


def test_an_identity_adapter_scores_like_its_base_on_every_row(tiny_model, tmp_path, capsys):
    rows = task_examples(5, seed=3)
    # One answer far longer than 32 tokens: it must be generated and counted like the others.
    rows.append({"messages": [{"role": "user", "content": "reverse: " + " ".join(["red green blue cat dog"] * 8)},
                              {"role": "assistant", "content": " ".join(["dog cat blue green red"] * 8)}]})
    data = write_jsonl(tmp_path / "eval.jsonl", rows)
    adapter = _identity_adapter(tiny_model, tmp_path / "adapter")
    out = tmp_path / "report.json"
    assert main(["evaluate", str(adapter), "--data", str(data), "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["samples"] == 6 and report["scoredExamples"] == 6
    assert report["models"] == {"tuned": str(adapter), "base": str(tiny_model)}  # the base named in adapter_config.json
    assert report["generation"]["longestReferenceTokens"] > 32
    base, tuned = report["base"], report["tuned"]
    assert tuned["loss"] == pytest.approx(base["loss"], rel=1e-6)
    assert tuned["metrics"] == base["metrics"] and tuned["metrics"]["exactMatch"]["examples"] == 6
    assert report["regressions"] == 0 and report["improvements"] == 0
    assert f"Held-out evaluation (6 examples; answers: {report['shape']} (detected)), base → tuned:" in capsys.readouterr().out


def test_scores_a_trained_adapter_as_the_trainer_did(tiny_model, tiny_data, tmp_path):
    train, val = tiny_data
    job = write_job(tmp_path / "job.yaml", tiny_model, train, val, method="lora", maxSteps=3)
    run = tmp_path / "run"
    assert main(["train", "-f", str(job), "--output-dir", str(run)]) == 0
    trained = json.loads((run / "reports/evaluation.json").read_text())
    out = tmp_path / "again.json"
    assert main(["evaluate", str(run / "adapter"), "--base", str(tiny_model), "--data", str(val),
                 "--max-samples", "8", "--output", str(out)]) == 0
    again = json.loads(out.read_text())
    for key in ("samples", "shape", "headline", "generation", "regressions", "improvements"):
        assert again[key] == trained[key], key
    for who in ("base", "tuned"):
        assert again[who]["loss"] == pytest.approx(trained[who]["loss"], rel=1e-4)
        assert again[who]["metrics"] == trained[who]["metrics"]


def test_bad_input_exits_65_naming_the_line_or_the_argument(tiny_model, tmp_path, capsys):
    adapter = _identity_adapter(tiny_model, tmp_path / "adapter")
    good = json.dumps(task_examples(1, seed=4)[0])
    data = tmp_path / "bad.jsonl"
    data.write_text(good + "\n{\"messages\": [}\n")
    assert main(["evaluate", str(adapter), "--data", str(data)]) == 65
    assert f"{data}:2: invalid JSON" in capsys.readouterr().err

    data.write_text(good + "\n")
    assert main(["evaluate", str(adapter), "--data", str(data), "--answer-shape", "json"]) == 65
    assert f"--answer-shape: json, but 1 reference answer(s) are not valid JSON (first: {data}:1)" in capsys.readouterr().err

    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(tmp_path / "gone")}))
    assert main(["evaluate", str(adapter), "--data", str(data)]) == 65
    assert "pass --base" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "nothing"), "--data", str(data)]) == 65
    assert "model: " in capsys.readouterr().err


def test_adapter_and_data_from_s3(s3_server, s3_bucket, tiny_model, tmp_path, monkeypatch):
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    client = s3_server.client()
    adapter = _identity_adapter(tiny_model, tmp_path / "adapter")
    for f in adapter.iterdir():
        client.upload_file(str(f), s3_bucket, f"runs/ns/job/adapter/{f.name}")
    data = write_jsonl(tmp_path / "eval.jsonl", task_examples(4, seed=5))
    client.upload_file(str(data), s3_bucket, "data/eval.jsonl")
    out = tmp_path / "report.json"
    assert main(["evaluate", f"s3://{s3_bucket}/runs/ns/job/adapter", "--data", f"s3://{s3_bucket}/data/eval.jsonl",
                 "--base", str(tiny_model), "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["samples"] == 4 and report["base"]["metrics"] == report["tuned"]["metrics"]
    assert report["tuned"]["metrics"]["exactMatch"]["examples"] == 4
