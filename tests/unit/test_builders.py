"""Every builder, without a cluster: the manifests are plain dicts from typed inputs."""

from __future__ import annotations

import pytest

from kubetune.api import FineTuneJobSpec
from kubetune.api.trainer_config import CONFIG_PATH, TrainerConfig
from kubetune.builders.common import MAX_JOB_NAME, Owner
from kubetune.builders.trainer.job import GANG_RULE_CAUSES
from kubetune.builders.trainer import (
    CONFIG_ANNOTATION,
    build_headless_service,
    build_job,
    build_trainer_config,
    build_trainer_identity,
    TRAINER_ACCOUNT,
    cluster_spec_problems,
    config_annotation_value,
)
from kubetune.settings import OperatorSettings

pytestmark = pytest.mark.unit

OWNER = Owner(name="support-bot", namespace="team-a", uid="0f1e2d3c-aaaa-bbbb-cccc-000000000001")
SETTINGS = OperatorSettings(trainer_image="registry.local/kubetune-trainer:test")
SECRET_VALUE = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"  # what a real Secret would hold


def make_spec(**overrides) -> FineTuneJobSpec:
    doc = {
        "baseModel": {"uri": "s3://models/llama-3-8b"},
        "dataset": {"train": "s3://data/support/train.jsonl"},
        "storage": {"uri": "s3://runs/kubetune", "endpoint": "http://minio:9000",
                    "credentialsSecret": {"name": "s3-creds"}},
    }
    doc.update(overrides)
    return FineTuneJobSpec.model_validate(doc)


def job_for(spec: FineTuneJobSpec, owner: Owner = OWNER) -> dict:
    return build_job(owner, build_trainer_config(owner, spec, SETTINGS), SETTINGS)


def container(job: dict) -> dict:
    (c,) = job["spec"]["template"]["spec"]["containers"]
    return c


def env_of(job: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container(job)["env"]}


# -- the trainer config (carried by the Job: tests/unit/test_trainer_config_annotation.py) ----------

def test_trainer_config_resolves_storage_and_round_trips():
    spec = make_spec()
    config = build_trainer_config(OWNER, spec, SETTINGS)
    assert config.storage_uri == f"s3://runs/kubetune/team-a/support-bot/{OWNER.uid}"
    assert config.storage_endpoint == "http://minio:9000"
    assert config.progress_reporter == "kubernetes"
    assert config.job_uid == OWNER.uid
    # The trainer reads the same typed model back from the Job's pod annotation.
    annotation = job_for(spec)["spec"]["template"]["metadata"]["annotations"][CONFIG_ANNOTATION]
    assert TrainerConfig.model_validate_json(annotation) == config


def test_default_storage_from_operator_settings():
    spec = make_spec(storage=None)
    settings = OperatorSettings(default_storage_uri="s3://platform/ft", default_storage_secret="platform-s3",
                                default_storage_region="eu-west-1")
    config = build_trainer_config(OWNER, spec, settings)
    assert config.storage_uri == f"s3://platform/ft/team-a/support-bot/{OWNER.uid}"
    assert config.storage_region == "eu-west-1"
    job = build_job(OWNER, config, settings)
    assert env_of(job)["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "platform-s3"


def test_default_storage_must_be_s3():
    with pytest.raises(ValueError, match="s3://"):
        OperatorSettings.from_env({"KUBETUNE_DEFAULT_STORAGE_URI": "/tmp/runs"})


def test_cluster_spec_problems_name_the_field():
    spec = make_spec(storage=None, dataset={"train": "./data/train.jsonl", "validation": "../val.jsonl"})
    problems = cluster_spec_problems(spec, OperatorSettings())
    assert any(p.startswith("spec.dataset.train: relative path './data/train.jsonl'") for p in problems)
    assert any(p.startswith("spec.dataset.validation:") for p in problems)
    assert any(p.startswith("spec.storage: not set") for p in problems)
    assert cluster_spec_problems(make_spec(), SETTINGS) == []


def test_config_annotation_holds_no_secret_values():
    text = config_annotation_value(build_trainer_config(OWNER, make_spec(), SETTINGS))
    assert "s3-creds" in text  # the Secret's name is fine ...
    for word in ("AWS_SECRET_ACCESS_KEY", "secretKeyRef", SECRET_VALUE):
        assert word not in text  # ... its keys and values are not there


# -- the Job -------------------------------------------------------------------------------------------

def test_single_node_job_shape():
    job = job_for(make_spec(resources={"gpusPerNode": 2, "cpu": "8", "memory": "64Gi"}))
    spec = job["spec"]
    assert job["metadata"]["name"] == "support-bot-train"
    assert (spec["completions"], spec["parallelism"], spec["completionMode"]) == (1, 1, "NonIndexed")
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert "subdomain" not in pod
    res = container(job)["resources"]
    assert res["limits"] == {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "2"}
    assert res["requests"] == res["limits"]
    env = env_of(job)
    assert env["NUM_MACHINES"]["value"] == "1"
    assert env["NUM_PROCESSES"]["value"] == "2"  # two GPUs on one node go through accelerate too
    assert env["MACHINE_RANK"]["value"] == "0"
    assert env["KUBETUNE_CONFIG"]["value"] == "/etc/kubetune/config.json"
    assert container(job)["image"] == SETTINGS.trainer_image


def test_custom_gpu_resource_and_cpu_only():
    job = job_for(make_spec(resources={"gpusPerNode": 1, "gpuResourceName": "amd.com/gpu"}))
    assert container(job)["resources"]["limits"]["amd.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in container(job)["resources"]["limits"]
    cpu_only = job_for(make_spec(resources={"gpusPerNode": 0}))
    assert set(container(cpu_only)["resources"]["limits"]) == {"cpu", "memory"}
    assert env_of(cpu_only)["NUM_PROCESSES"]["value"] == "1"


def test_placement_tolerations_node_selector_priority():
    job = job_for(make_spec(resources={
        "nodeSelector": {"node.kubernetes.io/instance-type": "p5.48xlarge"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                        {"key": "spot", "value": "true", "effect": "NoExecute", "tolerationSeconds": 60}],
        "priorityClassName": "training-low",
    }))
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"node.kubernetes.io/instance-type": "p5.48xlarge"}
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "spot", "operator": "Equal", "value": "true", "effect": "NoExecute", "tolerationSeconds": 60},
    ]
    assert pod["priorityClassName"] == "training-low"
    plain = job_for(make_spec())["spec"]["template"]["spec"]
    assert not {"nodeSelector", "tolerations", "priorityClassName"} & set(plain)


