"""Saving a pbp model as an MLflow pyfunc directory: safetensors + JSON beside a loader module (nothing pickled), a
signature inferred from an input example and the predictor's output for it. Shared by fine-tuned and pretrained
models (``pbp.finetune.pyfunc``, ``pbp.predict.pretrained``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

EXAMPLE_SEQUENCES = [
    "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ",
    "MSVLTPLLLRGLTGSARRLPVPRAKIHSL",
    "MADEEKLPPGWEKRMSRSSGRVYYFNHITNASQWERPSG",
]
"""A model's input example where its own training data is not at hand (a registered model directory, a campaign's
best trial logged from storage)."""


def save_pyfunc_model(out: Path, loader_module: str, model_dir: Path, predictor: Any, seq_column: str,
                      example_seqs: list[str], params: dict[str, Any]) -> Path:  # fmt: skip
    """``out``: an MLflow pyfunc model that ``loader_module`` loads from a copy of ``model_dir``; ``predictor``: the
    loaded model's pyfunc predictor, run once on the first 3 example sequences for the signature."""
    import mlflow.pyfunc
    import pandas as pd
    from mlflow.models import infer_signature

    import pbp
    from pbp.console import quiet_logger

    example = pd.DataFrame({seq_column: example_seqs[:3]})
    signature = infer_signature(example, predictor.predict(example), params=params)
    with quiet_logger("mlflow.pyfunc"):  # no "Validating input example against model signature" line per model
        mlflow.pyfunc.save_model(
            str(out), loader_module=loader_module, data_path=str(model_dir), signature=signature,
            input_example=example, pip_requirements=[f"pbp=={pbp.__version__}"],
        )  # fmt: skip
    return out
