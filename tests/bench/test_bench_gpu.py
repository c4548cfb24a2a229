"""``pbp bench gpu``'s parts run the real loops in this process, without Ray, MLflow or S3. CI has no GPU: here they
run on the CPU (``scaling.use_gpu`` falls back to it), which is what makes a lent GPU's few minutes safe to spend."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pbp.bench import gpu
from pbp.train.checkpoint import newest_commit, storage_dir

from ..conftest import SHARED_DATA

DATA = SHARED_DATA / "proteinbert_benchmarks"
TINY_MODEL = ("model.d_local=16", "model.d_global=32", "model.n_blocks=1", "model.n_heads=2", "model.d_key=8",
              "model.n_annotations=16")  # fmt: skip


def test_finetuning_in_this_process_is_killed_after_epoch_2_and_resumes_to_the_same_metrics(tmp_path):
    res = gpu.finetune_part(DATA, tmp_path, rows=200)
    assert res["killed_after_epoch"] == 2 and res["resumed"] is True
    assert res["largest_metric_difference"] == 0.0  # on a CPU the resumed run is the uninterrupted one, bit for bit
    assert res["metrics"]["test_spearman_baseline"] == 0.0 and "test_spearman" in res["metrics"]
    for run in ("gpu-ft", "gpu-ft-killed"):  # committed checkpoints and the export, in a local run directory
        newest = newest_commit(storage_dir(str(tmp_path / "runs" / run)))
        assert newest is not None and newest[1].job["epochs_done"] == res["epochs"]
        assert (tmp_path / "runs" / run / "final_model" / "model.safetensors").is_file()
        assert json.loads((tmp_path / "runs" / run / "final_metrics.json").read_text())["test_loss"] > 0


# ~70 s on 2 cores (four DeepSpeed runs in this process); the GPU machine runs it for real: `make test-slow` here
@pytest.mark.slow
def test_pretraining_in_this_process_with_deepspeed_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    import os

    import torch.distributed as dist

    monkeypatch.setenv("WORLD_SIZE", "4")  # a scheduler's, say: the one-rank group sets its own, then restores this
    res = gpu.pretrain_part(tmp_path, steps=8)
    assert set(res) == {"to_8", "to_16"} and res["to_8"]["device"] == "cpu" and res["to_8"]["bf16"] is False
    assert res["to_8"]["started_at_step"] == 0 and res["to_16"]["started_at_step"] == 8  # resumed, not retrained
    assert os.environ["WORLD_SIZE"] == "4" and "MASTER_PORT" not in os.environ and not dist.is_initialized()
    again = gpu.pretrain_part(tmp_path / "again", steps=4)  # a new DeepSpeed group in the same process
    assert again["to_8"]["started_at_step"] == 4
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


def test_the_model_part_times_fp32_and_bf16_against_this_runs_peaks(capsys, monkeypatch):
    """bf16 where it runs natively; on a CPU that emulates it, skipped and said (it timed it: 288 s of this test on
    an AVX2-only machine, the suite's longest)."""
    from pbp import hardware
    from pbp.model import ModelConfig

    tiny = ModelConfig(n_annotations=8, d_local=8, d_global=16, n_blocks=1, n_heads=2, d_key=4)
    if hardware.cpu_bf16_native():  # (timing emulated bf16 is what the skip is for)
        rows = gpu.model_part(0.05, batch_size=2, seq_len=32, device="cpu", cfg=tiny)
        assert [r.get("dtype") for r in rows[:2]] == ["fp32", "bf16"]
        assert all(r["fraction_of_peak"] > 0 for r in rows[:2])
        assert rows[2]["bf16_over_fp32_speed"] == pytest.approx(rows[1]["samples_per_s"] / rows[0]["samples_per_s"])
        assert "model fp32:" in capsys.readouterr().out
    monkeypatch.setattr(hardware, "cpu_bf16_native", lambda: False)
    rows = gpu.model_part(0.05, batch_size=2, seq_len=32, device="cpu", cfg=tiny)
    assert [r.get("dtype") for r in rows[:-1]] == ["fp32"] and rows[0]["fraction_of_peak"] > 0
    assert rows[-1]["bf16"] == "skipped: emulated on this CPU" and "bf16_over_fp32_speed" not in rows[-1]
    assert "model bf16: skipped, this CPU emulates bf16" in capsys.readouterr().out


def test_parts_run_each_in_its_own_folder_and_a_failing_one_is_recorded_not_raised(tmp_path, monkeypatch):
    seen: list[Path] = []

    def finetune(data_dir, work):
        seen.append(work)
        return {"ok": 1}

    monkeypatch.setattr(gpu, "model_part", lambda seconds: 1 / 0)
    monkeypatch.setattr(gpu, "finetune_part", finetune)
    done: dict[str, dict] = {}
    gpu.run_parts(["model", "finetune", "finetune"], DATA, tmp_path, 60.0, 1.0, done.__setitem__)
    assert done["model"]["result"] == {"error": "ZeroDivisionError: division by zero"}
    assert "peak_gpu_mib" not in done["finetune"] and done["finetune"]["wall_s"] >= 0  # (no CUDA here)
    assert done["finetune"]["result"] == {"ok": 1}
    assert len(seen) == 2 and seen[0] != seen[1] and all(p.parent == tmp_path for p in seen)


def test_bench_gpu_writes_each_parts_result_and_fails_when_one_failed(tmp_path, monkeypatch):
    import torch

    from pbp.cli.main import main

    def parts(names, data_dir, work, budget_s, model_seconds, done):
        done("finetune", {"wall_s": 1.0, "result": {"resumed": True}})
        if "model" in names:
            done("model", {"wall_s": 1.0, "result": {"error": "RuntimeError: no"}})

    from pbp import hardware

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(hardware, "describe", lambda: {"gpu": "stand-in"})  # (no CUDA here to name a device)
    monkeypatch.setattr(gpu, "run_parts", parts)
    out = tmp_path / "gpu.json"
    assert main(["bench", "gpu", "--parts", "finetune", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["finetune"]["result"] == {"resumed": True} and "machine" in doc
    assert main(["bench", "gpu", "--parts", "finetune,model", "--json", str(out)]) == 1


def test_building_the_cli_loads_no_torch():
    """Every `pbp` command builds the whole parser: a bench's module that imports torch there cost each command ~1 s."""
    import subprocess
    import sys

    code = "import sys\nfrom pbp.cli.main import build_parser\nbuild_parser()\nprint(sorted({'torch', 'numpy'} & set(sys.modules)))"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    )


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
