"""``pbp bench gpu``'s parts run the real loops in this process, without Ray, MLflow or S3. CI has no GPU: here they
run on the CPU (``scaling.use_gpu`` falls back to it), which is what makes a lent GPU's few minutes safe to spend."""

from __future__ import annotations

import json

import pytest

from pbp.bench import gpu
from pbp.train.checkpoint import newest_commit, storage_dir

from ..conftest import SHARED_DATA

DATA = SHARED_DATA / "proteinbert_benchmarks"
TINY_MODEL = ("model.d_local=16", "model.d_global=32", "model.n_blocks=1", "model.n_heads=2", "model.d_key=8",
              "model.n_annotations=16")  # fmt: skip


def test_finetuning_in_this_process_is_killed_after_epoch_2_and_resumes_to_the_same_metrics(tmp_path):
    res = gpu.finetune_part(DATA, tmp_path, rows=200)
    assert res["killed_exitcode"] == 1 and res["resumed"] is True
    assert res["largest_metric_difference"] == 0.0  # on a CPU the resumed run is the uninterrupted one, bit for bit
    assert res["metrics"]["test_spearman_baseline"] == 0.0 and "test_spearman" in res["metrics"]
    for run in ("gpu-ft", "gpu-ft-killed"):  # committed checkpoints and the export, in a local run directory
        newest = newest_commit(storage_dir(str(tmp_path / "runs" / run)))
        assert newest is not None and newest[1].job["epochs_done"] == res["epochs"]
        assert (tmp_path / "runs" / run / "final_model" / "model.safetensors").is_file()
        assert json.loads((tmp_path / "runs" / run / "final_metrics.json").read_text())["test_loss"] > 0


def test_pretraining_in_this_process_with_deepspeed_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    res = gpu.pretrain_part(tmp_path, steps=8)
    assert set(res) == {"to_8", "to_16"} and res["to_8"]["device"] == "cpu" and res["to_8"]["bf16"] is False
    newest = newest_commit(storage_dir(str(tmp_path / "runs" / "gpu-pretrain")))
    assert newest is not None and newest[1].step == 16
    assert (tmp_path / "runs" / "gpu-pretrain" / "final_model" / "model.safetensors").is_file()


def test_the_paper_part_fits_the_unfrozen_stage_into_the_budget(tmp_path):
    overrides = ("task.max_rows=96", *TINY_MODEL)
    res = gpu.paper_part(DATA, tmp_path, budget_s=0.0, overrides=overrides)  # no time left: 1 epoch
    assert res["unfrozen_cap"] == 1 and res["unfrozen_cap_recipe"] == 40
    assert res["unfrozen_epoch_seconds_estimate"] > 0
    assert "test_spearman" in res["metrics"] and res["paper_test_spearman_not_pretrained"] == 0.634
    assert res["test_spearman_over_paper"] == pytest.approx(res["metrics"]["test_spearman"] / 0.634)


@pytest.mark.parametrize(("left", "epoch_s", "cap"), [(0.0, 10.0, 1), (115.0, 10.0, 7), (1e6, 10.0, 40)])
def test_the_unfrozen_cap_is_what_fits_at_least_one_at_most_the_recipes(left, epoch_s, cap):
    assert gpu.unfrozen_cap(left, epoch_s, 40) == cap


def test_bench_gpu_says_it_needs_a_gpu_and_names_unknown_parts(monkeypatch, capsys):
    import torch

    from pbp.cli.main import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["bench", "gpu", "--parts", "finetune"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert main(["bench", "gpu", "--parts", "model,warp"]) == 2
    assert "--parts: unknown warp" in capsys.readouterr().err
