"""Check Kubernetes manifests (``infra/k8s/*.yaml``) against the CustomResourceDefinitions that will receive them.

The CRDs come from the user: ``kubectl get crd rayclusters.ray.io rayjobs.ray.io -o yaml`` on the target cluster
(exactly what its KubeRay operator installed), or ``ray-operator/config/crd/bases/`` of a KubeRay checkout at the
version ``infra/README.md`` names. pbp ships none: they are KubeRay's files.

Stricter than the API server: Kubernetes silently prunes fields a structural schema does not list, so a typo
(``workerGroupSpec``) would vanish on ``kubectl apply``; here an unknown field is an error, as with
``kubectl apply --validate=strict``, except under ``x-kubernetes-preserve-unknown-fields``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class Problem:
    file: Path
    document: int
    """0-based index of the YAML document in the file."""
    kind: str
    path: str
    """Where in the document: ``spec.workerGroupSpecs[0].replicas``; empty for the document itself."""
    message: str

    def __str__(self) -> str:
        where = f"{self.file} (document {self.document}, {self.kind})"
        return f"{where}: {self.path or '<root>'}: {self.message}"


def _documents(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        docs = list(yaml.safe_load_all(path.read_text()))
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not YAML: {e}") from None
    for i, d in enumerate(docs):
        if d is None:
            continue
        if not isinstance(d, dict):
            raise ValueError(f"{path}: document {i} is not a mapping")
        yield i, d


def _crd_items(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if doc.get("kind") == "List":  # kubectl get crd ... -o yaml
        for item in doc.get("items") or []:
            yield from _crd_items(item)
    elif doc.get("kind") == "CustomResourceDefinition":
        yield doc


def load_schemas(crd_files: Iterable[Path]) -> dict[tuple[str, str], dict[str, Any]]:
    """-> {(apiVersion, kind): openAPIV3Schema} for every served version of every CRD in the files."""
    schemas: dict[tuple[str, str], dict[str, Any]] = {}
    for f in crd_files:
        for _, doc in _documents(f):
            for crd in _crd_items(doc):
                spec = crd.get("spec") or {}
                group, kind = spec.get("group"), (spec.get("names") or {}).get("kind")
                for v in spec.get("versions") or []:
                    schema = ((v.get("schema") or {}).get("openAPIV3Schema")) if v.get("served", True) else None
                    if group and kind and schema:
                        schemas[(f"{group}/{v['name']}", kind)] = schema
    if not schemas:
        raise ValueError(f"no CustomResourceDefinition with an openAPIV3Schema in {', '.join(map(str, crd_files))}")
    return schemas


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with unknown fields refused wherever it lists properties and does not preserve unknown fields."""
    out = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(out)
    return out


def _where(error: Any) -> str:
    parts = ""
    for p in error.absolute_path:
        parts += f"[{p}]" if isinstance(p, int) else (f".{p}" if parts else str(p))
    return parts


def check(manifests: Iterable[Path], crd_files: Iterable[Path]) -> tuple[list[Problem], int]:
    """Validate every document whose (apiVersion, kind) a CRD defines. -> (problems, documents checked).

    A document of a ``ray.io`` kind that no given CRD defines is a problem too (wrong apiVersion, or CRDs missing).
    """
    import jsonschema

    validators = {key: jsonschema.Draft7Validator(strict(s)) for key, s in load_schemas(list(crd_files)).items()}
    problems: list[Problem] = []
    checked = 0
    for f in manifests:
        for i, doc in _documents(f):
            key = (str(doc.get("apiVersion", "")), str(doc.get("kind", "")))
            validator = validators.get(key)
            if validator is None:
                if key[0].startswith("ray.io/"):
                    known = ", ".join(f"{a} {k}" for a, k in sorted(validators))
                    problems.append(Problem(f, i, key[1], "", f"no CRD given for {key[0]} {key[1]} (given: {known})"))
                continue
            checked += 1
            for err in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
                problems.append(Problem(f, i, key[1], _where(err), err.message))
    return problems, checked
