"""From examples to token ids: chat template, loss mask, and sequence packing.

Loss is computed only on what the model should learn to write (assistant
turns, completions), found as character spans of the rendered text and mapped
to tokens through the tokenizer's offsets. Packed sequences carry per-example
position_ids and no attention_mask; transformers then builds a block-diagonal
causal mask from the position resets, so no token attends across examples.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from .data import Example

IGNORE_INDEX = -100


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


def _render_chat(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def render(example: Example, tokenizer: Any) -> tuple[str, list[tuple[int, int]]]:
    """The full text and the character spans the loss is computed on.

    For chat, the span of assistant turn i is the text that rendering
    messages[:i+1] adds to rendering messages[:i] with a generation prompt:
    the reply and its end-of-turn marker, so the model also learns to stop.
    """
    if example.text is not None:
        text = example.text + (tokenizer.eos_token or "")
        return text, [(0, len(text))]
    messages = [{"role": r, "content": c} for r, c in example.messages]
    if tokenizer.chat_template is None:
        # A base model without a template: plain prompt, then the answer and EOS.
        prompt = "\n\n".join(c for r, c in example.messages[:-1]) + "\n\n"
        text = prompt + example.messages[-1][1] + (tokenizer.eos_token or "")
        return text, [(len(prompt), len(text))]
    full = _render_chat(tokenizer, messages, generation_prompt=False)
    spans = []
    for i, (role, _) in enumerate(example.messages):
        if role != "assistant":
            continue
        before = _render_chat(tokenizer, messages[:i], generation_prompt=True)
        through = _render_chat(tokenizer, messages[: i + 1], generation_prompt=False)
        if not full.startswith(through) or not through.startswith(before):
            raise ValueError(f"{example.where}: the chat template does not render turns as prefixes; cannot mask the loss")
        spans.append((len(before), len(through)))
    return full, spans


def prompt_text(example: Example, tokenizer: Any) -> str:
    """What the model sees before its final answer (for generation in evaluation)."""
    messages = [{"role": r, "content": c} for r, c in example.messages[:-1]]
    if tokenizer.chat_template is None:
        return "\n\n".join(m["content"] for m in messages) + "\n\n"
    return _render_chat(tokenizer, messages, generation_prompt=True)


def encode(example: Example, tokenizer: Any) -> Encoded:
    text, spans = render(example, tokenizer)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = []
    for tok, (start, end) in zip(enc["input_ids"], enc["offset_mapping"]):
        # A token is trained on when it starts inside a span (tokens may straddle a boundary).
        inside = any(s <= start < e for s, e in spans) and end > start
        labels.append(tok if inside else IGNORE_INDEX)
    return Encoded(list(enc["input_ids"]), labels)


def count_tokens(tokenizer: Any):
    """A counter for data validation: tokens of the rendered example."""

    def count(example: Example) -> int:
        text, _ = render(example, tokenizer)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    return count


@dataclass
class Packed:
    """One training row: several examples end to end, positions restarting per example."""

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]


def pack(encoded: list[Encoded], max_len: int, seed: int) -> list[Packed]:
    """Best-fit-decreasing bin packing: long examples first, each into the fullest row it still fits.

    The input order is shuffled with the seed first so rows mix examples of
    different origin; the Trainer shuffles the rows themselves every epoch.
    """
    items = list(encoded)
    random.Random(seed).shuffle(items)
    items.sort(key=len, reverse=True)
    rows: list[list[Encoded]] = []
    free: list[int] = []
    for item in items:
        if len(item) > max_len:
            raise ValueError(f"an example of {len(item)} tokens does not fit maxSeqLength {max_len}")
        best = -1
        for i, room in enumerate(free):
            if len(item) <= room and (best < 0 or room < free[best]):
                best = i
        if best < 0:
            rows.append([item])
            free.append(max_len - len(item))
        else:
            rows[best].append(item)
            free[best] -= len(item)
    packed = []
    for row in rows:
        ids, labels, pos = [], [], []
        for item in row:
            ids += item.input_ids
            # The first token of an example has no predecessor in it: never a target.
            labels += [IGNORE_INDEX] + item.labels[1:]
            pos += list(range(len(item)))
        packed.append(Packed(ids, labels, pos))
    return packed


def _right_pad(rows: list[dict[str, list[int]]], pad_id: int) -> tuple[list[list[int]], list[list[int]], list[int]]:
    """Token ids and labels padded to the longest row (padding is never learned), and each row's pad count."""
    width = max(len(r["input_ids"]) for r in rows)
    pads = [width - len(r["input_ids"]) for r in rows]
    ids = [r["input_ids"] + [pad_id] * pad for r, pad in zip(rows, pads)]
    labels = [r["labels"] + [IGNORE_INDEX] * pad for r, pad in zip(rows, pads)]
    return ids, labels, pads


class PackedCollator:
    """Pads packed rows to the longest in the batch with a padding 'example' of its own.

    The padding restarts positions at 0, so the mask built from position_ids
    keeps it in its own block; no attention_mask is passed (that would turn the
    packed-sequence detection off).
    """

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        ids, labels, pads = _right_pad(rows, self.pad_id)
        pos = [r["position_ids"] + list(range(pad)) for r, pad in zip(rows, pads)]
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "position_ids": torch.tensor(pos)}


class PaddedCollator:
    """One example per row, right-padded, with an attention_mask (packing off)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        ids, labels, pads = _right_pad(rows, self.pad_id)
        mask = [[1] * len(r["input_ids"]) + [0] * pad for r, pad in zip(rows, pads)]
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "attention_mask": torch.tensor(mask)}


def training_rows(encoded: list[Encoded], max_len: int, packing: bool, seed: int) -> list[dict[str, list[int]]]:
    if packing:
        return [{"input_ids": p.input_ids, "labels": p.labels, "position_ids": p.position_ids} for p in pack(encoded, max_len, seed)]
    return [{"input_ids": e.input_ids, "labels": e.labels} for e in encoded]


def padding_efficiency(rows: list[dict[str, list[int]]], batch_size: int) -> float:
    """Share of real tokens among all token slots the model processes (batches padded to their longest row)."""
    real = sum(len(r["input_ids"]) for r in rows)
    slots = 0
    for i in range(0, len(rows), batch_size):
        batch = rows[i : i + batch_size]
        slots += max(len(r["input_ids"]) for r in batch) * len(batch)
    return real / slots if slots else 0.0
