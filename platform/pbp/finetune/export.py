"""Fine-tuned models on disk: safetensors weights + JSON (model config, task, labels), never a pickle.

A directory holds ``model.safetensors`` (the body's and the head's tensors) and ``finetuned.json``::

    {"format": "pbp-finetuned", "format_version": 1, "model": {...ModelConfig...},
     "task": {"kind": "categorical", "n_classes": 3, "classes": ["a", "b", "c"], "seq_column": "seq"},
     "metadata": {...lineage...}}

Starting points for fine-tuning (``init``) are resolved here too: a pbp model directory (local or s3://), an MLflow
URI of one, or a fine-tuned model (its body is used).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pbp.model import ModelConfig, ProteinBERT
from pbp.model.finetune import FinetuneModel, TaskKind, TaskSpec
from pbp.train.artifacts import model_files

FORMAT = "pbp-finetuned"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
META = "finetuned.json"


@dataclass
class TaskInfo:
    kind: TaskKind
    n_classes: int = 1
    classes: list[str] = field(default_factory=list)
    seq_column: str = "seq"
    label_column: str = "label"
    """The training file's label column: what ``pbp evaluate`` and ``pbp registry register --test`` read by
    default."""

    @property
    def spec(self) -> TaskSpec:
        return TaskSpec(self.kind, self.n_classes)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "n_classes": self.n_classes, "classes": self.classes,
                "seq_column": self.seq_column, "label_column": self.label_column}  # fmt: skip


def save_finetuned(model: FinetuneModel, task: TaskInfo, directory: Path, metadata: dict[str, Any]) -> Path:
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS), metadata={"format": FORMAT})
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": model.body.config.to_dict(),
           "task": task.to_json(), "metadata": metadata}  # fmt: skip
    (directory / META).write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return directory


def load_finetuned(directory: str | Path) -> tuple[FinetuneModel, TaskInfo, dict[str, Any]]:
    from pbp.model.files import load_weights, read_json_object

    d = Path(directory)
    meta_path = d / META
    if not meta_path.is_file() or not (d / WEIGHTS).is_file():
        raise FileNotFoundError(f"{d}: not a fine-tuned pbp model (needs {META} and {WEIGHTS})")
    doc = read_json_object(meta_path)
    if doc.get("format") != FORMAT or doc.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{meta_path}: format {doc.get('format')!r} v{doc.get('format_version')} is not one this "
                         f"pbp reads ({FORMAT} v{FORMAT_VERSION})")  # fmt: skip
    try:
        t = doc["task"]
        task = TaskInfo(TaskKind(t["kind"]), int(t["n_classes"]), list(t["classes"]), t.get("seq_column", "seq"),
                        t.get("label_column", "label"))  # fmt: skip
        body = ProteinBERT(ModelConfig(**doc["model"]))
    except (KeyError, TypeError, ValueError) as e:  # a key missing, of another type, or a value out of range
        raise ValueError(f"{meta_path}: not a fine-tuned model's description ({type(e).__name__}: {e})") from None
    model = FinetuneModel(body, task.spec)
    load_weights(model, d / WEIGHTS)
    return model.eval(), task, doc.get("metadata", {})


def find_model_dir(root: Path, location: str) -> Path:
    for cand in [root, *sorted(p.parent for p in root.rglob("*.safetensors"))]:
        if (cand / "config.json").is_file() or (cand / META).is_file():
            return cand
    raise FileNotFoundError(f"init={location!r}: no pbp model (config.json or {META} beside model.safetensors)")


def load_body(location: str) -> tuple[ProteinBERT, dict[str, Any]]:
    """The pretrained body at ``location`` -> (model, its metadata for lineage)."""
    with model_files(location, "init") as root:
        d = find_model_dir(root, location)
        if (d / META).is_file():
            ft, _task, meta = load_finetuned(d)
            return ft.body, {"source": "finetuned", **meta}
        body = ProteinBERT.from_pretrained(d)
        meta = json.loads((d / "config.json").read_text()).get("metadata", {})
        return body, dict(meta)
