"""What vLLM cannot serve, found before any pod starts: one message per problem, naming the field."""

from __future__ import annotations

from kubetune.api.modeldeployment import VLLM_LORA_RANKS, ModelDeploymentSpec

from .revision import ServedRevision

# Flags the builders set from spec fields (or need for probes and routing): extraArgs may not
# repeat them, since vLLM would take whichever comes last and the spec would no longer say
# what runs. Each value is the remedy. (--max-lora-rank may be raised, never lowered.)
OWNED_FLAGS = {
    "--model": "set model.uri instead",
    "--served-model-name": "set serving.servedModelName instead",
    "--host": "remove it (probes and Services need 0.0.0.0)",
    "--port": "set serving.port instead",
    "--uds": "remove it (probes and Services need TCP)",
    "--enable-lora": "set serving.mode instead",
    "--lora-modules": "set model.uri (the adapter) instead",
    "--max-loras": "remove it (a revision serves one adapter)",
    "--max-model-len": "set serving.maxModelLen instead",
    "--gpu-memory-utilization": "set serving.gpuMemoryUtilization instead",
    "--tensor-parallel-size": "set serving.tensorParallelSize instead",
    "-tp": "set serving.tensorParallelSize instead",
    "--shutdown-timeout": "set serving.shutdownTimeoutSeconds instead",
    # Not a secret in args either: anyone who can read the Deployment reads them.
    "--api-key": "remove it (readiness probes call /v1/models without a key)",
}
UNSERVABLE = "set model.uri to merged safetensors weights in S3 or a hf:// model"


def _flag(arg: str) -> str | None:
    """The flag an argument names, normalised the way vLLM's parser does ("--max_model_len=8" -> "--max-model-len")."""
    if not arg.startswith("-") or arg == "-" or arg[1:2].isdigit():
        return None
    name = arg.split("=", 1)[0]
    dashes = len(name) - len(name.lstrip("-"))
    return name[:dashes] + name[dashes:].replace("_", "-")


def _flag_values(args: list[str], flag: str) -> list[str]:
    """Values given to flag, in both the "--flag N" and "--flag=N" forms."""
    values = []
    for i, arg in enumerate(args):
        if _flag(arg) != flag:
            continue
        if "=" in arg:
            values.append(arg.split("=", 1)[1])
        elif i + 1 < len(args):
            values.append(args[i + 1])
    return values


def _source_problems(uri: str | None, field: str) -> list[str]:
    if uri is None:
        return [f"{field} is required"]
    if uri.startswith("pkg://") or uri.lower().endswith(".gguf"):
        return [f"vLLM cannot serve the GGUF/pkg:// model the trainer used: {field} is {uri}; {UNSERVABLE}"]
    if uri.startswith("hf://"):
        if uri.removeprefix("hf://").count("/") != 1:
            return [f"{field} {uri} is a file in a hub repository; vLLM loads whole repositories (hf://org/name)"]
        return []
    if uri.startswith("s3://"):
        return []
    return [f"{field} {uri} is a path on the machine that wrote the manifest, not reachable from a serving "
            f"pod; {UNSERVABLE}"]


def serving_problems(spec: ModelDeploymentSpec, rev: ServedRevision) -> list[str]:
    """Why vLLM cannot serve this revision with these settings; [] when it can."""
    s = spec.serving
    problems = []
    if rev.mode == "adapter":
        problems += _source_problems(rev.model_uri, "model.uri (the adapter)")
        problems += _source_problems(rev.base_model_uri, "model.baseModel")
        top = VLLM_LORA_RANKS[-1]
        if rev.lora_rank is None:
            problems.append("the adapter's rank is unknown: set model.loraRank (vLLM's --max-lora-rank must hold it)")
        elif rev.lora_rank > top:
            problems.append(f"model.loraRank {rev.lora_rank} is above vLLM's largest --max-lora-rank ({top}); "
                            "train with a smaller lora.r or serve merged weights (serving.mode merged)")
        for value in _flag_values(s.extra_args, "--max-lora-rank"):
            if not value.isdigit() or int(value) not in VLLM_LORA_RANKS:
                problems.append(f"serving.extraArgs --max-lora-rank {value} is not one vLLM accepts "
                                f"({', '.join(map(str, VLLM_LORA_RANKS))})")
            elif rev.lora_rank is not None and int(value) < rev.lora_rank:
                problems.append(f"serving.extraArgs --max-lora-rank {value} is below the adapter's rank "
                                f"{rev.lora_rank}; remove it (the operator sizes it from the rank)")
    else:
        problems += _source_problems(rev.model_uri, "model.uri (merged weights)")
    if s.tensor_parallel_size > max(s.gpus, 1):
        problems.append(f"serving.tensorParallelSize {s.tensor_parallel_size} exceeds serving.gpus {s.gpus}")
    seen = set()
    for arg in s.extra_args:
        flag = _flag(arg)
        if flag in OWNED_FLAGS and flag not in seen:
            seen.add(flag)
            problems.append(f"serving.extraArgs sets {flag}, which the operator sets: {OWNED_FLAGS[flag]}")
    return problems
