"""``pbp bench gpu``: on a CUDA machine, what CI (no GPU) cannot check, each figure beside a yardstick of the same run.

- ``model``: forward + pretraining loss + backward of the paper's model in fp32 and bf16 autocast, as fractions of
  this run's matmul peak in the same dtype (:func:`pbp.bench.model.bench_model` on ``cuda``).
- ``finetune``: the fine-tuning loop (:func:`pbp.finetune.loop.run_finetuning`) in this process on the GPU: the tiny
  model on a few hundred stability rows, every stage, a checkpoint each epoch into a local run directory. The same
  run is then made in a child process that exits after epoch 2 (the worker-loss test hook) and resumed here from
  its newest checkpoint: the resumed run's metrics beside the uninterrupted run's.
- ``pretrain``: the pretraining loop (:func:`pbp.train.loop.run_pretraining`) in this process with DeepSpeed on the
  GPU (bf16 where the GPU has it): the tiny model on a synthetic dataset built here, to ``steps`` with a checkpoint
  half-way, then the same run resumed from it to twice the steps.
- ``paper``: the paper's model, not pretrained, the paper's whole recipe on stability (all rows), with the
  unfrozen stage's epoch cap fitted to what is left of ``--budget-s`` (an epoch's time measured first); the test
  Spearman beside the paper's no-pretraining figure and the train-mean predictor.

Runs without Ray, MLflow or S3 (none is needed to exercise the loops on a GPU; the Ray Train path is the same code
with ``DistContext.from_ray``): tracking off, runs stored in a local directory.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pbp.config import load_config

if TYPE_CHECKING:  # torch and the configs load with the parts, not with the CLI's parser
    from pbp.finetune.config import FinetuneConfig
    from pbp.model import ModelConfig

FINETUNE_TINY = "configs/finetune/tiny.yaml"
FINETUNE_STABILITY = "configs/finetune/stability.yaml"
PRETRAIN_TINY = "configs/pretrain/tiny.yaml"
PAPER_STABILITY_SPEARMAN = 0.634
"""The paper's test Spearman on stability without pretraining (Brandes et al. 2022, table 1)."""
PARTS = ("model", "finetune", "pretrain", "paper")
KILLED_AFTER = 2
"""The epoch after which ``finetune``'s child process exits (the worker-loss test hook)."""
CHILD_TIMEOUT_S = 600.0


def local_overrides(work: Path, run_name: str) -> list[str]:
    """A run on this machine alone: on the GPU, tracking off, stored under ``work``."""
    return [f"run_name={run_name}", "scaling.use_gpu=true", "scaling.num_workers=1", "tracking.enabled=false",
            f"checkpoint.storage_path={work / 'runs'}"]  # fmt: skip


def task_overrides(data_dir: Path, task: str = "stability") -> list[str]:
    return [f"task.{split}={data_dir / f'{task}.{split}.csv'}" for split in ("train", "valid", "test")]


# ---- model --------------------------------------------------------------------------------------------------------


