"""QLoRA on CUDA: 4-bit nf4 base in bf16 compute, adapter trains and loads (skipped without a GPU)."""

from __future__ import annotations

import json

import pytest

from kubetune.cli import main

from .tiny import write_job

pytestmark = pytest.mark.gpu


def test_qlora_on_cuda_trains_and_saves_loadable_adapter(tiny_model, tiny_data, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    train, val = tiny_data
    job = write_job(tmp_path / "job.yaml", tiny_model, train, val, method="qlora", maxSteps=6)
    job.write_text(job.read_text().replace("computeDtype: float32", "computeDtype: bfloat16"))
    out = tmp_path / "run"
    assert main(["train", "-f", str(job), "--output-dir", str(out)]) == 0
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert len(losses) == 6 and all(l == l for l in losses)  # no NaN in bf16
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16).cuda()
    model = PeftModel.from_pretrained(base, out / "adapter")
    assert any("lora_A" in n for n, _ in model.named_parameters())
