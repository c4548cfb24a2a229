"""What a submitted job's working_dir ships, and the local paths in its config that cannot reach a cluster elsewhere.

``EXCLUDES`` are the patterns Ray applies to the project when it packs it (besides .gitignore). For a remote
cluster, :func:`unreachable_paths` reads the job's config (with its overrides and the configs it links) and says,
per dotted key, which local paths the job could not read there: inputs missing here, paths leaving the project,
files the package drops (errors), and absolute paths that must exist on the nodes (warnings).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# gitignore-style. Ray applies them to the working_dir AND to each py_module with that module as the root, so no
# pattern may match a folder of platform/pbp (a plain "data" would drop pbp/data). Ray also honours .gitignore.
EXCLUDES = [
    "/.git",
    "/.venv",
    "/.venv-*",
    "/build",
    "/dist",
    "/.pbp",
    "/mlruns",
    "**/__pycache__",
    "*.egg-info",
    ".pytest_cache",
    ".ruff_cache",
    ".mypy_cache",
    "*.safetensors",
    "*.tar",
    "*.pkl",
]


_OVERRIDE = re.compile(r"^([A-Za-z_][\w.]*)=(.*)$", re.S)


def _strings(doc: object, key: str, root: Path, depth: int = 0) -> list[tuple[str, str]]:
    """(dotted key, value) of every string in a config document. An override string ("a.b=v", as in
    ``finetune_overrides``) counts as its value under its own key; a key naming a YAML file of the project is read
    too, with its sibling ``<key>_overrides`` applied (``finetune`` + ``finetune_overrides``)."""
    from pbp.config import ConfigError, apply_overrides, read_yaml

    out: list[tuple[str, str]] = []
    if isinstance(doc, dict):
        linked = {
            k: root / v for k, v in doc.items() if isinstance(v, str) and v.endswith((".yaml", ".yml")) and depth < 4
        }  # a config linking itself (or a cycle) is read a few levels deep, not for ever
        linked = {k: p for k, p in linked.items() if p.is_file()}
        for k, v in doc.items():
            sub = f"{key}.{k}" if key else str(k)
            if k in linked:
                try:
                    nested = apply_overrides(read_yaml(linked[k]), [str(o) for o in doc.get(f"{k}_overrides") or []])
                except ConfigError:
                    nested = {}  # the job reports a bad file itself; here only paths are looked for
                out += [(f"{sub} -> {kk}", vv) for kk, vv in _strings(nested, "", root, depth + 1)]
                out.append((sub, v))  # the linked file itself must travel too
            elif not (isinstance(k, str) and k.endswith("_overrides") and k.removesuffix("_overrides") in linked):
                out += _strings(v, sub, root, depth)  # (a linked config's overrides were applied to it above)
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _strings(v, f"{key}.{i}", root, depth)
    elif isinstance(doc, str):
        m = _OVERRIDE.match(doc)
        out.append((f"{key}: {m.group(1)}", m.group(2)) if m else (key, doc))
    return out


@functools.cache
def excludes_spec() -> Any:
    """``EXCLUDES`` as a pathspec, read with gitignore rules as Ray reads them."""
    import pathspec

    return pathspec.PathSpec.from_lines("gitignore", EXCLUDES)


def _shipped(path: Path, root: Path) -> bool:
    """Whether a file or folder inside the project travels in the job's working_dir: not matched by ``EXCLUDES``
    (read with pathspec, as Ray reads them) and not git-ignored (Ray honours .gitignore)."""
    import subprocess

    rel = path.relative_to(root).as_posix() + ("/" if path.is_dir() else "")
    if excludes_spec().match_file(rel):
        return False
    try:
        ignored = subprocess.run(["git", "-C", str(root), "check-ignore", "-q", rel], timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        ignored = False
    return not ignored


def unreachable_paths(config: Path | None, overrides: Sequence[str], root: Path,
                      cls: type | None = None) -> tuple[list[str], list[str]]:  # fmt: skip
    """For a cluster elsewhere: (errors, warnings) about local paths in the job's config (with its overrides, read as
    the job's config class ``cls`` reads them when given)."""
    from pbp.config import apply_overrides, read_yaml

    doc = apply_overrides(read_yaml(config) if config is not None else {}, overrides, cls)
    errors, warnings = [], []
    fix = "put it in S3 and give its s3:// URL (an object store every node reaches)"
    for key, value in _strings(doc, "", root):
        if not value or "://" in value or "\n" in value or len(value) > 4096:
            continue
        if key.split(" -> ")[-1] in INPUT_KEYS and value != "none" and not _URI.match(value):
            missing = _missing_input(value, root)
            if missing == "relative":
                errors.append(f"{key}={value}: no such file or folder in the project ({root}), so none in the job's "
                              f"copy of it either; {fix}")  # fmt: skip
                continue
            if missing == "absolute":
                warnings.append(f"{key}={value}: not on this machine; the job reads it on the cluster's nodes, where "
                                "it must exist (a shared filesystem)")  # fmt: skip
                continue
        try:
            problem = _path_problem(value, root)
        except (OSError, RuntimeError, ValueError):  # not a path this filesystem can even look up: a plain value
            continue
        if problem == "absolute":
            warnings.append(f"{key}={value}: a local absolute path; it must exist on the cluster's nodes too "
                            "(a shared filesystem), else the job fails to find it")  # fmt: skip
        elif problem == "outside":
            errors.append(f"{key}={value}: outside the project, so it does not travel with the job; {fix}")
        elif problem == "unshipped":
            errors.append(f"{key}={value}: not shipped with the job (git-ignored or excluded from the working_dir); "
                          f"{fix}, or keep it in a shipped folder of the project")  # fmt: skip
        elif problem == "unshipped-dir":
            warnings.append(f"{key}={value}: a folder the job's working_dir does not ship (git-ignored or excluded); "
                            f"fine for an output, but an input there will not be found: {fix}")  # fmt: skip
    return errors, warnings


_URI = re.compile(r"[A-Za-z][\w+.-]*:/")
"""A URI's scheme (s3://, models:/NAME, runs:/ID/...): not a local path."""

INPUT_KEYS = ("task.train", "task.valid", "task.test", "init", "data.url")
"""Config keys (of any job's config, or of a config it links) that name an input the job reads: a local one must
exist before a remote job is submitted (any other path may be an output the job makes)."""


def _missing_input(value: str, root: Path) -> str:
    """'relative' / 'absolute' for an input path that does not exist here, '' when it does (or is no path)."""
    try:
        p = Path(value).expanduser()
        if p.is_absolute():
            return "" if p.exists() else "absolute"
        return "" if (root / p).exists() else "relative"
    except (OSError, RuntimeError, ValueError):
        return ""


def _path_problem(value: str, root: Path) -> str:
    """Why a config value that names a local path cannot reach a remote job: 'absolute' (an existing absolute path),
    'outside' (relative, leaving the project, whether or not it exists here), 'unshipped' (a project file the
    working_dir drops), 'unshipped-dir' (such a folder: an output, or an input that will be missing); '' for none."""

    p = Path(value).expanduser()
    if p.is_absolute():
        return "absolute" if p.exists() else ""
    if not Path(os.path.normpath(root / p)).is_relative_to(root):
        return "outside"  # ../x: a path by its form, and never in the working_dir
    full = (root / p).resolve()
    if not full.exists():
        return ""  # not a path here (a name, a value), or one the job creates
    if not full.is_relative_to(root):
        return "outside"  # through a symlink
    if not _shipped(full, root):
        return "unshipped" if full.is_file() else "unshipped-dir"
    return ""
