"""Registry test fixtures: the CLI in-process, two tiny fine-tuned models and a test split that tells them apart."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from pbp.finetune.export import TaskInfo, save_finetuned
from pbp.finetune.pyfunc import FinetunedPredictor
from pbp.model import ModelConfig, ProteinBERT
from pbp.model.finetune import FinetuneModel, TaskKind

from ..conftest import SHARED_DATA

TINY = ModelConfig(n_annotations=16, d_local=16, d_global=32, n_blocks=2, n_heads=2, d_key=8)


class _Result:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def pbp(stack_dir, capsys, monkeypatch):
    """`pbp ...` run in this process (the CLI's own code path, without a 3 s interpreter start per command), with
    the environment a user of the stack has; environment and MLflow URI are restored afterwards."""
    import mlflow

    from pbp.cli.main import main

    previous = mlflow.get_tracking_uri()

    def run(*args: str, env_extra: dict[str, str] | None = None) -> _Result:
        for k in [k for k in os.environ if k.startswith(("AWS_", "MLFLOW_", "RAY_"))]:
            monkeypatch.delenv(k)
        monkeypatch.setenv("PBP_STACK_DIR", str(stack_dir))
        for k, v in (env_extra or {}).items():
            monkeypatch.setenv(k, v)
        capsys.readouterr()
        rc = main(list(args))
        out = capsys.readouterr()
        return _Result(rc, out.out, out.err)

    yield run
    mlflow.set_tracking_uri(previous)


def ok(res) -> str:
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    return res.stdout + res.stderr


def _model(seed: int, out: Path) -> Path:
    import torch

    torch.manual_seed(seed)
    model = FinetuneModel(ProteinBERT(TINY), TaskInfo(TaskKind.NUMERIC).spec)
    for p in model.parameters():  # away from Keras' initialisation so predictions vary between proteins
        p.data.add_(torch.randn_like(p) * 0.05)
    meta = {"run_name": f"unit-{seed}", "init": "none", "task_name": "stability", "pbp.git_commit": "test"}
    return save_finetuned(model.eval(), TaskInfo(TaskKind.NUMERIC), out, meta)


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """Two fine-tuned tiny models and a test split on which A is perfect (labels = A's predictions)."""
    from pbp.finetune.export import load_finetuned

    d = tmp_path_factory.mktemp("models")
    a, b = _model(1, d / "a"), _model(2, d / "b")
    with (SHARED_DATA / "proteinbert_benchmarks" / "stability.test.csv").open() as f:
        seqs = [row["seq"] for _, row in zip(range(40), csv.DictReader(f), strict=False)]
    model_a, task, _ = load_finetuned(a)
    preds = FinetunedPredictor(model_a, task).predict_sequences(seqs)
    test = d / "test.csv"
    with test.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "seq"])  # label first: columns are found by name
        w.writerows([[p["prediction"], s] for p, s in zip(preds, seqs, strict=True)])
    return a, b, test, seqs


def client_of(stack_dir: Path):
    from mlflow.tracking import MlflowClient

    from pbp.stack.endpoints import resolve

    ep = resolve(stack_dir, env={})
    os.environ.update(ep.mlflow_env())  # restored by the autouse fixture below
    return MlflowClient(ep.mlflow_uri)


@pytest.fixture(autouse=True)
def _restore_env():
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
