"""``pbp bench predict``: what ``pbp predict`` and a served model cost beyond the model's own forward pass.

(1) predict: ``pbp.predict.files.predict_file`` (read the CSV, check every record, load the model directory, length
    batches with a progress bar, write the CSV) on N sequences of the stability benchmark's test file, against a
    bare forward pass of the same model over the same sequences in the same length batches (token ids prepared
    beforehand, no I/O, no per-row output). Both run twice, alternating; the fastest of each counts.
    Ratio = bare seconds / predict seconds = predict's sequences per second over the bare pass's (target >= 0.9).
(2) serve: ``mlflow models serve --env-manager local`` of the same model as a pbp pyfunc (a local model directory:
    no tracking server), requests of 1 and of 64 sequences for ``--serve-seconds`` each, one at a time: requests
    per second and sequences per second. Ratio = served sequences per second / the same pyfunc's ``predict`` in
    this process on the same batches (what HTTP, JSON and the scoring server add).
The model has random weights (speed does not depend on them): the tiny config or the paper's (``--model base``)
with a numeric head. On CPU, fp32 (pbp never autocasts bf16 for inference).
"""

from __future__ import annotations

import csv
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from pbp.config import load_config
from pbp.finetune.export import TaskInfo, save_finetuned
from pbp.model import ModelConfig, ProteinBERT
from pbp.model.finetune import FinetuneModel, TaskKind
from pbp.model.tokenizer import encode
from pbp.predict.batches import length_batches

MODELS = {"tiny": ModelConfig(n_annotations=64, d_local=32, d_global=64, n_blocks=2, n_heads=2, d_key=16),
          "base": None}  # fmt: skip
STABILITY_TEST = "../shared/data/proteinbert_benchmarks/stability.test.csv"


def model_config(name: str) -> ModelConfig:
    cfg = MODELS.get(name)
    if name not in MODELS:
        raise ValueError(f"--model {name!r}: choose tiny or base")
    return cfg if cfg is not None else load_config(ModelConfig, "configs/model/base.yaml")


def sequences(n: int, path: str = STABILITY_TEST) -> list[str]:
    with open(path, newline="") as f:
        seqs = [row["seq"] for _, row in zip(range(n), csv.DictReader(f), strict=False)]
    if len(seqs) < n:
        raise ValueError(f"{path}: {len(seqs)} sequences, --n asked for {n}")
    return seqs


def _model(cfg: ModelConfig, out: Path) -> tuple[FinetuneModel, Path]:
    torch.manual_seed(0)
    model = FinetuneModel(ProteinBERT(cfg), TaskInfo(TaskKind.NUMERIC).spec).eval()
    return model, save_finetuned(model, TaskInfo(TaskKind.NUMERIC), out / "model", {"task_name": "bench"})


@torch.no_grad()
def _bare(model: FinetuneModel, ids: list[list[int]], max_tokens: int) -> float:
    t0 = time.perf_counter()
    for _rows, tokens in length_batches(ids, max_tokens):
        model(tokens)
    return time.perf_counter() - t0


def bench_predict(model_name: str, n: int, max_tokens: int = 16384) -> dict[str, Any]:
    from pbp.predict.files import predict_file

    seqs = sequences(n)
    with tempfile.TemporaryDirectory(prefix="pbp-bench-predict-") as tmp:
        model, mdir = _model(model_config(model_name), Path(tmp))
        inp = Path(tmp) / "in.csv"
        inp.write_text("id,seq\n" + "".join(f"s{i},{s}\n" for i, s in enumerate(seqs)))
        ids = [encode(s) for s in seqs]
        _bare(model, ids[:64], max_tokens)  # warm-up
        bare, full = [], []
        for _ in range(2):
            bare.append(_bare(model, ids, max_tokens))
            t0 = time.perf_counter()
            predict_file(str(mdir), str(inp), Path(tmp) / "out.csv", max_tokens=max_tokens)
            full.append(time.perf_counter() - t0)
    b, f = min(bare), min(full)
    return {"model": model_name, "n": n, "tokens": sum(len(x) for x in ids), "bare_s": b, "predict_s": f,
            "bare_seq_per_s": n / b, "predict_seq_per_s": n / f, "ratio": b / f}  # fmt: skip


def bench_serve(model_name: str, seconds: float, batches: tuple[int, ...] = (1, 64)) -> dict[str, Any]:
    import pandas as pd

    from pbp.finetune.export import load_finetuned
    from pbp.finetune.pyfunc import FinetunedPredictor, save_pyfunc
    from pbp.predict.serve import invoke, served

    seqs = sequences(max(batches))
    with tempfile.TemporaryDirectory(prefix="pbp-bench-serve-") as tmp:
        _, mdir = _model(model_config(model_name), Path(tmp))
        pyfunc = save_pyfunc(mdir, Path(tmp) / "pyfunc", seqs[:3])
        model, task, _ = load_finetuned(mdir)
        local = FinetunedPredictor(model, task)
        rows = []
        with served(str(pyfunc), _env()) as port:
            for bs in batches:
                body = json.dumps({"dataframe_split": {"columns": ["seq"], "data": [[s] for s in seqs[:bs]]}}).encode()
                rate = _rate(lambda body=body: invoke(port, body), seconds)
                df = pd.DataFrame({"seq": seqs[:bs]})
                inproc = _rate(lambda df=df: local.predict(df), seconds / 2)
                rows.append({"batch": bs, "requests_per_s": rate, "seq_per_s": rate * bs,
                             "inprocess_seq_per_s": inproc * bs, "ratio": rate / inproc})  # fmt: skip
    return {"model": model_name, "batches": rows}


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}


def _rate(fn, seconds: float) -> float:
    """Calls per second of ``fn`` over at least ``seconds`` (and at least 3 calls), after one warm-up call."""
    fn()
    n, t0 = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return n / (time.perf_counter() - t0)
