"""Packing: attention does not cross examples, the loss mask covers only answers, efficiency is high."""

from __future__ import annotations

import pytest

from kubetune_trainer.data import Example
from kubetune_trainer.tokenize import IGNORE_INDEX, PackedCollator, PaddedCollator, encode, pack, padding_efficiency, training_rows

pytestmark = pytest.mark.trainer


def examples(n: int) -> list[Example]:
    words = ["red", "green", "blue", "cat", "dog", "sun", "moon"]
    return [Example("mem", i + 1, messages=(("user", "reverse: " + " ".join(words[: 2 + i % 5])),
                                            ("assistant", " ".join(reversed(words[: 2 + i % 5]))))) for i in range(n)]


def test_loss_only_on_assistant_tokens_including_end_of_turn(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    enc = encode(examples(1)[0], tok)
    trained = tok.decode([t for t, l in zip(enc.input_ids, enc.labels) if l != IGNORE_INDEX])
    assert trained == "green red<|im_end|>\n"


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_rows_give_the_same_logits_as_separate_examples(tiny_model, attn):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation=attn).eval()
    model.config.use_cache = False
    encoded = [encode(ex, tok) for ex in examples(5)]
    rows = pack(encoded, max_len=64, seed=0)
    assert len(rows) < len(encoded)  # something was actually packed together
    batch = PackedCollator(tok.pad_token_id)([{"input_ids": r.input_ids, "labels": r.labels, "position_ids": r.position_ids} for r in rows])
    with torch.no_grad():
        packed_logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        for row_idx, row in enumerate(rows):
            start = 0
            for length in _segment_lengths(row.position_ids):
                ids = torch.tensor([row.input_ids[start : start + length]])
                alone = model(input_ids=ids).logits[0]
                torch.testing.assert_close(packed_logits[row_idx, start : start + length], alone, atol=1e-5, rtol=1e-4)
                start += length


def _segment_lengths(position_ids: list[int]) -> list[int]:
    lengths, current = [], 0
    for p in position_ids:
        if p == 0 and current:
            lengths.append(current)
            current = 0
        current += 1
    return lengths + [current]


def test_packing_efficiency_on_mixed_lengths():
    from kubetune_trainer.tokenize import Encoded
    import random

    rng = random.Random(0)
    encoded = [Encoded([1] * n, [1] * n) for n in (rng.randint(8, 500) for _ in range(2000))]
    packed = training_rows(encoded, 1024, packing=True, seed=0)
    unpacked = training_rows(encoded, 1024, packing=False, seed=0)
    assert padding_efficiency(packed, 8) >= 0.95
    assert padding_efficiency(unpacked, 8) < padding_efficiency(packed, 8)
    assert sum(len(r["input_ids"]) for r in packed) == sum(len(e) for e in encoded)  # nothing dropped or cut


def test_padded_collator_masks_padding():
    batch = PaddedCollator(0)([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [5], "labels": [-100]}])
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist()[1] == [-100, -100, -100]