def model_part(seconds: float, batch_size: int = 32, seq_len: int = 512, device: str = "cuda",
               cfg: ModelConfig | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """The paper's model (or ``cfg``) in fp32 and under bf16 autocast, as :func:`pbp.bench.model.bench_model` times it.
    bf16 only where it runs natively: on a CPU that emulates it (AVX2 only) it is skipped and said, as ``pbp bench
    model`` does (a base-model bf16 step there takes about 14x an fp32 one)."""
    import torch

    from pbp.bench.model import as_row, bench_model
    from pbp.hardware import cpu_bf16_native
    from pbp.model import ModelConfig

    if device == "cpu" and not cpu_bf16_native():
        print("model bf16: skipped, this CPU emulates bf16 (no AVX-512 BF16 / AMX)", flush=True)
        dtypes: tuple[str, ...] = ("fp32",)
    else:
        dtypes = ("fp32", "bf16")
    results = []
    for dtype in dtypes:
        r = bench_model(cfg or ModelConfig(), dtype=dtype, seq_len=seq_len, batch_size=batch_size,
                        min_seconds=seconds, device=device)  # fmt: skip
        results.append(r)
        print(f"model {dtype}: {r.fraction_of_peak:.3f} of this run's {dtype} matmul peak "
              f"({r.samples_per_s:.0f} samples/s at {seq_len} tokens)", flush=True)  # fmt: skip
    # PyTorch's defaults: fp32 matmuls in full fp32, fp32 convolutions through cuDNN in TF32
    settings: dict[str, Any] = {
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
    }
    if len(results) == 2:
        settings["bf16_over_fp32_speed"] = results[1].samples_per_s / results[0].samples_per_s
    else:
        settings["bf16"] = "skipped: emulated on this CPU"
    return [*(as_row(r) for r in results), settings]


# ---- fine-tuning --------------------------------------------------------------------------------------------------


def _finetune(cfg: FinetuneConfig, meta: dict[str, Any]) -> tuple[Any, dict[str, float], float]:
    from pbp.finetune.loop import run_finetuning
    from pbp.train.dist import DistContext

    t0 = time.perf_counter()
    tr, final = run_finetuning(cfg, meta, DistContext.single())
    return tr, final, time.perf_counter() - t0


def _finetune_killed(cfg: FinetuneConfig, meta: dict[str, Any]) -> None:
    """A child process: the run, which exits after epoch ``KILLED_AFTER`` (``kill_after_epoch``, the test hook)."""
    _finetune(cfg, {**meta, "kill_after_epoch": KILLED_AFTER})


def _killed_after(cfg: FinetuneConfig, meta: dict[str, Any]) -> int:
    """Run :func:`_finetune_killed` in a child process. -> the epochs its newest checkpoint holds; raises unless it
    exited as the hook does (``KILLED_ON_CUE``), at that epoch, within ``CHILD_TIMEOUT_S``."""
    from pbp.finetune.loop import KILLED_ON_CUE
    from pbp.train.checkpoint import newest_commit, storage_dir

    child = mp.get_context("spawn").Process(target=_finetune_killed, args=(cfg, meta))
    child.start()
    child.join(CHILD_TIMEOUT_S)
    if child.is_alive():
        child.terminate()
        child.join(10)
        if child.is_alive():
            child.kill()
        raise RuntimeError(f"the run to be killed after epoch {KILLED_AFTER} was still running after "
                           f"{CHILD_TIMEOUT_S:.0f} s")  # fmt: skip
    newest = newest_commit(storage_dir(cfg.run_url))
    epochs = int(newest[1].job.get("epochs_done", 0)) if newest else 0
    if child.exitcode != KILLED_ON_CUE or epochs != KILLED_AFTER:
        raise RuntimeError(f"the run to be killed after epoch {KILLED_AFTER} exited {child.exitcode} (the hook's "
                           f"{KILLED_ON_CUE} expected) with {epochs} epochs checkpointed")  # fmt: skip
    return epochs


def largest_difference(a: dict[str, float], b: dict[str, float]) -> float:
    """The largest |a[k] - b[k]| over ``a``'s finite values (inf where ``b`` lacks one or has a non-finite value)."""
    diffs = [abs(v - b[k]) if k in b and math.isfinite(b[k]) else math.inf for k, v in a.items() if math.isfinite(v)]
    return max(diffs, default=0.0)


def finetune_part(data_dir: Path, work: Path, rows: int = 300) -> dict[str, Any]:
    from pbp.finetune.config import FinetuneConfig
    from pbp.finetune.launch import resolve_config

    def config(name: str) -> tuple[FinetuneConfig, dict[str, Any]]:
        overrides = [*task_overrides(data_dir), f"task.max_rows={rows}", *local_overrides(work, name)]
        return resolve_config(load_config(FinetuneConfig, FINETUNE_TINY, overrides))

    tr, whole, seconds = _finetune(*config("gpu-ft"))
    cfg, meta = config("gpu-ft-killed")
    _killed_after(cfg, meta)
    again, resumed, _ = _finetune(cfg, meta)
    if not again.resumed:
        raise RuntimeError("the re-run of the killed run did not resume from its checkpoint")
    diff = largest_difference(whole, resumed)
    print(f"finetune: {tr.progress.epochs_done} epochs on {tr.device} in {seconds:.1f} s; killed after epoch "
          f"{KILLED_AFTER}, resumed; largest metric difference {diff:.2e}", flush=True)  # fmt: skip
    return {"device": str(tr.device), "seconds": seconds, "epochs": tr.progress.epochs_done, "metrics": whole,
            "killed_after_epoch": KILLED_AFTER, "resumed": again.resumed, "resumed_metrics": resumed,
            "largest_metric_difference": diff}  # fmt: skip


# ---- pretraining --------------------------------------------------------------------------------------------------


def _synthetic_dataset(work: Path) -> str:
    from pbp.data.shards import BuildConfig, Inputs, build
    from pbp.data.synth import SynthConfig, write_corpus

    fasta, table = write_corpus(work / "synth", SynthConfig(n_proteins=1500, seed=2))
    url = str(work / "dataset")
    build(url, Inputs(fasta, table), BuildConfig(min_go_records=5, valid_fraction=0.1))
    return url


def pretrain_part(work: Path, steps: int = 40, bf16: str = "auto") -> dict[str, Any]:
    """``steps`` of the tiny pretraining (DeepSpeed, ``deepspeed.bf16=bf16``: auto is bf16 on CUDA), then the same
    run to twice the steps, resumed from the first's last checkpoint."""
    from pbp.train.config import PretrainConfig
    from pbp.train.dist import DistContext, one_rank_group
    from pbp.train.launch import resolve_config
    from pbp.train.loop import run_pretraining

    url = _synthetic_dataset(work)
    out: dict[str, Any] = {}
    with one_rank_group():
        for total in (steps, 2 * steps):
            overrides = [f"data.url={url}", f"max_steps={total}", f"checkpoint.every_steps={steps // 2}",
                         "tracking.log_every=10", f"deepspeed.bf16={bf16}",
                         *local_overrides(work, "gpu-pretrain")]  # fmt: skip
            cfg, meta = resolve_config(load_config(PretrainConfig, PRETRAIN_TINY, overrides))
            t0 = time.perf_counter()
            pt = run_pretraining(cfg, meta, DistContext.single())
            out[f"to_{total}"] = {"seconds": time.perf_counter() - t0, "device": str(pt.device), "bf16": pt.bf16,
                                  "started_at_step": pt.started_at}  # fmt: skip
    print(f"pretrain: {out}", flush=True)
    return out


# ---- the paper's model on stability -------------------------------------------------------------------------------


def seconds_per_epoch(cfg: FinetuneConfig, stage_index: int, steps: int = 30) -> float:
    """An estimate of an unfrozen epoch's training time at ``stage_index``: ``steps`` timed steps (after 5 warm-up) of
    what ``Trainer.train_epoch`` does per batch on one worker (forward, task loss, backward, an Adam step, as the
    recipe's stages), scaled to the epoch's batches."""
    import numpy as np
    import torch

    from pbp.bench.peak import sync
    from pbp.finetune.batching import train_batches
    from pbp.finetune.loop import Trainer
    from pbp.model.finetune import task_loss
    from pbp.train.dist import DistContext

    tr = Trainer(cfg, {}, DistContext.single())
    stage = cfg.stages[stage_index]
    opt = torch.optim.Adam(tr.model.parameters(), lr=stage.lr)
    batches = list(train_batches(tr.data.train, tr.rows, stage.seq_len, stage.batch_size, np.random.default_rng(0)))

    def step(b) -> None:
        loss = task_loss(tr.model.task, tr.model(b.tokens.to(tr.device)), b.labels.to(tr.device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    warm = min(5, len(batches) - 1)
    timed = batches[warm : warm + steps]
    for b in batches[:warm]:
        step(b)
    sync(tr.device)
    t0 = time.perf_counter()
    for b in timed:
        step(b)
    sync(tr.device)
    return (time.perf_counter() - t0) / len(timed) * len(batches)


def unfrozen_cap(seconds_left: float, epoch_s: float, recipe_cap: int) -> int:
    """The unfrozen stage's epoch cap that fits ``seconds_left``: the frozen stage (one forward pass for the feature
    cache, then cheap head epochs) and the final epoch at 1024 cost about 2.5 unfrozen epochs between them, and an
    epoch's validation about 15 % more; at least 1, at most the recipe's cap."""
    return max(1, min(recipe_cap, int(seconds_left / (epoch_s * 1.15) - 2.5)))


def paper_part(data_dir: Path, work: Path, budget_s: float, overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """The recipe on stability with the unfrozen stage capped to fit ``budget_s`` (a target, from an estimate: the
    run is not stopped at it). ``overrides``: dotted fine-tuning overrides after the recipe's (a CPU test shrinks the
    task with them)."""
    from pbp.finetune.config import FinetuneConfig
    from pbp.finetune.launch import resolve_config

    deadline = time.perf_counter() + budget_s
    cfg = load_config(FinetuneConfig, FINETUNE_STABILITY,
                      [*task_overrides(data_dir), *local_overrides(work, "gpu-paper"), *overrides])  # fmt: skip
    unfrozen = next(i for i, s in enumerate(cfg.stages) if not s.freeze_body)
    recipe_cap = cfg.stages[unfrozen].max_epochs
    epoch_s = seconds_per_epoch(cfg, unfrozen)
    cap = unfrozen_cap(deadline - time.perf_counter(), epoch_s, recipe_cap)
    stages = [replace(s, max_epochs=cap) if i == unfrozen else s for i, s in enumerate(cfg.stages)]
    cfg, meta = resolve_config(replace(cfg, stages=stages))
    print(f"paper: an unfrozen epoch ~{epoch_s:.0f} s: the unfrozen stage capped at {cap} epochs (the recipe: "
          f"{recipe_cap})", flush=True)  # fmt: skip
    tr, final, seconds = _finetune(cfg, meta)
    return {"seconds": seconds, "unfrozen_epoch_seconds_estimate": epoch_s, "unfrozen_cap": cap,
            "unfrozen_cap_recipe": recipe_cap, "epochs_done": tr.progress.epochs_done, "metrics": final,
            "paper_test_spearman_not_pretrained": PAPER_STABILITY_SPEARMAN,
            "test_spearman_over_paper": final.get("test_spearman", math.nan) / PAPER_STABILITY_SPEARMAN}  # fmt: skip


def run_parts(parts: list[str], data_dir: Path, work: Path, budget_s: float, model_seconds: float,
              done: Callable[[str, Any], None]) -> None:  # fmt: skip
    """Each part in turn, each in a fresh folder under ``work`` (run names are fixed: a folder of an earlier run
    would resume its runs), with its wall time and, on CUDA, its peak GPU memory (this process's allocations; the
    fine-tuning part's killed child is not counted); a part that fails is recorded as its error and the next one
    runs."""
    import tempfile

    import torch

    start = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    for part in parts:
        t0 = time.perf_counter()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        try:
            own = Path(tempfile.mkdtemp(prefix=f"{part}-", dir=work)) if part != "model" else work
            if part == "model":
                result: Any = model_part(model_seconds)
            elif part == "finetune":
                result = finetune_part(data_dir, own)
            elif part == "pretrain":
                result = pretrain_part(own)
            else:
                result = paper_part(data_dir, own, budget_s - (time.perf_counter() - start))
        except Exception as e:  # reported beside the parts that ran
            import traceback

            traceback.print_exc()
            result = {"error": f"{type(e).__name__}: {e}"}
        memory = {"peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20} if cuda else {}
        done(part, {"wall_s": time.perf_counter() - t0, **memory, "result": result})
