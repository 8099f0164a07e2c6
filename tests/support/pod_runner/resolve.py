"""What a kubelet reads from the API before it starts a container: env and volume contents.

Resolution follows the kubelet's rules closely enough for the workloads under
test: a missing Secret, ConfigMap or key that is not `optional` is a
ConfigError (the container waits with CreateContainerConfigError and the same
message a kubelet gives), a volume that cannot be set up is a VolumeError (the
container stays ContainerCreating). Both are retried by the runner.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client.rest import ApiException

# The projected service-account token a kubelet asks for when the pod names no expiry.
DEFAULT_TOKEN_SECONDS = 3607


class ConfigError(Exception):
    """An env reference that cannot be resolved yet (kubelet: CreateContainerConfigError)."""


class VolumeError(Exception):
    """A volume that cannot be set up yet (kubelet: FailedMount, the container stays ContainerCreating)."""


@dataclass
class Volume:
    """A volume's contents: files (relative path -> bytes) or an empty directory (maybe in memory)."""

    name: str
    files: dict[str, bytes] = field(default_factory=dict)
    empty_dir: bool = False
    memory: bool = False
    size_limit: str | None = None


class Resolver:
    """Reads Secrets, ConfigMaps and tokens as the node would (with the admin client: the node's credentials)."""

    def __init__(self, core: Any, pod: dict, pod_ip: str, host_ip: str):
        self.core, self.pod, self.pod_ip, self.host_ip = core, pod, pod_ip, host_ip
        self.ns = pod["metadata"]["namespace"]

    # -- objects -----------------------------------------------------------------------------
    def _read(self, kind: str, name: str) -> dict[str, bytes] | None:
        """A Secret's or ConfigMap's data as bytes, None when it does not exist."""
        try:
            if kind == "Secret":
                obj = self.core.read_namespaced_secret(name, self.ns)
                return {k: base64.b64decode(v) for k, v in (obj.data or {}).items()}
            obj = self.core.read_namespaced_config_map(name, self.ns)
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        data = {k: v.encode() for k, v in (obj.data or {}).items()}
        data.update({k: base64.b64decode(v) for k, v in (obj.binary_data or {}).items()})
        return data

    def _object(self, kind: str, name: str, optional: bool, error: type[Exception]) -> dict[str, bytes] | None:
        data = self._read(kind, name)
        if data is None and not optional:
            raise error(f'{kind.lower()} "{name}" not found')
        return data

    def _key(self, kind: str, ref: dict, error: type[Exception]) -> bytes | None:
        name, key, optional = ref["name"], ref["key"], bool(ref.get("optional"))
        data = self._object(kind, name, optional, error)
        if data is None:
            return None
        if key not in data:
            if optional:
                return None
            raise error(f"couldn't find key {key} in {kind} {self.ns}/{name}")
        return data[key]

    # -- downward API ------------------------------------------------------------------------
    def field(self, path: str) -> str:
        meta = self.pod["metadata"]
        simple = {
            "metadata.name": meta["name"], "metadata.namespace": self.ns, "metadata.uid": meta["uid"],
            "spec.nodeName": self.pod["spec"].get("nodeName", ""),
            "spec.serviceAccountName": self.pod["spec"].get("serviceAccountName", ""),
            "status.podIP": self.pod_ip, "status.podIPs": self.pod_ip, "status.hostIP": self.host_ip,
        }
        if path in simple:
            return simple[path]
        m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
        if m:
            return (meta.get(m.group(1)) or {}).get(m.group(2), "")
        if path in ("metadata.labels", "metadata.annotations"):
            items = meta.get(path.split(".")[1]) or {}
            return "\n".join(f'{k}="{v}"' for k, v in sorted(items.items()))
        raise ConfigError(f"unsupported fieldPath: {path}")

    # -- env -----------------------------------------------------------------------------------
    def env(self, container: dict) -> dict[str, str]:
        """envFrom then env, in order, with $(VAR) references expanded as the kubelet does."""
        out: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                if key in source:
                    ref = source[key]
                    data = self._object(kind, ref["name"], bool(ref.get("optional")), ConfigError) or {}
                    out.update({prefix + k: v.decode() for k, v in data.items()})
        for var in container.get("env") or []:
            name = var["name"]
            if "valueFrom" not in var:
                out[name] = expand(var.get("value", ""), out)
                continue
            source = var["valueFrom"]
            if "secretKeyRef" in source:
                value = self._key("Secret", source["secretKeyRef"], ConfigError)
            elif "configMapKeyRef" in source:
                value = self._key("ConfigMap", source["configMapKeyRef"], ConfigError)
            elif "fieldRef" in source:
                value = self.field(source["fieldRef"]["fieldPath"]).encode()
            else:
                raise ConfigError(f"env {name}: unsupported valueFrom {sorted(source)} (pod runner)")
            if value is not None:
                out[name] = value.decode()
        return out

    # -- volumes -------------------------------------------------------------------------------
    def _projected_files(self, kind: str, ref: dict, name: str) -> dict[str, bytes]:
        data = self._object(kind, name, bool(ref.get("optional")), VolumeError) or {}
        items = ref.get("items")
        if not items:
            return dict(data)
        files = {}
        for item in items:
            if item["key"] not in data:
                if ref.get("optional"):
                    continue
                raise VolumeError(f"configmap references non-existent config key: {item['key']}" if kind == "ConfigMap"
                                  else f"references non-existent secret key: {item['key']}")
            files[item["path"]] = data[item["key"]]
        return files

    def _token(self, source: dict) -> bytes:
        """TokenRequest for the pod's own ServiceAccount, bound to this pod (as the kubelet asks)."""
        meta = self.pod["metadata"]
        sa = self.pod["spec"].get("serviceAccountName") or "default"
        spec: dict[str, Any] = {
            "expirationSeconds": source.get("expirationSeconds", DEFAULT_TOKEN_SECONDS),
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]},
            # No audience: the apiserver's own (what in-cluster clients present to it).
            "audiences": [source["audience"]] if source.get("audience") else [],
        }
        try:
            res = self.core.create_namespaced_service_account_token(
                sa, self.ns, {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec})
        except ApiException as err:
            raise VolumeError(f'failed to fetch token: serviceaccount "{sa}" ({err.status} {err.reason})') from err
        return res.status.token.encode()

    def volume(self, vol: dict) -> Volume:
        name = vol["name"]
        if "emptyDir" in vol:
            ed = vol["emptyDir"] or {}
            return Volume(name, empty_dir=True, memory=ed.get("medium") == "Memory", size_limit=ed.get("sizeLimit"))
        if "configMap" in vol:
            ref = vol["configMap"]
            return Volume(name, files=self._projected_files("ConfigMap", ref, ref["name"]))
        if "secret" in vol:
            ref = vol["secret"]
            return Volume(name, files=self._projected_files("Secret", ref, ref["secretName"]))
        if "downwardAPI" in vol:
            return Volume(name, files=self._downward(vol["downwardAPI"].get("items") or []))
        if "projected" in vol:
            files: dict[str, bytes] = {}
            for src in vol["projected"].get("sources") or []:
                if "serviceAccountToken" in src:
                    files[src["serviceAccountToken"]["path"]] = self._token(src["serviceAccountToken"])
                elif "configMap" in src:
                    files.update(self._projected_files("ConfigMap", src["configMap"], src["configMap"]["name"]))
                elif "secret" in src:
                    files.update(self._projected_files("Secret", src["secret"], src["secret"]["name"]))
                elif "downwardAPI" in src:
                    files.update(self._downward(src["downwardAPI"].get("items") or []))
                else:
                    raise VolumeError(f"volume {name}: unsupported projected source {sorted(src)} (pod runner)")
            return Volume(name, files=files)
        kinds = sorted(k for k in vol if k != "name")
        raise VolumeError(f"volume {name}: unsupported volume type {kinds} (pod runner)")

    def _downward(self, items: list[dict]) -> dict[str, bytes]:
        files = {}
        for item in items:
            if "fieldRef" not in item:
                raise VolumeError(f"downwardAPI {item.get('path')}: only fieldRef is supported (pod runner)")
            try:
                files[item["path"]] = self.field(item["fieldRef"]["fieldPath"]).encode()
            except ConfigError as err:
                raise VolumeError(str(err)) from err
        return files


def expand(value: str, env: dict[str, str]) -> str:
    """$(NAME) -> an earlier variable's value (left as is when undefined); $$ -> $."""
    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", sub, value)
