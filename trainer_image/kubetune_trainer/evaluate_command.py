"""`kubetune evaluate`: score a finished adapter or model on any JSONL file, base beside tuned.

The same code as the trainer's final report (data parsing, chat template, generation
budget, metrics by answer shape), so a number from here and one from a run mean the same.
Exit codes are the trainer's: 0 done, 65 bad input (missing model or data, defective
lines, a declared shape the answers do not fit), 1 an unexpected error.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from kubetune.api.trainer_config import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK

from .metrics import SHAPES, format_report

log = logging.getLogger(__name__)


class _BadInput(Exception):
    pass


def register(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("evaluate", help="score an adapter or model on a JSONL file against its base (same report as training)")
    ev.add_argument("model", help="adapter or model directory: a path or s3://bucket/prefix (e.g. runs/quickstart/adapter)")
    ev.add_argument("--data", required=True, help="JSONL to score (path or s3://); any supervised format")
    ev.add_argument("--base", help="base model URI (path, s3://, pkg://, .gguf); default: the adapter's base_model_name_or_path")
    ev.add_argument("--no-base", action="store_true", help="score only the given model")
    ev.add_argument("--format", default="auto", choices=["auto", "chat", "alpaca", "prompt-completion"])
    ev.add_argument("--answer-shape", default="auto", choices=["auto", *SHAPES], help="metrics to use (default: detected)")
    ev.add_argument("--max-samples", type=int, help="score only the first N examples")
    ev.add_argument("--max-new-tokens", type=int, help="cap on generated tokens (default: longest reference + margin)")
    ev.add_argument("--batch-size", type=int, help="prompts generated together (default: 16 on CPU, 64 on a GPU)")
    ev.add_argument("--output", help="write the JSON report here (default: print the text report only)")
    ev.add_argument("--json", action="store_true", help="print the JSON report instead of text")
    ev.add_argument("--storage-endpoint", help="S3 endpoint URL (default: $AWS_ENDPOINT_URL)")
    ev.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        report = evaluate(args)
    except _BadInput as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception:  # noqa: BLE001 - anything else is a bug or the machine: exit 1 with the traceback
        log.exception("evaluation failed")
        return EXIT_FAILED
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    if args.output and not args.json:
        print(f"report: {args.output}")
    return EXIT_OK


def _resolve(uri: str, endpoint: str | None) -> Path:
    import os

    from .sources import resolve_uri

    # Not caught here: the caller names the argument (and adds a hint for the base).
    return resolve_uri(uri, Path.cwd(), endpoint or os.environ.get("AWS_ENDPOINT_URL"), os.environ.get("AWS_REGION"))


def read_examples(path: Path, source: str, fmt: str, max_samples: int | None) -> list[Any]:
    """Every example of the file, in order; any defective line is bad input (named with its line)."""
    from .data import DataError, read_jsonl

    try:
        file = read_jsonl(path, fmt, source)
    except DataError as err:
        raise _BadInput(str(err)) from err
    if file.errors:
        shown = "\n".join(f"  {d}" for d in file.errors[:20])
        more = f"\n  ... and {len(file.errors) - 20} more" if len(file.errors) > 20 else ""
        raise _BadInput(f"--data: {len(file.errors)} defective line(s):\n{shown}{more}")
    examples = file.examples[:max_samples] if max_samples else file.examples
    if not examples:
        raise _BadInput(f"--data: {source} has no examples")
    if file.format == "text":
        raise _BadInput(f"--data: {source} is plain text (no answers to score); use chat, alpaca or prompt-completion")
    return examples


def _load(model_dir: Path) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch.float32
    if torch.cuda.is_available():
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    return model.to("cuda") if torch.cuda.is_available() else model


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from .evaluate import compare, generation_budget, score
    from .metrics import choose_shape
    from .model import load_tokenizer, model_directory

    try:
        data_path = _resolve(args.data, args.storage_endpoint)
    except FileNotFoundError as err:
        raise _BadInput(f"--data: {err}") from err
    try:
        tuned_dir = _resolve(args.model, args.storage_endpoint)
    except FileNotFoundError as err:
        raise _BadInput(f"model: {err}") from err
    examples = read_examples(data_path, args.data, args.format, args.max_samples)
    try:
        choose_shape(args.answer_shape, [ex.final_answer() for ex in examples], [ex.where for ex in examples])
    except ValueError as err:
        raise _BadInput(str(err).replace("evaluation.answerShape", "--answer-shape")) from err
    adapter = (tuned_dir / "adapter_config.json").is_file()
    base_uri = args.base
    if adapter and base_uri is None:
        base_uri = json.loads((tuned_dir / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if not base_uri:
            raise _BadInput(f"{args.model}: the adapter does not name its base model; pass --base")
    if not adapter and not (tuned_dir / "config.json").is_file():
        raise _BadInput(f"{args.model}: neither a PEFT adapter (adapter_config.json) nor a model directory (config.json)")
    base_dir = None
    if base_uri is not None:
        try:
            base_dir = model_directory(_resolve(base_uri, args.storage_endpoint))
        except FileNotFoundError as err:
            hint = "" if args.base else " (the base named in adapter_config.json; pass --base where it lives now)"
            raise _BadInput(f"--base: {err}{hint}") from err
    with_base = base_dir is not None and not args.no_base
    # The tokenizer the trainer used: saved beside the adapter or model; else the base's.
    tokenizer_dir = tuned_dir if (tuned_dir / "tokenizer_config.json").is_file() else base_dir
    if tokenizer_dir is None:
        raise _BadInput(f"{args.model}: no tokenizer beside the model; pass --base")
    tokenizer = load_tokenizer(tokenizer_dir)
    budget = generation_budget(tokenizer, examples, args.max_new_tokens)

    base = None
    model = _load(base_dir) if adapter or with_base else None
    if with_base:
        print(f"scoring the base model {base_uri} on {len(examples)} examples ...", file=sys.stderr, flush=True)
        base = score(model, tokenizer, examples, budget, args.batch_size)
    if adapter:
        from peft import PeftModel

        # Merged into the unquantized base: the same outputs, without the per-layer adapter ops in every step.
        model = PeftModel.from_pretrained(model, tuned_dir).merge_and_unload()
    else:
        model = _load(tuned_dir)
    print(f"scoring {args.model} on {len(examples)} examples ...", file=sys.stderr, flush=True)
    tuned = score(model, tokenizer, examples, budget, args.batch_size)
    report = compare(examples, base, tuned, args.answer_shape, budget)
    report["models"] = {"tuned": args.model, **({"base": base_uri} if with_base else {})}
    report["data"] = args.data
    return report
