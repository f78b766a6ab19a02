"""Rendering deploy/ overlays: ``kubectl kustomize`` when kubectl is installed, else a small
Python renderer for the subset of kustomize that deploy/ uses.

The subset: ``resources`` (files and directories with a kustomization), ``namespace``,
``labels`` (pairs on ``metadata.labels`` only), ``configMapGenerator`` (``files`` with
``key=path``, ``literals``, ``behavior: create|merge``) with kustomize's content-hash name
suffix and the references to it rewritten, ``patches`` (strategic-merge files; lists of
named items merge by name) and ``images`` (``newName``/``newTag``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

Object = dict[str, Any]
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "Job")


def render(overlay: Path) -> list[Object]:
    """Every object of ``overlay``, rendered by kubectl if present, else by Python."""
    if shutil.which("kubectl"):
        return render_kubectl(overlay)
    return render_python(overlay)


def render_kubectl(overlay: Path) -> list[Object]:
    out = subprocess.run(
        ["kubectl", "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(overlay)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def render_python(overlay: Path) -> list[Object]:
    objects, generated = _build(overlay)
    _suffix_hashes(objects, generated)
    return objects


# -- the kustomization tree ----------------------------------------------------------------


def _load_kustomization(root: Path) -> Object:
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        if (root / name).exists():
            document: Object = yaml.safe_load((root / name).read_text())
            unknown = set(document) - {
                "apiVersion", "kind", "resources", "namespace", "labels",
                "configMapGenerator", "patches", "images",
            }  # fmt: skip
            if unknown:
                raise ValueError(f"{root}: the Python renderer does not support {sorted(unknown)}")
            return document
    raise FileNotFoundError(f"no kustomization in {root}")


def _build(root: Path) -> tuple[list[Object], set[str]]:
    """Objects of one kustomization, and the names of its generated ConfigMaps."""
    k = _load_kustomization(root)
    objects: list[Object] = []
    generated: set[str] = set()
    for entry in k.get("resources", []):
        path = (root / entry).resolve()
        if path.is_dir():
            child, names = _build(path)
            objects += child
            generated |= names
        else:
            objects += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for gen in k.get("configMapGenerator", []):
        data = _generator_data(root, gen)
        behavior = gen.get("behavior", "create")
        if behavior == "create":
            metadata = {"name": gen["name"]}
            objects.append(
                {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}
            )
            generated.add(gen["name"])
        elif behavior == "merge":
            target = _find(objects, "ConfigMap", gen["name"])
            target.setdefault("data", {}).update(data)
        else:
            raise ValueError(f"configMapGenerator behavior {behavior!r} is not supported")
    for patch in k.get("patches", []):
        for doc in yaml.safe_load_all((root / patch["path"]).read_text()):
            if doc:
                target = _find(objects, doc["kind"], doc["metadata"]["name"])
                merged = _merge(target, doc)
                target.clear()
                target.update(merged)
    for label in k.get("labels", []):
        if label.get("includeSelectors") or label.get("includeTemplates"):
            raise ValueError("labels: only metadata labels are supported")
        for obj in objects:
            obj["metadata"].setdefault("labels", {}).update(label["pairs"])
    for image in k.get("images", []):
        for obj in objects:
            for container in _containers(obj):
                name, _, _tag = container["image"].partition(":")
                if name == image["name"]:
                    tag = image.get("newTag", _tag)
                    new = image.get("newName", name)
                    container["image"] = f"{new}:{tag}" if tag else new
    if "namespace" in k:
        for obj in objects:
            obj["metadata"]["namespace"] = k["namespace"]
    return objects, generated


def _generator_data(root: Path, gen: Object) -> dict[str, str]:
    data: dict[str, str] = {}
    for item in gen.get("files", []):
        key, sep, path = item.partition("=")
        if not sep:
            key, path = Path(item).name, item
        data[key] = (root / path).read_text()
    for item in gen.get("literals", []):
        key, _, value = item.partition("=")
        data[key] = value
    return data


def _find(objects: list[Object], kind: str, name: str) -> Object:
    for obj in objects:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    raise KeyError(f"{kind}/{name} not found")


def _merge(base: Any, patch: Any) -> Any:
    """Strategic merge, the part deploy/ needs: maps merge; lists of named maps merge by
    name; any other list is replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = _merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    named = isinstance(base, list) and isinstance(patch, list)
    if named and all(isinstance(i, dict) and "name" in i for i in [*base, *patch]):
        out_list = [dict(i) for i in base]
        for item in patch:
            for i, existing in enumerate(out_list):
                if existing["name"] == item["name"]:
                    out_list[i] = _merge(existing, item)
                    break
            else:
                out_list.append(copy.deepcopy(item))
        return out_list
    return copy.deepcopy(patch)


def _pod_spec(obj: Object) -> Object | None:
    if obj["kind"] in WORKLOADS:
        spec: Object = obj["spec"]["template"]["spec"]
        return spec
    return None


def _containers(obj: Object) -> list[Object]:
    spec = _pod_spec(obj)
    if spec is None:
        return []
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


# -- kustomize's content hash ---------------------------------------------------------------


def _go_json(value: Any) -> str:
    """``json.Marshal`` of Go: sorted keys, no spaces, HTML characters escaped."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for char, escaped in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"),
                          ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):  # fmt: skip
        text = text.replace(char, escaped)
    return text


def config_map_hash(data: dict[str, str]) -> str:
    """kustomize's name suffix for a ConfigMap (api/hasher: sha256 of the JSON of kind, name
    and data, 10 characters, with the vowels and digits that could spell words replaced).
    kustomize v5 looks the name up as one path element ``metadata/name``, finds nothing,
    and hashes an empty name: so do we."""
    encoded = _go_json({"data": data, "kind": "ConfigMap", "name": ""})
    digest = hashlib.sha256(encoded.encode()).hexdigest()[:10]
    table: dict[str, str | int | None] = {"0": "g", "1": "h", "3": "k", "a": "m", "e": "t"}
    return digest.translate(str.maketrans(table))


def _suffix_hashes(objects: list[Object], generated: set[str]) -> None:
    renamed: dict[str, str] = {}
    for obj in objects:
        name = obj["metadata"]["name"]
        if obj["kind"] == "ConfigMap" and name in generated:
            renamed[name] = f"{name}-{config_map_hash(obj.get('data', {}))}"
            obj["metadata"]["name"] = renamed[name]
    for obj in objects:
        spec = _pod_spec(obj)
        if spec is None:
            continue
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                ref = volume["configMap"]
                ref["name"] = renamed.get(ref["name"], ref["name"])
        for container in _containers(obj):
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    ref = source["configMapRef"]
                    ref["name"] = renamed.get(ref["name"], ref["name"])
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("configMapKeyRef")
                if ref:
                    ref["name"] = renamed.get(ref["name"], ref["name"])
