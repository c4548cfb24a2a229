"""Using registered models from `@champion`: `pbp predict` and `pbp embed` (bad records reported by id, nothing
else lost), the pyfunc in a fresh process, `mlflow models serve` over HTTP and the attention figure all give the
in-memory model's outputs; a pretrained model registers with its GO vocabulary and predicts named GO terms."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pbp.finetune.export import load_finetuned
from pbp.finetune.pyfunc import FinetunedPredictor
from pbp.model import ProteinBERT
from pbp.model.vocabulary import GoTerm
from pbp.predict.embeddings import embeddings
from pbp.predict.pretrained import PretrainedPredictor
from pbp.stack.endpoints import resolve

from ..conftest import REPO
from .conftest import TINY, client_of, ok

pytestmark = pytest.mark.timeout(900)
GOOD = {"P1": "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ", "P2": "MSV", "P3": "MADEEKLPPGWEKRMSRSSGRVYYFNHITNASQWERPSG" * 3}


def _fasta(path: Path) -> Path:
    bad = ">sp|BAD1|non-ascii\nMKT\u00e9AYIAK\n>sp|BAD2|empty\n\n"
    path.write_text("".join(f">sp|{k}|protein {k}\n{v}\n" for k, v in GOOD.items()) + bad)
    return path


def _champion(pbp, models, name: str) -> None:
    a, _b, test, _ = models
    ok(pbp("registry", "register", str(a), "--name", name, "--test", str(test)))
    ok(pbp("registry", "promote", name, "--version", "1"))


def test_predict_embed_pyfunc_serve_and_attention_from_champion_match_the_model(stack_dir, pbp, models, tmp_path):
    name = f"use-{os.getpid()}"
    _champion(pbp, models, name)
    model, task, _ = load_finetuned(models[0])
    want = [r["prediction"] for r in FinetunedPredictor(model, task).predict_sequences(list(GOOD.values()))]
    uri = f"models:/{name}@champion"
    from pbp.train.artifacts import ModelLocationError, pinned

    assert pinned(uri) == f"models:/{name}/1"  # what a fine-tuning run starting from the alias loads and records
    assert pinned(f"models:/{name}/1") == f"models:/{name}/1" and pinned(str(tmp_path)) == str(tmp_path)
    with pytest.raises(ModelLocationError, match=rf"init='models:/{name}@nosuch'"):
        pinned(f"models:/{name}@nosuch", "init")

    out = ok(pbp("predict", "--model", uri, "--input", str(_fasta(tmp_path / "in.fasta")), "--out",
                 str(tmp_path / "preds.csv")))  # fmt: skip
    assert "predicted 3 sequences" in out and "skipped 2 bad record(s)" in out and "BAD1" in out and "BAD2" in out
    assert b"\r" not in (tmp_path / "preds.csv").read_bytes()  # plain LF lines (csv's default is CRLF)
    preds = pd.read_csv(tmp_path / "preds.csv")
    assert list(preds["id"]) == list(GOOD) and list(preds["length"]) == [len(s) for s in GOOD.values()]
    np.testing.assert_allclose(preds["prediction"], want, rtol=1e-5, atol=1e-6)
    errors = [json.loads(x) for x in (tmp_path / "preds.csv.errors.jsonl").read_text().splitlines()]
    assert {e["record"] for e in errors} == {"BAD1", "BAD2"}

    ok(pbp("embed", "--model", uri, "--input", str(tmp_path / "in.fasta"), "--out", str(tmp_path / "e.parquet"),
           "--per-residue"))  # fmt: skip
    emb = pd.read_parquet(tmp_path / "e.parquet")
    ref = embeddings(model.body, list(GOOD.values()), per_residue=True)
    np.testing.assert_allclose(np.stack(emb["embedding"]), ref.proteins, rtol=1e-5, atol=1e-6)
    for got, exp in zip(emb["residue_embeddings"], ref.residues, strict=True):
        np.testing.assert_allclose(np.stack(got), exp, rtol=1e-5, atol=1e-6)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_", "RAY_"))}
    ep = resolve(stack_dir, env={})
    # `mlflow models serve` runs `uvicorn` from PATH: the venv's bin first, as for a user with the venv active.
    env.update(ep.mlflow_env(), MLFLOW_TRACKING_URI=ep.mlflow_uri, PATH=f"{Path(sys.executable).parent}:{env['PATH']}")
    code = ("import json, sys, mlflow, pandas as pd; m = mlflow.pyfunc.load_model(sys.argv[1]); "
            "print(json.dumps(m.predict(pd.DataFrame({'seq': json.loads(sys.argv[2])}))['prediction'].tolist()))")  # fmt: skip
    res = subprocess.run([sys.executable, "-c", code, uri, json.dumps(list(GOOD.values()))], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    np.testing.assert_allclose(json.loads(res.stdout.strip().splitlines()[-1]), want, rtol=1e-5, atol=1e-6)

    served = _serve(uri, env, tmp_path, {"dataframe_split": {"columns": ["seq"], "data": [[s] for s in GOOD.values()]}})
    np.testing.assert_allclose([r["prediction"] for r in served["predictions"]], want, rtol=1e-5, atol=1e-6)

    out = ok(pbp("attention", "--model", uri, "--sequence", GOOD["P1"], "--out", str(tmp_path / "att.png")))
    assert (tmp_path / "att.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "4 rows" in out


def _serve(uri: str, env: dict[str, str], tmp_path: Path, payload: dict) -> dict:
    """`mlflow models serve -m URI --env-manager local`, one POST /invocations, stopped."""
    from pbp.predict.serve import invoke, served

    with (tmp_path / "serve.log").open("w") as log, served(uri, env, log) as port:
        return invoke(port, payload, timeout=60)


def test_pretrained_model_registers_with_its_go_vocabulary_and_predicts_named_terms(pbp, tmp_path):
    import torch

    torch.manual_seed(5)
    body = ProteinBERT(TINY)
    vocab = [GoTerm(f"GO:{i:07d}", f"term {i}") for i in range(TINY.n_annotations)]
    body.save_pretrained(tmp_path / "pre", metadata={"run_name": "pre-unit", "steps": 10}, vocabulary=vocab)
    name = f"pre-{os.getpid()}"
    out = ok(pbp("registry", "register", str(tmp_path / "pre"), "--name", name))
    assert "(pretrained)" in out
    res = pbp("registry", "promote", name, "--version", "1")  # no task metric: refused, not an error
    assert res.returncode == 1 and "no task test metric to gate on (promote it with --force --reason)" in res.stdout
    out = ok(
        pbp("registry", "promote", name, "--version", "1", "--force", "--reason", "the base model for fine-tuning")
    )
    assert "forced past the gate (version 1 is a pretrained model with no task test metric to gate on)" in out, out

    seqs = list(GOOD.values())
    (tmp_path / "in.csv").write_text("label,seq,id\n" + "".join(f"0,{s},{k}\n" for k, s in GOOD.items()))
    ok(pbp("predict", "--model", f"models:/{name}@champion", "--input", str(tmp_path / "in.csv"), "--out",
           str(tmp_path / "go.csv"), "--top-k", "3"))  # fmt: skip
    got = pd.read_csv(tmp_path / "go.csv")
    want = PretrainedPredictor(body, vocab).top_go_terms(seqs, 3)
    for row, terms in zip(got.itertuples(), want, strict=True):
        assert row.go_ids.split(";") == [t["id"] for t in terms]
        assert row.go_names.split(";") == [t["name"] for t in terms]
        np.testing.assert_allclose([float(p) for p in row.go_probabilities.split(";")],
                                   [t["probability"] for t in terms], rtol=1e-5)  # fmt: skip
    tags = client_of_tags(pbp, name)
    assert tags["pbp.kind"] == "pretrained" and tags["pbp.go_terms"] == str(TINY.n_annotations)
    assert tags["pbp.pretrain.run"] == "pre-unit"


def client_of_tags(pbp, name: str) -> dict[str, str]:
    stack_dir = Path(os.environ["PBP_STACK_DIR"])
    return dict(client_of(stack_dir).get_model_version(name, "1").tags)
