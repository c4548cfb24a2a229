"""A pretrained model's GO vocabulary, GO-term predictions, embeddings and MLflow pyfunc (no stack needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pbp.model import ModelConfig, ProteinBERT
from pbp.model.tokenizer import encode
from pbp.model.vocabulary import VOCABULARY_FILE, GoTerm, read_vocabulary
from pbp.predict.embeddings import embeddings
from pbp.predict.pretrained import PretrainedPredictor, save_pyfunc

from .conftest import REPO, SHARED_DATA

TINY = ModelConfig(n_annotations=8, d_local=16, d_global=32, n_blocks=2, n_heads=2, d_key=8)
TERMS = [GoTerm(f"GO:000000{i}", f"term {i}" if i % 2 else None) for i in range(8)]
SEQS = ["MKTAYIAKQRQISFVKSHFSRQ", "MSV", "MKVLAAGIVGLLLA" * 5, "ACDEFGHIKLMNPQRSTVWY"]


@pytest.fixture
def model_dir(tmp_path):
    torch.manual_seed(0)
    model = ProteinBERT(TINY)
    with torch.no_grad():  # a wider spread of annotation logits than the zero-bias initialisation gives
        model.annotation_head.bias.copy_(torch.linspace(-2.0, 2.0, TINY.n_annotations))
    return model.save_pretrained(tmp_path / "pretrained", vocabulary=TERMS)


def test_vocabulary_round_trip(model_dir):
    doc = json.loads((model_dir / VOCABULARY_FILE).read_text())
    assert doc["terms"][1] == {"id": "GO:0000001", "name": "term 1"} and doc["terms"][0]["name"] is None
    assert read_vocabulary(model_dir, TINY.n_annotations) == TERMS
    predictor = PretrainedPredictor.from_dir(model_dir)
    assert predictor.vocabulary == TERMS and predictor.model.config == TINY


def test_wrong_length_vocabulary_is_refused_naming_the_file(model_dir, tmp_path):
    path = model_dir / VOCABULARY_FILE
    doc = json.loads(path.read_text())
    path.write_text(json.dumps({**doc, "terms": doc["terms"][:5]}))
    with pytest.raises(ValueError, match=rf"{path}: 5 GO terms, but the model has 8 annotation outputs"):
        ProteinBERT.from_pretrained(model_dir)
    with pytest.raises(ValueError, match=rf"{path}: 5 GO terms"):
        PretrainedPredictor.from_dir(model_dir)
    with pytest.raises(ValueError, match="3 GO terms for a model with 8 annotations"):
        ProteinBERT(TINY).save_pretrained(tmp_path / "other", vocabulary=TERMS[:3])
    assert not (tmp_path / "other" / "model.safetensors").exists()


def test_a_directory_without_vocabulary_still_loads(tmp_path):
    d = ProteinBERT(TINY).save_pretrained(tmp_path / "plain")
    predictor = PretrainedPredictor.from_dir(d)
    assert predictor.vocabulary is None
    top = predictor.top_go_terms(["MKV"], k=2)[0]
    assert [t["id"] for t in top] == [None, None] and all(isinstance(t["index"], int) for t in top)


def test_top_go_terms_are_sorted_sigmoid_of_a_direct_forward_pass(model_dir):
    predictor = PretrainedPredictor.from_dir(model_dir)
    top = predictor.top_go_terms(SEQS, k=3)
    model = ProteinBERT.from_pretrained(model_dir).eval()
    for seq, terms in zip(SEQS, top, strict=True):
        with torch.no_grad():
            probs = torch.sigmoid(model(torch.tensor([encode(seq)])).annotation_logits[0])
        assert len(terms) == 3
        assert [t["probability"] for t in terms] == sorted((t["probability"] for t in terms), reverse=True)
        expected = probs.topk(3).indices.tolist()
        assert [t["index"] for t in terms] == expected
        assert [t["id"] for t in terms] == [TERMS[i].id for i in expected]
        assert [t["name"] for t in terms] == [TERMS[i].name for i in expected]
        for t in terms:
            assert t["probability"] == pytest.approx(float(probs[t["index"]]), abs=1e-6)
    assert len(predictor.top_go_terms(["MKV"], k=100)[0]) == TINY.n_annotations


def test_embeddings_do_not_depend_on_batch_padding(model_dir):
    model = ProteinBERT.from_pretrained(model_dir)
    short, long_ = SEQS[0], SEQS[2]
    alone = embeddings(model, [short], per_residue=True)
    batched = embeddings(model, [short, long_], per_residue=True)
    assert alone.proteins.shape == (1, TINY.d_global) and batched.proteins.shape == (2, TINY.d_global)
    assert alone.residues is not None and batched.residues is not None
    assert alone.residues[0].shape == (len(short), TINY.d_local)
    assert batched.residues[1].shape == (len(long_), TINY.d_local)
    np.testing.assert_allclose(batched.proteins[0], alone.proteins[0], atol=1e-5)
    np.testing.assert_allclose(batched.residues[0], alone.residues[0], atol=1e-5)
    # the last block's global output: what the annotation head reads
    with torch.no_grad():
        direct = model(torch.tensor([encode(short)]), output_hidden_states=True).global_hidden[-1][0]
    np.testing.assert_allclose(alone.proteins[0], direct.numpy(), atol=1e-6)
    assert embeddings(model, [short]).residues is None


def test_embeddings_of_a_finetuned_models_body(model_dir):
    from pbp.model.finetune import FinetuneModel, TaskKind, TaskSpec

    finetuned = FinetuneModel(ProteinBERT.from_pretrained(model_dir), TaskSpec(TaskKind.BINARY))
    got = embeddings(finetuned.body, SEQS[:2])
    np.testing.assert_allclose(got.proteins, embeddings(ProteinBERT.from_pretrained(model_dir), SEQS[:2]).proteins)


def test_pyfunc_gives_the_same_terms_and_embeddings(model_dir, tmp_path):
    import mlflow.pyfunc
    import pandas as pd

    out = save_pyfunc(model_dir, tmp_path / "pyfunc", SEQS[:3])
    loaded = mlflow.pyfunc.load_model(str(out))
    predictor = PretrainedPredictor.from_dir(model_dir)
    got = loaded.predict(pd.DataFrame({"seq": SEQS}))
    assert list(got.columns) == ["go_terms"]
    for row, want in zip(got["go_terms"], predictor.top_go_terms(SEQS), strict=True):
        assert [t["id"] for t in row] == [t["id"] for t in want]
        assert [t["probability"] for t in row] == pytest.approx([t["probability"] for t in want], abs=1e-6)
    top2 = loaded.predict(pd.DataFrame({"seq": SEQS}), params={"top_k": 2})
    assert [len(r) for r in top2["go_terms"]] == [2] * len(SEQS)
    emb = loaded.predict(pd.DataFrame({"seq": SEQS}), params={"output": "embeddings"})
    np.testing.assert_allclose(np.array(emb["embedding"].tolist()), predictor.embeddings(SEQS).proteins, atol=1e-6)
    # {"seq": [a, b]} as one row holding a list (what MLflow's schema enforcement makes of it): one row per sequence
    one_row = predictor.predict(pd.DataFrame({"seq": [SEQS[:2]]}))
    assert len(one_row) == 2


def test_the_pretraining_export_writes_the_datasets_vocabulary_with_names(tmp_path):
    from pbp.config import load_config
    from pbp.data.shards import BuildConfig, Inputs, build
    from pbp.train.config import PretrainConfig
    from pbp.train.loop import save_final_model

    fasta = tmp_path / "p.fasta"
    fasta.write_text(">P1\nMKV\n>P2\nMKVL\n>P3\nMSSV\n")
    table = tmp_path / "go.tsv"
    table.write_text("P1\tGO:0005524\nP2\tGO:0005524\nP2\tGO:9999999\nP3\tGO:9999999\nP1\tGO:0003677\n")
    names = SHARED_DATA / "swissprot_go" / "go_names_2014_01.tsv.gz"
    manifest = build(str(tmp_path / "ds"), Inputs(fasta, table), BuildConfig(min_go_records=2, go_names=str(names)))
    m = manifest.manifest
    assert m["go_vocabulary"] == ["GO:0005524", "GO:9999999"]
    assert m["go_vocabulary_names"] == ["ATP binding", None]
    cfg = load_config(PretrainConfig, REPO / "configs/pretrain/tiny.yaml", ["model.n_annotations=2"])
    out = save_final_model(ProteinBERT(cfg.model), tmp_path / "final_model", cfg, m)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", VOCABULARY_FILE, "model.safetensors"]
    assert read_vocabulary(out, 2) == [GoTerm("GO:0005524", "ATP binding"), GoTerm("GO:9999999", None)]
    # a manifest from before names were kept: names from the OBO its build used, where that file still is
    obo = SHARED_DATA / "swissprot_go" / "go-basic_2022-07-01.obo.gz"
    old = {k: v for k, v in m.items() if k != "go_vocabulary_names"}
    out = save_final_model(ProteinBERT(cfg.model), tmp_path / "old", cfg, {**old, "build": {"go_obo": str(obo)}})
    assert [t.name for t in read_vocabulary(out, 2) or []] == ["ATP binding", None]
    out = save_final_model(ProteinBERT(cfg.model), tmp_path / "older", cfg, {**old, "build": {}})
    assert [t.name for t in read_vocabulary(out, 2) or []] == [None, None]


def test_a_build_with_an_ontology_keeps_its_term_names(tmp_path):
    from pbp.data.shards import BuildConfig, Inputs, build

    fasta = tmp_path / "p.fasta"
    fasta.write_text(">P1\nMKV\n>P2\nMKVL\n")
    table = tmp_path / "go.tsv"
    table.write_text("P1\tGO:0005761\nP2\tGO:0005761\n")
    obo = SHARED_DATA / "swissprot_go" / "go-basic_2022-07-01.obo.gz"
    m = build(str(tmp_path / "ds"), Inputs(fasta, table), BuildConfig(min_go_records=2, go_obo=str(obo))).manifest
    names = dict(zip(m["go_vocabulary"], m["go_vocabulary_names"], strict=True))
    assert names["GO:0005575"] == "cellular_component" and names["GO:0005761"] == "mitochondrial ribosome"
