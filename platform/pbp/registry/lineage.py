"""A model version's lineage, as MLflow version tags: where it came from and what it was measured on.

pbp.kind                        finetuned | pretrained
pbp.source, pbp.source_run_id   what was registered
pbp.git_commit, pbp.init, pbp.init_pretrain_run, pbp.campaign, pbp.dataset_manifest_sha256, ...
                                every ``pbp.*`` entry of the model's own metadata (written at export)
pbp.task.kind / name / classes / seq_column, pbp.task.{train,valid,test}_sha256       fine-tuned models
pbp.test.path / sha256 / max_rows / seq_column / label_column                       the test split
pbp.metric.<name>               test metrics (``test_spearman`` ...) on that split; pbp.metric.split says which
pbp.pretrain.run / steps, pbp.go_terms                                               pretrained models
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pbp.finetune.export import META as FINETUNED_META

TAG_LIMIT = 5000  # MLflow's limit on a tag value


@dataclass(frozen=True)
class SplitRef:
    """A test split as the gate identifies it: the file's sha256 and the row limit it was read with."""

    path: str
    sha256: str
    max_rows: int = 0
    seq_column: str = "seq"
    label_column: str = "label"

    @property
    def key(self) -> str:
        return f"{self.sha256}:{self.max_rows}"

    def describe(self) -> str:
        """``stability.test.csv (sha256 1a2b3c4d, first 120 rows)``: for messages."""
        first = f", first {self.max_rows} rows" if self.max_rows else ""
        return f"{self.path.rsplit('/', 1)[-1]} (sha256 {self.sha256[:8]}{first})"

    def tags(self) -> dict[str, str]:
        return {"pbp.test.path": self.path, "pbp.test.sha256": self.sha256, "pbp.test.max_rows": str(self.max_rows),
                "pbp.test.seq_column": self.seq_column, "pbp.test.label_column": self.label_column}  # fmt: skip

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> SplitRef | None:
        if not tags.get("pbp.test.sha256"):
            return None
        return cls(tags.get("pbp.test.path", ""), tags["pbp.test.sha256"], int(tags.get("pbp.test.max_rows", 0)),
                   tags.get("pbp.test.seq_column", "seq"), tags.get("pbp.test.label_column", "label"))  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "max_rows": self.max_rows}


def model_kind(model_dir: Path) -> str:
    return "finetuned" if (model_dir / FINETUNED_META).is_file() else "pretrained"


def metadata(model_dir: Path) -> dict[str, Any]:
    name = FINETUNED_META if model_kind(model_dir) == "finetuned" else "config.json"
    return dict(json.loads((model_dir / name).read_text()).get("metadata") or {})


def version_tags(model_dir: Path, source: str, run: Any | None) -> dict[str, str]:
    kind = model_kind(model_dir)
    meta = metadata(model_dir)
    tags = {k: str(v) for k, v in meta.items() if k.startswith("pbp.")}
    tags.update({"pbp.kind": kind, "pbp.source": source})
    if run is not None:
        tags["pbp.source_run_id"] = run.info.run_id
        tags.update({k: v for k, v in run.data.tags.items() if k in ("pbp.campaign", "pbp.git_commit")})
    tags.update(_finetuned_tags(model_dir, meta, run) if kind == "finetuned" else _pretrained_tags(model_dir, meta))
    return {k: v[:TAG_LIMIT] for k, v in tags.items()}


def _finetuned_tags(model_dir: Path, meta: dict[str, Any], run: Any | None) -> dict[str, str]:
    doc = json.loads((model_dir / FINETUNED_META).read_text())
    task = doc["task"]
    tags = {"pbp.task.kind": task["kind"], "pbp.task.classes": json.dumps(task.get("classes", [])),
            "pbp.task.seq_column": task.get("seq_column", "seq"), "pbp.finetune.run": str(meta.get("run_name", ""))}  # fmt: skip
    tags["pbp.task.name"] = str(meta.get("task_name") or "")
    for role, sha in (meta.get("task_digests") or {}).items():
        tags[f"pbp.task.{role}_sha256"] = str(sha)
    split = meta.get("test_split") or {}
    if split.get("sha256"):
        ref = SplitRef(str(split["path"]), str(split["sha256"]), int(split.get("max_rows", 0)),
                       str(split.get("seq_column", "seq")), str(split.get("label_column", "label")))  # fmt: skip
        tags.update(ref.tags())
        if run is not None:  # the run's test metrics were computed on exactly this split
            tags.update(metric_tags({k: v for k, v in run.data.metrics.items() if _overall_test_metric(k)}, ref))
    return tags


def _overall_test_metric(key: str) -> bool:
    return key.startswith("test_") and not key.startswith(("test_le", "test_gt")) and key != "test_loss"


def metric_tags(metrics: dict[str, float], ref: SplitRef) -> dict[str, str]:
    return {"pbp.metric.split": ref.key, **{f"pbp.metric.{k}": repr(float(v)) for k, v in metrics.items()}}


def _pretrained_tags(model_dir: Path, meta: dict[str, Any]) -> dict[str, str]:
    tags = {"pbp.pretrain.run": str(meta.get("run_name", "")), "pbp.pretrain.steps": str(meta.get("steps", ""))}
    vocab = model_dir / "go_vocabulary.json"
    if vocab.is_file():
        tags["pbp.go_terms"] = str(len(json.loads(vocab.read_text()).get("terms", [])))
    return tags
