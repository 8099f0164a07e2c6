"""Generate the CustomResourceDefinitions from the pydantic models.

pydantic gives JSON Schema (draft 2020-12); the apiserver wants a *structural*
OpenAPI v3 schema: no $ref, no anyOf-with-null, boolean exclusive bounds, a
type on every node, and defaults for nested objects so that `kubectl get -o
yaml` shows every effective setting. This module does that translation and
nothing else; the rules themselves live next to the fields they constrain.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml
from pydantic import BaseModel

from .common import GROUP, VERSION, KubeModel
from .resources import RESOURCES, ResourceDef

_DROP_KEYS = {"title", "additionalProperties", "$defs"}


def _model_classes(root: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """Every pydantic model reachable from root, by class name (the $defs keys)."""
    found: dict[str, type[BaseModel]] = {}
    stack = [root]
    while stack:
        cls = stack.pop()
        if cls.__name__ in found:
            continue
        found[cls.__name__] = cls
        for f in cls.model_fields.values():
            stack.extend(_models_in(f.annotation))
    return found


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in getattr(annotation, "__args__", ()) for m in _models_in(arg)]


def _factory_defaults(classes: dict[str, type[BaseModel]]) -> dict[str, dict[str, Any]]:
    """Defaults of fields built by default_factory, which pydantic leaves out of its schema."""
    out: dict[str, dict[str, Any]] = {}
    for name, cls in classes.items():
        for fname, f in cls.model_fields.items():
            if f.default_factory is None:
                continue
            value = f.default_factory()
            if isinstance(value, BaseModel):
                wire: Any = {}  # the nested object's own defaults fill it in
            elif isinstance(value, list):
                wire = [v.to_wire() if isinstance(v, KubeModel) else v for v in value]
            else:
                wire = value
            out.setdefault(name, {})[f.alias or fname] = wire
    return out


def _structural(node: Any, defs: dict[str, Any], factory: dict[str, dict[str, Any]], with_defaults: bool) -> Any:
    if isinstance(node, list):
        return [_structural(n, defs, factory, with_defaults) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        name = node["$ref"].split("/")[-1]
        merged = {**copy.deepcopy(defs[name]), **{k: v for k, v in node.items() if k != "$ref"}}
        merged["x-kubetune-model"] = name
        return _structural(merged, defs, factory, with_defaults)
    if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):  # int-or-string keeps its anyOf
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express union {node['anyOf']} structurally")
        rest = {k: v for k, v in node.items() if k not in ("anyOf", "default")}
        return _structural({**options[0], **rest}, defs, factory, with_defaults)

    out: dict[str, Any] = {}
    model_name = node.get("x-kubetune-model")
    for key, value in node.items():
        if key in _DROP_KEYS or key == "x-kubetune-model":
            continue
        if key == "default" and not with_defaults:
            continue
        if key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            out[bound] = value
            out[key] = True
            continue
        if key == "const":
            out["enum"] = [value]
            continue
        if key == "properties":
            props = {}
            for pname, pschema in value.items():
                p = _structural(pschema, defs, factory, with_defaults)
                if with_defaults and model_name and pname in factory.get(model_name, {}):
                    p["default"] = factory[model_name][pname]
                props[pname] = p
            out["properties"] = props
            continue
        out[key] = _structural(value, defs, factory, with_defaults)
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    if node.get("format") == "date-time":
        out["type"] = "string"
    if "additionalProperties" in node and isinstance(node["additionalProperties"], dict):
        out["additionalProperties"] = _structural(node["additionalProperties"], defs, factory, with_defaults)
    return out


def openapi_schema(model: type[KubeModel], *, with_defaults: bool = True) -> dict[str, Any]:
    """Structural OpenAPI v3 schema of a model."""
    raw = model.model_json_schema(by_alias=True, mode="validation", ref_template="#/$defs/{model}")
    defs = raw.get("$defs", {})
    classes = _model_classes(model)
    root = {**raw, "x-kubetune-model": model.__name__}
    return _structural(root, defs, _factory_defaults(classes), with_defaults)


def build_crd(res: ResourceDef) -> dict[str, Any]:
    """The CustomResourceDefinition for one resource."""
    spec_schema = openapi_schema(res.spec)
    spec_schema["description"] = res.spec.__doc__.strip() if res.spec.__doc__ else ""
    status_schema = openapi_schema(res.status, with_defaults=False)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": res.crd_name,
            "labels": {"app.kubernetes.io/name": "kubetune", "app.kubernetes.io/part-of": "kubetune"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": res.kind,
                "listKind": f"{res.kind}List",
                "plural": res.plural,
                "singular": res.singular,
                "shortNames": list(res.short_names),
                "categories": ["kubetune"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [dict(c) for c in res.printer_columns],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": res.description,
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


def render_crd_yaml(res: ResourceDef) -> str:
    header = "# Generated by `kubetune crds` from operator/kubetune/api. Do not edit.\n"
    return header + yaml.safe_dump(build_crd(res), sort_keys=False, width=120)


def crd_files() -> dict[str, str]:
    """File name → content for everything under crds/."""
    return {f"{GROUP}_{res.plural}.yaml": render_crd_yaml(res) for res in RESOURCES}
