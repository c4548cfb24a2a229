"""Any pbp model location -> a predictor: a fine-tuned model (task predictions) or a pretrained one (GO terms).

Locations: a local or ``s3://`` model directory, ``runs:/ID/model``, ``models:/NAME/V``, ``models:/NAME@alias``
(resolved by ``pbp.train.artifacts.local_dir``; an MLflow pyfunc directory holds the pbp directory inside it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pbp.model import ProteinBERT


@dataclass
class LoadedModel:
    location: str
    directory: Path
    kind: str
    """finetuned | pretrained"""
    predictor: Any
    """FinetunedPredictor or PretrainedPredictor: ``predict_rows(seqs) -> list[dict]``."""
    body: ProteinBERT


def load_model(location: str, max_tokens: int = 16384) -> LoadedModel:
    from pbp.finetune.export import META, find_model_dir, load_finetuned
    from pbp.train.artifacts import local_dir

    d = find_model_dir(local_dir(location, "--model"), location)
    if (d / META).is_file():
        from pbp.finetune.pyfunc import FinetunedPredictor

        model, task, _ = load_finetuned(d)
        return LoadedModel(location, d, "finetuned", FinetunedPredictor(model, task, max_tokens), model.body)
    from pbp.predict.pretrained import PretrainedPredictor

    pred = PretrainedPredictor.from_dir(d, max_tokens=max_tokens)
    return LoadedModel(location, d, "pretrained", pred, pred.model)
