"""The user's view of FineTuneJobs in the e2e tests: create, read, wait, look at children and Events."""

from __future__ import annotations

import json

from kubernetes import client as k8s

from kubetune.api import GROUP, VERSION
from tests.support.controlplane import ControlPlane
from tests.support.procs import wait_for
from tests.support.status_capture import capture

PLURAL = "finetunejobs"
CREDENTIALS_SECRET = "s3-creds"  # the Secret every FineTuneJob from Api.apply names


def create_tenant_namespace(cluster: ControlPlane, ns: str, secret_value: str) -> None:
    """A namespace for FineTuneJobs, with their S3 credentials Secret (the value is what leak checks look for)."""
    cluster.create_namespace(ns)
    k8s.CoreV1Api(cluster.api_client()).create_namespaced_secret(ns, k8s.V1Secret(
        metadata=k8s.V1ObjectMeta(name=CREDENTIALS_SECRET),
        string_data={"AWS_ACCESS_KEY_ID": "e2e", "AWS_SECRET_ACCESS_KEY": secret_value}))


class Api:
    """The user's (admin) view of the cluster in one namespace, with small waits."""

    def __init__(self, cluster: ControlPlane, ns: str):
        self.cluster, self.ns = cluster, ns
        client = cluster.api_client()
        self.custom = k8s.CustomObjectsApi(client)
        self.batch = k8s.BatchV1Api(client)
        self.core = k8s.CoreV1Api(client)

    def apply(self, name: str, suspend: bool = False, **spec) -> dict:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneJob", "metadata": {"name": name, "namespace": self.ns},
            "spec": {
                "baseModel": {"uri": "s3://models/tiny"},
                "dataset": {"train": "s3://data/train.jsonl"},
                "storage": {"uri": "s3://runs/e2e", "credentialsSecret": {"name": CREDENTIALS_SECRET}},
                "resources": {"gpusPerNode": 1, "cpu": "2", "memory": "8Gi"},
                "suspend": suspend,
                **spec,
            },
        }
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, body)

    def ftj(self, name: str) -> dict:
        return capture(self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name))

    def patch_spec(self, name: str, **spec) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name, {"spec": spec})

    def job(self, name: str) -> k8s.V1Job:
        return self.batch.read_namespaced_job(f"{name}-train", self.ns)

    def jobs_of(self, name: str) -> list[k8s.V1Job]:
        return self.batch.list_namespaced_job(self.ns, label_selector=f"app.kubernetes.io/instance={name}").items

    def pods_of(self, name: str) -> list[k8s.V1Pod]:
        return self.core.list_namespaced_pod(self.ns, label_selector=f"app.kubernetes.io/instance={name}").items

    def wait_status(self, name: str, check, what: str, timeout: float = 60) -> dict:
        def probe():
            status = self.ftj(name).get("status") or {}
            return status if check(status) else None

        return wait_for(probe, timeout, f"{name}: {what}",
                        on_timeout=lambda: json.dumps(self.ftj(name).get("status"), indent=1) + "\n"
                        + self.cluster.describe())

    def wait_phase(self, name: str, *phases: str, timeout: float = 60) -> dict:
        return self.wait_status(name, lambda s: s.get("phase") in phases, f"phase in {phases}", timeout)

    def start_with_pod_annotations(self, name: str, annotations: dict[str, str], **spec) -> None:
        """Create suspended, put KWOK's instructions on the Job's pod template, then unsuspend."""
        self.apply(name, suspend=True, **spec)
        self.wait_phase(name, "Suspended")
        self.annotate_template(name, annotations)
        self.patch_spec(name, suspend=False)

    def annotate_template(self, name: str, annotations: dict[str, str]) -> None:
        # Allowed while the Job is suspended and has never started.
        self.batch.patch_namespaced_job(f"{name}-train", self.ns,
                                        {"spec": {"template": {"metadata": {"annotations": annotations}}}})

    def condition(self, status: dict, ctype: str) -> dict:
        return next(c for c in status["conditions"] if c["type"] == ctype)

    def event_reasons(self, name: str) -> list[str]:
        events = self.core.list_namespaced_event(self.ns, field_selector=f"involvedObject.name={name}").items
        return [e.reason for e in sorted(events, key=lambda e: e.metadata.creation_timestamp)]

    def delete(self, name: str, **body) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name, body=body or None)

    def exists(self, name: str) -> bool:
        items = self.custom.list_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL)["items"]
        return any(o["metadata"]["name"] == name for o in items)
