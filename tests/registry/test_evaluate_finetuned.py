"""`pbp evaluate` of a fine-tuned model on a labelled CSV file (no stack: a model directory and a local file): the
task's metrics beside their trivial baselines, overall and per length bucket, the same figures the registry's gate
computes; a pretrained model still reads a dataset."""

from __future__ import annotations

import json

import pytest

from pbp.cli.main import main
from pbp.finetune.export import load_finetuned
from pbp.finetune.scoring import evaluate_file
from pbp.registry.gate import evaluate as gate_evaluate
from pbp.registry.lineage import SplitRef


def test_a_finetuned_model_is_scored_on_a_labelled_file(models, tmp_path, capsys):
    a, b, test, seqs = models  # A is perfect on test (its labels are A's predictions); B is not
    out = tmp_path / "a.json"
    assert main(["evaluate", "--model", str(a), "--data", str(test), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].split() == ["metric", "model", "baseline"]
    assert "test_spearman      1.0000      0.0000" in printed
    assert f"tokens <= 512           {len(seqs)}" in printed  # the length table counts every row
    res = json.loads(out.read_text())
    assert res["test_spearman"] == pytest.approx(1.0) and res["test_le512_n"] == len(seqs)
    # the figures the gate computes for the same model and split
    model, task, _ = load_finetuned(b)
    gate = gate_evaluate(model, task, SplitRef(str(test), "", 0, "seq", "label"))
    mine = evaluate_file(b, str(test))
    assert {k: v for k, v in mine.items() if k in gate} == pytest.approx(gate)
    assert mine["test_spearman"] < 1.0 and set(gate) <= set(mine)


def test_a_file_without_the_label_column_is_named(models, tmp_path, capsys):
    a, _, test, _ = models
    bad = tmp_path / "bad.csv"
    bad.write_text(test.read_text().replace("label,seq", "y,seq", 1))
    assert main(["evaluate", "--model", str(a), "--data", str(bad)]) == 2
    assert f"{bad}:1: no column 'label'" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(a), "--data", str(bad), "--label-column", "y"]) == 0


def test_the_models_own_label_column_is_the_default(models, tmp_path, capsys):
    """A model trained with task.label_column=y reads y by default; it read 'label' whatever the model had."""
    import shutil

    from pbp.finetune.export import META

    a, _, test, _ = models
    mine = tmp_path / "model"
    shutil.copytree(a, mine)
    doc = json.loads((mine / META).read_text())
    assert doc["task"]["label_column"] == "label"  # what a model saves
    doc["task"]["label_column"] = "y"
    (mine / META).write_text(json.dumps(doc))
    assert load_finetuned(mine)[1].label_column == "y"
    renamed = tmp_path / "y.csv"
    renamed.write_text(test.read_text().replace("label,seq", "y,seq", 1))
    assert main(["evaluate", "--model", str(mine), "--data", str(renamed)]) == 0
    assert "test_spearman      1.0000" in capsys.readouterr().out
    assert main(["evaluate", "--model", str(mine), "--data", str(test)]) == 2
    assert (
        f"{test}:1: no column 'y' in the header ['label', 'seq'] (this reads columns 'seq' and 'y'; pbp "
        "evaluate takes --seq-column / --label-column)" in capsys.readouterr().err
    )


def test_unseen_labels_drop_says_how_many_rows_it_left_out(models, tmp_path, capsys):
    """The count is said and in --json (0 here: a numeric task has no classes; the split loader's drop of unknown
    classes is tested in tests/finetune/test_task_data.py)."""
    a, _, test, _ = models
    out = tmp_path / "a.json"
    assert main(["evaluate", "--model", str(a), "--data", str(test), "--unseen-labels", "drop", "--json",
                 str(out)]) == 0  # fmt: skip
    assert f"0 row(s) of {test} left out" in capsys.readouterr().out
    assert json.loads(out.read_text())["test_rows_left_out"] == 0


def test_data_of_the_other_kind_is_named_for_what_it_is(models, tmp_path, capsys):
    """A dataset given to a fine-tuned model read as 'empty file', a CSV given to a pretrained one as a dataset
    without its manifest."""
    from pbp.model import ModelConfig, ProteinBERT

    a, _, test, _ = models
    assert main(["evaluate", "--model", str(a), "--data", f"{tmp_path}/"]) == 2
    assert "a folder or prefix (a pbp dataset?), but" in capsys.readouterr().err
    pretrained = ProteinBERT(ModelConfig(n_annotations=8, d_local=16, d_global=32, n_blocks=1, n_heads=2, d_key=8))
    pretrained.save_pretrained(tmp_path / "pre")
    assert main(["evaluate", "--model", str(tmp_path / "pre"), "--data", str(test)]) == 2
    assert "is a pretrained model, scored on a pbp dataset" in capsys.readouterr().err


def test_the_baselines_take_their_constant_from_the_training_labels_the_model_recorded(models, tmp_path):
    """Fine-tuning's test_mse_baseline used the training mean, `pbp evaluate` and `registry register --test` the
    scored file's own mean: one tag, two definitions. A model now records its training constant."""
    import shutil

    import numpy as np
    import pandas as pd

    from pbp.model.finetune import TaskKind, TaskSpec
    from pbp.train.metrics import baseline_reference

    a, _, test, _ = models
    labels = pd.read_csv(test)["label"].to_numpy(dtype=np.float64)
    own = evaluate_file(a, str(test))  # a model saved without it: the file's own mean, as before
    assert own["test_mse_baseline"] == pytest.approx(((labels - labels.mean()) ** 2).mean())
    recorded = tmp_path / "recorded"
    shutil.copytree(a, recorded)
    doc = json.loads((recorded / "finetuned.json").read_text())
    doc["metadata"]["baseline_reference"] = [5.0]  # the training labels' mean
    (recorded / "finetuned.json").write_text(json.dumps(doc))
    res = evaluate_file(recorded, str(test))
    assert res["test_mse_baseline"] == pytest.approx(((labels - 5.0) ** 2).mean())
    assert res["test_mse"] == pytest.approx(own["test_mse"])  # the model's own figures do not change
    model, task, meta = load_finetuned(recorded)
    gate = gate_evaluate(model, task, SplitRef(str(test), "", 0, "seq", "label"), meta)
    assert gate["test_mse_baseline"] == pytest.approx(res["test_mse_baseline"])  # the registry's figure agrees
    numeric, categorical = TaskSpec(TaskKind.NUMERIC), TaskSpec(TaskKind.CATEGORICAL, 3)
    assert baseline_reference(numeric, np.array([1.0, 2.0, 6.0])) == [3.0]
    assert baseline_reference(categorical, np.array([2, 1, 2, 0])) == [2.0]