def test_shm_is_memory_backed_and_sized():
    job = job_for(make_spec(resources={"shmSize": "16Gi"}))
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}
    mounts = {m["mountPath"]: m["name"] for m in container(job)["volumeMounts"]}
    assert mounts["/dev/shm"] == "dshm"
    assert mounts[CONFIG_PATH.rsplit("/", 1)[0]] == "config" and "downwardAPI" in volumes["config"]


def test_multi_node_is_indexed_with_rank_wiring():
    spec = make_spec(resources={"nodes": 4, "gpusPerNode": 8})
    job = job_for(spec)
    js = job["spec"]
    assert (js["completions"], js["parallelism"], js["completionMode"]) == (4, 4, "Indexed")
    assert js["template"]["spec"]["subdomain"] == OWNER.service_name
    env = env_of(job)
    assert env["NUM_MACHINES"]["value"] == "4"
    assert env["NUM_PROCESSES"]["value"] == "32"
    assert env["MACHINE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.annotations['batch.kubernetes.io/job-completion-index']")
    assert env["MASTER_ADDR"]["value"] == "support-bot-train-0.support-bot-train.team-a.svc"
    assert env["MASTER_PORT"]["value"] == "29500"
    svc = build_headless_service(OWNER, SETTINGS)
    assert svc["metadata"]["name"] == OWNER.service_name
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    # The Service selects exactly the pods of this Job's template.
    pod_labels = js["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()


def test_secrets_only_as_secret_key_refs():
    spec = make_spec(baseModel={"uri": "hf://meta-llama/Llama-3-8B", "tokenSecret": {"name": "hf"}})
    env = env_of(job_for(spec))
    refs = {name: e["valueFrom"]["secretKeyRef"] for name, e in env.items() if "secretKeyRef" in e.get("valueFrom", {})}
    assert refs == {
        "AWS_ACCESS_KEY_ID": {"name": "s3-creds", "key": "AWS_ACCESS_KEY_ID"},
        "AWS_SECRET_ACCESS_KEY": {"name": "s3-creds", "key": "AWS_SECRET_ACCESS_KEY"},
        "AWS_SESSION_TOKEN": {"name": "s3-creds", "key": "AWS_SESSION_TOKEN", "optional": True},
        "HF_TOKEN": {"name": "hf", "key": "HF_TOKEN"},
    }
    assert all("value" not in env[name] for name in refs)
    no_creds = make_spec(storage={"uri": "s3://runs/x"})
    assert not any("AWS" in name for name in env_of(job_for(no_creds)))


def test_pod_failure_policy():
    job = job_for(make_spec(backoffLimit=5))
    assert job["spec"]["backoffLimit"] == 5
    assert job["spec"]["podReplacementPolicy"] == "Failed"
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules == [
        {"action": "FailJob", "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [65]}},
        {"action": "Ignore", "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [75]}},
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
    ]


def test_multi_node_failure_fails_the_whole_attempt():
    # A gang: any failed rank fails the Job (backoffLimit 0); the operator counts spec.backoffLimit
    # across Jobs, and the rules' order tells it why (GANG_RULE_CAUSES).
    job = job_for(make_spec(backoffLimit=5, resources={"nodes": 2, "gpusPerNode": 1}))
    assert job["spec"]["backoffLimit"] == 0
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert [r["action"] for r in rules] == ["FailJob"] * 3
    assert [r.get("onExitCodes", {}).get("values") for r in rules] == [[65], [75], None]
    assert rules[2]["onPodConditions"] == [{"type": "DisruptionTarget", "status": "True"}]
    assert GANG_RULE_CAUSES == ("BadInput", "Preempted", "Disrupted")


def test_a_later_attempt_gets_what_is_left_of_the_deadline():
    spec = make_spec(activeDeadlineSeconds=3600, resources={"nodes": 2, "gpusPerNode": 1})
    config = build_trainer_config(OWNER, spec, SETTINGS)
    assert build_job(OWNER, config, SETTINGS)["spec"]["activeDeadlineSeconds"] == 3600
    later = build_job(OWNER, config, SETTINGS, deadline_seconds=600)
    assert later["spec"]["activeDeadlineSeconds"] == 600


def test_pod_security_restricted():
    job = job_for(make_spec())
    pod = job["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container(job)["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    # Only volume types the restricted profile allows.
    assert all(set(v) - {"name"} <= {"downwardAPI", "emptyDir"} for v in pod["volumes"])
    assert not any(k in pod for k in ("hostNetwork", "hostPID", "hostIPC"))


def test_suspend_deadline_and_kueue():
    assert job_for(make_spec())["spec"]["suspend"] is False
    assert "activeDeadlineSeconds" not in job_for(make_spec())["spec"]
    suspended = job_for(make_spec(suspend=True, activeDeadlineSeconds=3600))
    assert suspended["spec"]["suspend"] is True
    assert suspended["spec"]["activeDeadlineSeconds"] == 3600
    queued = job_for(make_spec(queueName="team-a-gpus"))
    assert queued["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a-gpus"
    assert queued["spec"]["suspend"] is True  # Kueue admits it by unsuspending


def test_owner_references_and_labels_on_every_child():
    spec = make_spec(resources={"nodes": 2, "gpusPerNode": 1})
    children = [
        job_for(spec),
        build_headless_service(OWNER, SETTINGS),
    ]
    for obj in children:
        meta = obj["metadata"]
        assert meta["namespace"] == "team-a"
        assert meta["ownerReferences"] == [{
            "apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "name": "support-bot",
            "uid": OWNER.uid, "controller": True, "blockOwnerDeletion": True,
        }]
        assert meta["labels"]["app.kubernetes.io/instance"] == "support-bot"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "kubetune-operator"
        assert "generateName" not in meta


def test_names_are_deterministic_and_fit():
    long = Owner(name="x" * 200, namespace="n", uid="u")
    other = Owner(name="x" * 199 + "y", namespace="n", uid="u")
    assert long.job_name == Owner(name="x" * 200, namespace="n", uid="v").job_name
    assert len(long.job_name) <= MAX_JOB_NAME and long.job_name.endswith("-train")
    assert long.job_name != other.job_name  # the hash keeps long names apart
    assert all(len(v) <= 63 for v in long.labels().values())
    assert OWNER.job_name == "support-bot-train"
    assert job_for(make_spec()) == job_for(make_spec())


# -- the trainer's RBAC -----------------------------------------------------------------------------

def test_the_trainer_identity_may_only_patch_finetunejob_status():
    """One per namespace; the chart's status policy narrows it to one FineTuneJob per pod
    (tests/integration/test_admission_policies.py)."""
    sa, role, binding = build_trainer_identity("team-a")
    assert [o["metadata"]["name"] for o in (sa, role, binding)] == [TRAINER_ACCOUNT] * 3
    assert all(o["metadata"]["namespace"] == "team-a" and "ownerReferences" not in o["metadata"]
               and o["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kubetune-operator" for o in (sa, role, binding))
    assert sa["kind"] == "ServiceAccount" and sa["automountServiceAccountToken"] is False
    assert role["rules"] == [{"apiGroups": ["kubetune.io"], "resources": ["finetunejobs/status"], "verbs": ["patch"]}]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "team-a"}]
    pod = job_for(make_spec())["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is True  # only the trainer pod gets the token
