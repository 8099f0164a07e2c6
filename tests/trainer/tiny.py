"""A tiny Llama-architecture model and tokenizer built offline, and a small task to train it on.

The tokenizer is a byte-level BPE trained on the task's own text, with a
ChatML template, so the trainer's template/mask/packing code runs exactly as
it does for SmolLM2 — only ~100x smaller.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import yaml

CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
WORDS = ["red", "green", "blue", "cat", "dog", "sun", "moon", "tree", "fish", "bird"]


def task_examples(n: int, seed: int) -> list[dict]:
    """'Reverse these words' — short answers, deterministic, learnable."""
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < n:
        words = tuple(rng.sample(WORDS, rng.randint(2, 4)))
        if words in seen:
            continue
        seen.add(words)
        out.append({"messages": [
            {"role": "user", "content": "reverse: " + " ".join(words)},
            {"role": "assistant", "content": " ".join(reversed(words))},
        ]})
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def build_tiny_model(target: Path, hidden: int = 32, layers: int = 2) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    import torch

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [json.dumps(r) for r in task_examples(200, 0)] + ["user assistant system reverse:"]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token=None, unk_token=None)
    fast.chat_template = CHATML
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(fast), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id, bos_token_id=None, tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(target)
    fast.save_pretrained(target)
    return target


def write_job(path: Path, model_dir: Path, train: Path, validation: Path | None, method: str = "lora",
              storage: dict | None = None, **hyper) -> Path:
    """A FineTuneJob manifest for a short run on the tiny model."""
    hp = {"maxSteps": 6, "learningRate": 0.01, "batchSize": 2, "gradientAccumulationSteps": 1, "warmupRatio": 0.0,
          "maxSeqLength": 64, "packing": True, "gradientCheckpointing": False, "seed": 7, "loggingSteps": 1}
    hp.update(hyper)
    spec = {
        "baseModel": {"uri": str(model_dir)},
        "dataset": {"train": str(train), "format": "chat", **({"validation": str(validation)} if validation else {})},
        "method": method,
        "lora": {"r": 4, "alpha": 8, "dropout": 0.1},
        "hyperparameters": hp,
        "evaluation": {"evalSteps": 3, "maxSamples": 8},
        "resources": {"gpusPerNode": 0},
    }
    if method == "qlora":
        spec["quantization"] = {"quantType": "nf4", "doubleQuant": True, "computeDtype": "float32"}
    if storage:
        spec["storage"] = storage
    doc = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "tiny"}, "spec": spec}
    path.write_text(yaml.safe_dump(doc))
    return path
