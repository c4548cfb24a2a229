"""The GO vocabulary of a pretrained model: which GO term each annotation output (and input) stands for.

A pretrained model directory holds ``go_vocabulary.json`` beside ``model.safetensors`` and ``config.json``::

    {"format": "pbp.go_vocabulary", "format_version": 1,
     "terms": [{"id": "GO:0005524", "name": "ATP binding"}, {"id": "GO:0005575", "name": null}, ...]}

``terms[i]`` is annotation ``i`` (the dataset manifest's ``go_vocabulary`` order); ``name`` is null where the data
build had no name for the term. The file is optional: directories written before it existed, or converted from the
original Keras checkpoint, have none, and their annotation outputs are known by index only.

Plain Python: this module imports nothing else of pbp.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

VOCABULARY_FILE = "go_vocabulary.json"
FORMAT_NAME = "pbp.go_vocabulary"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class GoTerm:
    id: str
    """The GO id, e.g. ``GO:0005524``."""
    name: str | None = None
    """The term's name, e.g. ``ATP binding``; None where the data had none."""


def write_vocabulary(directory: str | Path, terms: Sequence[GoTerm], n_annotations: int | None = None) -> Path:
    """Write ``go_vocabulary.json`` into ``directory``; with ``n_annotations``, refuse a vocabulary of another size."""
    out = Path(directory) / VOCABULARY_FILE
    if n_annotations is not None and len(terms) != n_annotations:
        raise ValueError(f"{out}: a vocabulary of {len(terms)} GO terms for a model with {n_annotations} annotations")
    doc = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "terms": [{"id": t.id, "name": t.name} for t in terms],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(out)
    return out


def read_vocabulary(directory: str | Path, n_annotations: int | None = None) -> list[GoTerm] | None:
    """The terms in ``directory``'s ``go_vocabulary.json`` in annotation order, or None when there is no such file.

    With ``n_annotations`` (the model's), a vocabulary of another length is refused; every error names the file.
    """
    path = Path(directory) / VOCABULARY_FILE
    if not path.is_file():
        return None
    from pbp.model.files import read_json_object

    doc = read_json_object(path)
    if not isinstance(doc.get("terms"), list):
        raise ValueError(f"{path}: expected an object with a 'terms' list")
    if doc.get("format", FORMAT_NAME) != FORMAT_NAME:
        raise ValueError(f"{path}: format is {doc.get('format')!r}, expected {FORMAT_NAME!r}")
    if doc.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {doc['format_version']} is newer than this pbp reads")
    terms = []
    for i, t in enumerate(doc["terms"]):
        if not isinstance(t, dict) or not isinstance(t.get("id"), str) or not isinstance(t.get("name"), str | None):
            raise ValueError(f"{path}: terms[{i}] is {t!r}, expected {{'id': 'GO:...', 'name': str or null}}")
        terms.append(GoTerm(t["id"], t.get("name")))
    if n_annotations is not None and len(terms) != n_annotations:
        raise ValueError(
            f"{path}: {len(terms)} GO terms, but the model has {n_annotations} annotation outputs; "
            "the vocabulary belongs to another model or dataset"
        )
    return terms
