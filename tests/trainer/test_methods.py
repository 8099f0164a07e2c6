"""qlora, lora and full each train a few steps on a tiny model and save loadable outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubetune.cli import main

from .tiny import write_job

pytestmark = pytest.mark.trainer


@pytest.mark.parametrize("method", ["lora", "qlora", "full"])
def test_method_trains_and_saves_loadable_outputs(method, tiny_model, tiny_data, tmp_path, capsys):
    train, val = tiny_data
    job = write_job(tmp_path / "job.yaml", tiny_model, train, val, method=method,
                    storage={"uri": "unused", "checkpointIntervalSteps": 3})
    out = tmp_path / "run"
    assert main(["train", "-f", str(job), "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Held-out evaluation" in printed and str(out) in printed

    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2, 3, 4, 5, 6]
    assert any("evalLoss" in m for m in metrics)
    report = json.loads((out / "reports/evaluation.json").read_text())
    assert report["samples"] == 8 and report["base"]["loss"] > 0 and report["tuned"]["loss"] > 0
    # Every held-out example is generated and scored, by every metric of the detected shape.
    assert report["scoredExamples"] == 8 and report["headline"] in report["tuned"]["metrics"]
    assert {m["examples"] for m in report["tuned"]["metrics"].values()} == {8}
    assert report["generation"]["maxNewTokens"] >= report["generation"]["longestReferenceTokens"]
    assert (out / "loss-curve.png").stat().st_size > 0
    # Checkpoints at 3 and 6, each complete (manifest written).
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000003", "step-00000006"]
    assert all((p / "MANIFEST.json").is_file() for p in (out / "checkpoints").iterdir())

    from transformers import AutoModelForCausalLM, AutoTokenizer

    if method == "full":
        model = AutoModelForCausalLM.from_pretrained(out / "model")
        AutoTokenizer.from_pretrained(out / "model")
    else:
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(tiny_model)
        model = PeftModel.from_pretrained(base, out / "adapter")
        config = json.loads((out / "adapter" / "adapter_config.json").read_text())
        assert config["r"] == 4 and config["peft_type"] == "LORA"
        # all-linear: every projection of every layer carries an adapter, the output head does not.
        adapted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in model.named_parameters() if "lora_A" in n}
        assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
        AutoTokenizer.from_pretrained(out / "adapter")
    ids = AutoTokenizer.from_pretrained(tiny_model)("reverse: red cat", return_tensors="pt")
    assert model(**ids).logits.shape[-1] == base_vocab(tiny_model)


def base_vocab(model_dir: Path) -> int:
    return json.loads((model_dir / "config.json").read_text())["vocab_size"]


def test_merged_weights_when_asked(tiny_model, tiny_data, tmp_path):
    import yaml

    train, val = tiny_data
    job = write_job(tmp_path / "job.yaml", tiny_model, train, val, method="lora", maxSteps=2)
    doc = yaml.safe_load(job.read_text())
    doc["spec"]["output"] = {"mergeAdapter": True}
    doc["spec"]["evaluation"]["compareWithBase"] = False
    job.write_text(yaml.safe_dump(doc))
    out = tmp_path / "run"
    assert main(["train", "-f", str(job), "--output-dir", str(out)]) == 0
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    assert not any("lora" in n for n, _ in merged.named_parameters())
