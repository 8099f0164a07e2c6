"""Loading the base model and tokenizer, and preparing it for the chosen method.

A GGUF file (the quickstart's SmolLM2) is converted once into a Hugging Face
directory in the local cache, so every method — including qlora, whose
bitsandbytes quantizer cannot be combined with the GGUF one — loads the same
way, and the base a served adapter refers to is an ordinary HF model.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path
from typing import Any

from kubetune.api.finetunejob import FineTuneJobSpec

from .sources import cache_root

log = logging.getLogger(__name__)


def materialize_gguf(gguf_path: Path) -> Path:
    """An HF directory (safetensors + tokenizer with its chat template) for a GGUF file, cached by content identity."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    stat = gguf_path.stat()
    ident = hashlib.sha256(f"{gguf_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_root() / "models" / f"{gguf_path.stem}-{ident}"
    if (target / "config.json").is_file() and (target / ".complete").is_file():
        return target
    log.info("converting %s to a Hugging Face directory in %s (once)", gguf_path, target)
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    # The GGUF loader leaves its quantizer attached; the weights are already
    # dequantized, and save_pretrained refuses to write with it in place.
    # Its config entry would make the saved copy look GGUF-quantized (untrainable) again.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / ".complete").write_text("")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def model_directory(path: Path) -> Path:
    """The HF directory for a resolved model location (a directory, or a .gguf file)."""
    if path.is_file() and path.suffix == ".gguf":
        return materialize_gguf(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is neither a .gguf file nor a Hugging Face model directory (no config.json)")
    return path


def load_tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def compute_dtype(spec: FineTuneJobSpec) -> Any:
    """bf16 on GPUs that have it; float32 on CPU, where bf16 matmuls are slow and imprecise."""
    import torch

    if not torch.cuda.is_available():
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def load_model(model_dir: Path, spec: FineTuneJobSpec, trust_remote_code: bool = False) -> Any:
    """The base model, quantized for qlora; adapters are added by `prepare_for_training`."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    quant = spec.effective_quantization()
    if quant is not None:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=quant.quant_type,
            bnb_4bit_use_double_quant=quant.double_quant,
            bnb_4bit_compute_dtype=getattr(torch, quant.compute_dtype),
            # Keep the non-quantized parts (norms, embeddings) in the compute dtype too.
            bnb_4bit_quant_storage=getattr(torch, quant.compute_dtype),
        )
        kwargs["dtype"] = getattr(torch, quant.compute_dtype)
        if torch.cuda.is_available():
            kwargs["device_map"] = {"": torch.cuda.current_device()}
    else:
        kwargs["dtype"] = compute_dtype(spec)
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    if quant is not None:
        _keep_cpu_4bit_layout(model)
    # No KV cache in training: it is useless there, and with one transformers
    # would not build the block-diagonal mask for packed sequences.
    model.config.use_cache = False
    return model


def _keep_cpu_4bit_layout(model: Any) -> None:
    """Turn off bitsandbytes' CPU inference repacking of 4-bit weights.

    On CPUs with AVX512-BF16, a Linear4bit called in eval mode without gradients
    (our base-model scoring before training) repacks its weight into another
    layout. That fails outright for layers narrower than the 64-value
    quantization block ("shape '[32, 0]' is invalid") and leaves weights in an
    inference layout that training then uses. The plain 4-bit path works on
    every CPU; GPUs never take this branch.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def prepare_for_training(model: Any, spec: FineTuneJobSpec) -> Any:
    """Wrap in LoRA (lora, qlora) or leave all weights trainable (full)."""
    if spec.method == "full":
        if spec.hyperparameters.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if spec.method == "qlora":
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=spec.hyperparameters.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif spec.hyperparameters.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    targets = spec.lora.target_modules
    config = LoraConfig(
        r=spec.lora.r,
        lora_alpha=spec.lora.alpha,
        lora_dropout=spec.lora.dropout,
        target_modules="all-linear" if targets == ["all-linear"] else targets,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def trainable_summary(model: Any) -> str:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return f"{trainable:,} trainable of {total:,} parameters ({100 * trainable / max(total, 1):.2f}%)"


def export(model: Any, tokenizer: Any, spec: FineTuneJobSpec, out_dir: Path, model_dir: Path, merged_dir: Path | None) -> None:
    """The adapter (PEFT format) or full weights, with the tokenizer; merged weights when asked."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    if merged_dir is None or spec.method == "full":
        return
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    # Merge into an unquantized copy of the base: merging into 4-bit weights would round the update away.
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=compute_dtype(spec) if spec.method != "qlora" else torch.float32)
    merged = PeftModel.from_pretrained(base, out_dir).merge_and_unload()
    merged.save_pretrained(merged_dir)
    tokenizer.save_pretrained(merged_dir)
