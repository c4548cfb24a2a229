"""``pbp bench tune``: what a search trial costs beyond its training, what the frozen-body feature cache saves, and
how much compute ASHA + TPE needs to match random search. Every figure is a ratio of two measurements of one run.

(1) overhead: a real 1-trial campaign on the local stack (``pbp.tune.campaign.run_campaign``, configs/tune/tiny.yaml,
    ASHA off). Ratio = the trial's wall time (Tune's ``time_total_s``: the TorchTrainer's worker start, task
    loading, model build, MLflow, validation, checkpoints and export included) / its training time (the sum of the
    ``epoch_seconds`` every fine-tuning epoch reports: the time in ``Trainer.train_epoch``). The campaign's wall
    time (the ``run_campaign`` call: Ray Tune and the report included) / the same training time is printed too.
    Then the same campaign with ``scaling.report_poll_s=2`` (Ray Train's own default controller poll) for the
    trial's run: ratio = that trial's wall time / the first's (what pbp's 0.2 s poll saves).
(2) cache: the frozen stage in-process (no Ray): ``Trainer.begin_stage`` (which builds the cache) and E epochs of
    ``train_epoch`` + ``validate``, with ``feature_cache.enabled`` true and false, on the first N rows of the
    stability task (train and valid files); fastest of 2 alternating runs each, after an untimed warm-up epoch.
    Ratio = seconds with / seconds without. ``head_dropout=0`` so that the two runs must agree: the
    largest absolute difference of the head's weights after epoch 1 is printed (exactness, not a timing).
    Also the base model's cache build (``--ranks-rows``, 2,000 rows: enough evaluation batches to share) on R gloo
    ranks (spawned processes, one thread each; ``--cache-ranks``, default 2) against one rank: ratio = the slowest
    rank's ``begin_stage`` / the one rank's, fastest of 2 alternating runs; every rank's train features must equal
    the one rank's (max |diff| printed). A process's first forward passes pay a fixed start-up cost that the ranks
    do not share, so with few rows the ratio tends to 1.
exchange: fine-tuning's gradient exchange (``pbp.train.dist.average_gradients``, what every data-parallel step of an
    unfrozen stage runs after backward) of the base model's body (145 tensors, 16M weights) on 2 gloo ranks
    (spawned processes, one thread each), random gradients: bucketed (the default) / one all-reduce per tensor
    (``bucket_bytes=0``); seconds per exchange, mean of 5, fastest of 3 alternating runs.
(3) search: in-process with Optuna itself (a Ray trial costs tens of seconds of overhead on 2 cores, see (1); the
    sampler and the pruner are what is measured). Objective: the frozen stage of the tiny fine-tuning on the first
    N stability rows (train and valid files), on the feature cache (exact, see (2)), E epochs (no early stopping;
    reduce-on-plateau as configured), validation Spearman reported every epoch; the trial's value is the Spearman of
    its epoch with the lowest validation loss (what the loop keeps: the stage's best weights). Space:
    ``stages.0.lr`` and ``head_dropout`` from configs/tune/tiny.yaml. Per seed the body is built once (the same
    seeded initialisation for every trial) with its cache; each trial starts from the same initial head, a new
    optimizer and the same torch seed, so the objective is a deterministic function of the parameters.

    random   = ``RandomSampler(2 seed)``, no pruner: num_samples trials of E epochs each.
    ASHA+TPE = ``TPESampler(2 seed + 1, n_startup_trials=min(TPE_STARTUP_TRIALS, num_samples))`` (as the
               campaign's searcher; its start-up trials are random draws, which with random's seed would replay
               random's first trials) +
               ``SuccessiveHalvingPruner(min_resource=grace, reduction_factor)`` (ASHA; the trials run one after
               another here), ``trial.report(value, epoch)`` / ``trial.should_prune()`` every epoch; a pruned
               trial stops there. It runs trials until it reaches (below) or has spent random's total compute, so
               it may run more than num_samples trials (the trials it needed are printed).
    compute  = trial-epochs (one epoch of one trial; on the cache every epoch costs about the same).
    reaches  = walk the ASHA+TPE trials in the order they ran, adding up their epochs: the compute it needed is the
               running total at the end of the first COMPLETED (not pruned) trial whose value is >= the best value
               of any random trial (<= for a metric to minimise). If none does within random's total compute, it
               did not reach: the figure is the compute it spent (>= 1 x random's), marked as not reached.
    ratio    = that compute / random's total compute (num_samples x E); per seed (0, 1, 2 by default) and their
               mean. Target <= 1/3.
    baseline = the same figure for a search with no guidance: ``RandomSampler(2 seed + 1)`` (so its first trials
               are the guided search's own start-up draws), no pruner, run until it reaches or has spent random's
               compute. Two random searches are alike, so this is what luck alone gives: reaching the best of
               num_samples draws within another num_samples has probability 1/2, and the mean ratio is about 0.7.
    For experiments, ``--pruner hyperband|none``, ``--startup-trials N`` and ``--sampler gp`` (Optuna's
    ``GPSampler``, whose start-up draws are the same ``RandomSampler(seed)``'s) change the guided search (the
    campaign's is ``asha`` + ``tpe`` with 4 start-up trials); docs/benchmarks.md has their figures.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pbp.config import apply_overrides, load_config, read_yaml
from pbp.finetune.config import FinetuneConfig
from pbp.train.dist import DistContext
from pbp.tune.config import TPE_STARTUP_TRIALS

FINETUNE_TINY = "configs/finetune/tiny.yaml"
TUNE_TINY = "configs/tune/tiny.yaml"
MODEL_BASE = "configs/model/base.yaml"
SEARCH_KEYS = ("stages.0.lr", "head_dropout")
"""The frozen stage's part of the tune config's space."""


# ---- (3) the arithmetic of "reaches" ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrialRun:
    """One trial of a search, in the order it ran."""

    value: float | None
    """Completed: its final value; pruned: its last reported value."""
    epochs: int
    """Trial-epochs it spent."""
    completed: bool


@dataclass(frozen=True)
class Reach:
    target: float
    """Random search's best value."""
    reached: bool
    compute: int
    """Trial-epochs ASHA+TPE had spent when it reached the target (its total if it never did)."""
    trials: int
    """ASHA+TPE trials run until then (all of them if it never did)."""
    random_compute: int
    ratio: float
    """compute / random_compute."""


def _better(v: float | None, than: float, mode: str) -> bool:
    return v is not None and math.isfinite(v) and (v >= than if mode == "max" else v <= than)


def best_value(runs: Sequence[TrialRun], mode: str = "max", within: float = math.inf) -> float | None:
    """The best completed value among the trials that ended within ``within`` trial-epochs (None: none did)."""
    best: float | None = None
    spent = 0
    for t in runs:
        spent += t.epochs
        if spent > within:
            break
        if t.completed and t.value is not None and math.isfinite(t.value):
            best = t.value if best is None or _better(t.value, best, mode) else best
    return best


def reach(guided: Sequence[TrialRun], random: Sequence[TrialRun], mode: str = "max") -> Reach:
    """The compute ``guided`` needs to match ``random``'s best completed value (see the module docstring)."""
    target = best_value(random, mode)
    if target is None:
        raise ValueError("random search has no completed trial with a finite value")
    random_compute = sum(t.epochs for t in random)
    spent = 0
    for i, t in enumerate(guided):
        spent += t.epochs
        if t.completed and _better(t.value, target, mode):
            return Reach(target, True, spent, i + 1, random_compute, spent / random_compute)
    return Reach(target, False, spent, len(guided), random_compute, spent / random_compute)


# ---- shared: the tiny fine-tuning on the stability task, in-process -----------------------------------------------


def finetune_config(rows: int, overrides: Sequence[str] = (), model: str | None = None) -> FinetuneConfig:
    """configs/finetune/tiny.yaml on the first ``rows`` rows of each stability file (no test file)."""
    cfg = load_config(FinetuneConfig, FINETUNE_TINY, [f"task.max_rows={rows}", "task.test=", *overrides])
    if model is not None:
        from pbp.model import ModelConfig

        cfg = replace(cfg, model=load_config(ModelConfig, model, section="model"))
    return cfg


def _trainer(cfg: FinetuneConfig, run_dir: Path):
    """An in-process Trainer (one rank, no Ray); nothing is checkpointed, ``run_dir`` is only its storage path."""
    from pbp.finetune.loop import Trainer
    from pbp.train.dist import DistContext

    cfg = replace(cfg, checkpoint=replace(cfg.checkpoint, storage_path=str(run_dir)))
    return Trainer(cfg, {}, DistContext.single())


# ---- (2) the feature cache ----------------------------------------------------------------------------------------


def frozen_stage(cfg: FinetuneConfig, epochs: int, run_dir: Path) -> dict[str, Any]:
    """Time ``begin_stage`` + ``epochs`` x (train_epoch + validate) of stage 0; the head after epoch 1."""
    tr = _trainer(cfg, run_dir)
    stage = cfg.stages[0]
    t0 = time.perf_counter()
    tr.begin_stage(stage, resuming=False)
    build = time.perf_counter() - t0
    head: dict[str, torch.Tensor] = {}
    valid: dict[str, float] = {}
    for epoch in range(1, epochs + 1):
        tr.train_epoch(stage)
        tr.progress.epochs_done = epoch
        valid = tr.validate()
        if epoch == 1:
            head = {k: v.detach().clone() for k, v in tr.model.head.state_dict().items()}
    seconds = time.perf_counter() - t0
    cached = tr.caches.get("train") is not None
    return {"seconds": seconds, "begin_stage_s": build, "cached": cached, "head": head,
            "valid_loss": valid["valid_loss"], "train_rows": len(tr.rows)}  # fmt: skip


def bench_cache(rows: int, epochs: int, model: str | None = None, repeats: int = 2) -> dict[str, Any]:
    """The frozen stage with the feature cache against without it; same config and seed otherwise. After one
    untimed warm-up epoch (the first calls pay for thread pools and kernel choice), each is run ``repeats`` times,
    alternating, and its fastest run counts."""
    both = (True, False)
    cfgs = {c: finetune_config(rows, [f"feature_cache.enabled={str(c).lower()}", "head_dropout=0"], model)
            for c in both}  # fmt: skip
    runs: dict[bool, list[dict[str, Any]]] = {c: [] for c in both}
    with tempfile.TemporaryDirectory(prefix="pbp-bench-tune-") as tmp:
        frozen_stage(cfgs[False], 1, Path(tmp) / "warm-up")
        for i in range(repeats):
            for c in both:
                runs[c].append(frozen_stage(cfgs[c], epochs, Path(tmp) / f"cache-{c}-{i}"))
    if not all(r["cached"] for r in runs[True]) or any(r["cached"] for r in runs[False]):
        raise RuntimeError("feature cache: expected a cache with feature_cache.enabled=true only")
    on, off = (min(runs[c], key=lambda r: r["seconds"]) for c in both)
    h1, h0 = runs[True][0]["head"], runs[False][0]["head"]
    return {"model": model or FINETUNE_TINY, "label": "base" if model else "tiny", "rows": rows,
            "train_rows": on["train_rows"],
            "epochs": epochs, "repeats": repeats, "with_cache_s": on["seconds"], "cache_build_s": on["begin_stage_s"],
            "without_cache_s": off["seconds"], "ratio": on["seconds"] / off["seconds"],
            "head_max_abs_diff_epoch1": max(float((h1[k] - h0[k]).abs().max()) for k in h1),
            "valid_loss_with": on["valid_loss"], "valid_loss_without": off["valid_loss"]}  # fmt: skip


def _cache_build_rank(ctx: DistContext, cfg: FinetuneConfig, tmp: str) -> None:
    """One rank of :func:`bench_cache_ranks` (a spawned process, one thread): time ``begin_stage``, which builds the
    train and valid caches, and save this rank's train features."""
    from pbp.finetune.loop import Trainer

    world, rank = ctx.world_size, ctx.rank
    run = replace(cfg.checkpoint, storage_path=f"{tmp}/run-{world}-{rank}")
    tr = Trainer(replace(cfg, checkpoint=run), {}, ctx)
    t0 = time.perf_counter()
    tr.begin_stage(cfg.stages[0], resuming=False)
    seconds = time.perf_counter() - t0
    cache = tr.caches.get("train")
    if cache is None:
        raise RuntimeError("feature cache: none was built (feature_cache.enabled is off?)")
    np.save(f"{tmp}/features-{world}-{rank}.npy", np.asarray(cache.features, dtype=np.float32))
    Path(f"{tmp}/seconds-{world}-{rank}").write_text(str(seconds))


def bench_cache_ranks(rows: int, ranks: int = 2, model: str | None = None, repeats: int = 2) -> dict[str, Any]:
    """The cache build (``begin_stage`` of the frozen stage: train and valid) on ``ranks`` gloo ranks against one
    rank: spawned processes with one thread each, the slowest rank's time; fastest of ``repeats`` alternating runs.
    Every rank must end with the one rank's features (max |diff| returned)."""
    from pbp.train.dist import spawn_gloo_ranks

    cfg = finetune_config(rows, ["head_dropout=0"], model)
    times: dict[int, list[float]] = {1: [], ranks: []}
    diff = 0.0
    with tempfile.TemporaryDirectory(prefix="pbp-bench-tune-") as tmp:
        for i in range(repeats):
            for world in (1, ranks):
                spawn_gloo_ranks(_cache_build_rank, world, (cfg, tmp), f"{tmp}/pg-{world}-{i}")
                times[world].append(max(float(Path(f"{tmp}/seconds-{world}-{r}").read_text()) for r in range(world)))
            alone = np.load(f"{tmp}/features-1-0.npy")
            for r in range(ranks):
                diff = max(diff, float(np.abs(np.load(f"{tmp}/features-{ranks}-{r}.npy") - alone).max()))
    one, many = min(times[1]), min(times[ranks])
    return {"model": model or FINETUNE_TINY, "label": "base" if model else "tiny", "rows": rows, "ranks": ranks,
            "repeats": repeats, "one_rank_s": one, "ranks_s": many, "ratio": many / one,
            "features_max_abs_diff": diff}  # fmt: skip


def _exchange_rank(ctx: DistContext, model: str, steps: int, repeats: int, tmp: str) -> None:
    """One rank of :func:`bench_gradient_exchange`: the body's gradients, exchanged per tensor and bucketed."""
    import torch.distributed as dist

    from pbp.model.config import ModelConfig
    from pbp.model.proteinbert import ProteinBERT
    from pbp.train.dist import GRADIENT_BUCKET_BYTES, average_gradients

    params = list(ProteinBERT(load_config(ModelConfig, model)).parameters())
    g = torch.Generator().manual_seed(ctx.rank)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    times: dict[str, list[float]] = {"per_tensor": [], "bucketed": []}
    for _ in range(repeats):
        for name, bucket_bytes in (("per_tensor", 0), ("bucketed", GRADIENT_BUCKET_BYTES)):
            if ctx.world_size > 1:
                dist.barrier()
            t0 = time.perf_counter()
            for _ in range(steps):
                average_gradients(params, ctx, bucket_bytes=bucket_bytes)
            times[name].append((time.perf_counter() - t0) / steps)
    if ctx.is_main:
        Path(f"{tmp}/exchange.json").write_text(
            json.dumps({k: min(v) for k, v in times.items()} | {"tensors": len(params),
                                                                 "elements": sum(p.numel() for p in params)})
        )  # fmt: skip


def bench_gradient_exchange(
    model: str = MODEL_BASE, ranks: int = 2, steps: int = 5, repeats: int = 3
) -> dict[str, Any]:
    """Fine-tuning's gradient exchange (``average_gradients``) of a whole body on ``ranks`` gloo ranks (spawned
    processes, one thread each): bucketed (the default) against one all-reduce per tensor; seconds per exchange,
    mean of ``steps``, fastest of ``repeats`` alternating runs."""
    from pbp.train.dist import spawn_gloo_ranks

    with tempfile.TemporaryDirectory(prefix="pbp-bench-tune-") as tmp:
        spawn_gloo_ranks(_exchange_rank, ranks, (model, steps, repeats, tmp), f"{tmp}/pg")
        r = json.loads(Path(f"{tmp}/exchange.json").read_text())
    return {"model": model, "ranks": ranks, "steps": steps, "repeats": repeats, **r,
            "ratio": r["bucketed"] / r["per_tensor"]}  # fmt: skip


# ---- (3) the search -----------------------------------------------------------------------------------------------


class FrozenHeadObjective:
    """The frozen stage as an Optuna objective: one body and its feature cache, a fresh head per trial."""

    def __init__(self, base: dict[str, Any], epochs: int, run_dir: Path) -> None:
        from pbp.tune.search import trial_finetune_config

        self.base, self.epochs = base, epochs
        cfg = trial_finetune_config(base, {}, "bench-tune")
        self.tr = _trainer(cfg, run_dir)
        self.tr.begin_stage(cfg.stages[0], resuming=False)
        if self.tr.caches.get("train") is None or self.tr.caches.get("valid") is None:
            raise RuntimeError("search: the frozen stage has no feature cache (feature_cache.enabled is off?)")
        self.head0 = {k: v.detach().clone() for k, v in self.tr.model.head.state_dict().items()}
        self.metric = f"valid_{self.tr.flat.kind.metric_name}"

    def run(self, trial) -> TrialRun:
        """Train the head with the trial's parameters; report every epoch; stop when the pruner says so."""
        from pbp.finetune.loop import Patience, Progress
        from pbp.tune.search import trial_finetune_config

        cfg = trial_finetune_config(self.base, trial.params, "bench-tune")  # the sampled values, checked
        stage, tr = cfg.stages[0], self.tr
        tr.cfg = replace(cfg, checkpoint=tr.cfg.checkpoint)
        torch.manual_seed(cfg.seed)
        tr.model.head.load_state_dict(self.head0)
        tr.model.dropout.p = cfg.head_dropout
        tr.optimizer = torch.optim.Adam(tr.model.head.parameters(), lr=stage.lr)
        tr.patience, tr.progress = Patience(lr=stage.lr), Progress()
        best = math.nan
        for epoch in range(1, self.epochs + 1):
            tr.train_epoch(stage)
            tr.progress.epochs_done = epoch
            m = tr.validate()
            if tr.patience.observe(epoch, m["valid_loss"], cfg.schedule):
                best = m[self.metric]  # the stage keeps its lowest-valid-loss weights
            trial.report(m[self.metric], epoch)
            if trial.should_prune():
                return TrialRun(m[self.metric], epoch, completed=False)
        return TrialRun(best, self.epochs, completed=True)


def run_search(objective: FrozenHeadObjective, sampler, pruner, dists: dict[str, Any],
               done: Callable[[list[TrialRun]], bool]) -> list[TrialRun]:  # fmt: skip
    """Ask, run and tell trials one after another until ``done(trials so far)``."""
    import optuna
    from optuna.trial import TrialState

    from pbp.tune.report import quiet_optuna

    runs: list[TrialRun] = []
    with quiet_optuna():  # no line per trial; the caller's own verbosity is back afterwards
        # A fixed name: Optuna's HyperbandPruner assigns trials to brackets by a hash of the study's name, and an
        # unnamed study gets a random one, which would make its figures differ from run to run.
        study = optuna.create_study(study_name="pbp-bench-search", direction="maximize", sampler=sampler,
                                    pruner=pruner)  # fmt: skip
        while not done(runs):
            trial = study.ask(dists)
            r = objective.run(trial)
            if r.completed and r.value is not None and math.isfinite(r.value):
                study.tell(trial, r.value)
            else:
                study.tell(trial, state=TrialState.PRUNED if not r.completed else TrialState.FAIL)
            runs.append(r)
    return runs


def asha_settings(grace: int | None = None, reduction_factor: int | None = None) -> tuple[int, int]:
    """ASHA's grace period and reduction factor: the given ones, else configs/tune/tiny.yaml's."""
    from pbp.tune.config import TuneConfig

    asha = load_config(TuneConfig, TUNE_TINY).asha
    factor = reduction_factor or asha.reduction_factor
    if factor != int(factor):
        raise ValueError(f"search: Optuna's SuccessiveHalvingPruner needs an integer reduction factor, got {factor}")
    return grace or asha.grace_period, int(factor)


def search_space() -> dict[str, Any]:
    from pbp.tune.config import TuneConfig
    from pbp.tune.search import distributions

    space = load_config(TuneConfig, TUNE_TINY).space
    missing = [k for k in SEARCH_KEYS if k not in space]
    if missing:
        raise ValueError(f"{TUNE_TINY}: space has no {', '.join(missing)}")
    return distributions({k: space[k] for k in SEARCH_KEYS})


PRUNERS = ("asha", "hyperband", "none")
"""``--pruner``: the campaign's ASHA (default), Optuna's HyperbandPruner, or none (every trial at full budget)."""
SAMPLERS = ("tpe", "gp")
"""``--sampler``: the campaign's TPE (default) or Optuna's Gaussian-process sampler (an experiment)."""


def guided_name(pruner: str, sampler: str = "tpe") -> str:
    """The guided search's name in the output: ASHA+TPE (the campaign's), Hyperband+TPE, TPE, ASHA+GP, GP..."""
    prefix = {"asha": "ASHA+", "hyperband": "Hyperband+", "none": ""}[pruner]
    return prefix + sampler.upper()


def make_sampler(name: str, seed: int, startup_trials: int):
    """The guided search's sampler, its first ``startup_trials`` draws random (``RandomSampler(seed)``'s, for both)."""
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup_trials)
    raise ValueError(f"search: unknown sampler {name!r} (choose from {', '.join(SAMPLERS)})")


def make_pruner(name: str, grace: int, reduction_factor: int, epochs: int):
    """The guided search's pruner: ``asha`` = SuccessiveHalvingPruner(grace, factor) as the campaign runs it;
    ``hyperband`` = HyperbandPruner(min_resource=grace, max_resource=epochs, factor); ``none`` = NopPruner."""
    import optuna

    if name == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=grace, reduction_factor=reduction_factor)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=grace, max_resource=epochs,
                                              reduction_factor=reduction_factor)  # fmt: skip
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"search: unknown pruner {name!r} (choose from {', '.join(PRUNERS)})")


def bench_search(seeds: Sequence[int], rows: int, trials: int, epochs: int, grace: int,
                 reduction_factor: int, pruner: str = "asha",
                 startup_trials: int = TPE_STARTUP_TRIALS, sampler: str = "tpe") -> dict[str, Any]:  # fmt: skip
    """ASHA+TPE against random search per seed (see the module docstring); ``pruner``, ``startup_trials`` (the
    sampler's random start-up trials) and ``sampler`` vary the guided search for experiments."""
    make_pruner(pruner, grace, reduction_factor, epochs)  # a bad name fails before any training
    make_sampler(sampler, 0, startup_trials)
    if startup_trials < 0:
        raise ValueError(f"search: startup_trials must be >= 0, got {startup_trials}")
    per_seed = [search_seed(seed, rows, trials, epochs, grace, reduction_factor, pruner, startup_trials, sampler)
                for seed in seeds]  # fmt: skip
    return {"rows": rows, "trials": trials, "epochs": epochs, "grace_period": grace,
            "reduction_factor": reduction_factor, "pruner": pruner, "sampler": sampler,
            "guided": guided_name(pruner, sampler), "startup_trials": startup_trials,
            "seeds": per_seed,
            "mean_ratio": float(np.mean([s["ratio"] for s in per_seed])),
            "mean_unguided_ratio": float(np.mean([s["unguided_ratio"] for s in per_seed])),
            "mean_value_at_third": float(np.mean([s["value_at_third_over_target"] for s in per_seed])),
            "all_reached": all(s["reached"] for s in per_seed)}  # fmt: skip


def search_seed(seed: int, rows: int, trials: int, epochs: int, grace: int, reduction_factor: int,
                pruner: str = "asha", startup_trials: int = TPE_STARTUP_TRIALS,
                sampler: str = "tpe") -> dict[str, Any]:  # fmt: skip
    import optuna

    dists = search_space()
    base = apply_overrides(read_yaml(FINETUNE_TINY), [
        f"seed={seed}", f"task.max_rows={rows}", "task.test=", f"stages.0.max_epochs={epochs}",
        "schedule.early_stopping_patience=0",  # random trials run the full budget
    ])  # fmt: skip
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pbp-bench-tune-") as tmp:
        objective = FrozenHeadObjective(base, epochs, Path(tmp))
        rnd = run_search(objective, optuna.samplers.RandomSampler(seed=2 * seed), optuna.pruners.NopPruner(),
                         dists, lambda runs: len(runs) >= trials)  # fmt: skip
        budget = sum(t.epochs for t in rnd)

        def reached_or_spent(runs: list[TrialRun]) -> bool:
            return bool(runs) and (reach(runs, rnd).reached or sum(t.epochs for t in runs) >= budget)

        guided = run_search(objective, make_sampler(sampler, 2 * seed + 1, min(startup_trials, trials)),
                            make_pruner(pruner, grace, reduction_factor, epochs), dists, reached_or_spent)  # fmt: skip
        # The baseline: no guidance. The sampler's start-up draws come from RandomSampler(its seed), so this search
        # starts with the guided search's own first trials and then goes on drawing at random, at full budget.
        unguided = run_search(objective, optuna.samplers.RandomSampler(seed=2 * seed + 1),
                              optuna.pruners.NopPruner(), dists, reached_or_spent)  # fmt: skip
    r, u = reach(guided, rnd), reach(unguided, rnd)
    at_third = best_value(guided, within=budget / 3)
    return {"seed": seed, **asdict(r), "seconds": time.perf_counter() - t0,
            "unguided_ratio": u.ratio, "unguided_reached": u.reached,
            "guided_completed": sum(t.completed for t in guided[: r.trials]),
            "random_own_best_at": reach(rnd, rnd).ratio,  # where random search itself first had its best
            "value_at_third": at_third,
            "value_at_third_over_target": (at_third if at_third is not None else math.nan) / r.target}  # fmt: skip


# ---- (1) the overhead of a trial ----------------------------------------------------------------------------------


def require_stack() -> None:
    """Part (1) runs a real campaign: the local stack (or a configured cluster) must be up."""
    from pbp.stack.endpoints import resolve
    from pbp.stack.state import StackStateError

    ep = resolve()
    hint = "start it with `pbp stack up`, or leave this part out (--parts cache,search)"
    if ep.state_dir is None:
        if ep.mlflow_uri and ep.ray_address:  # a cluster configured through the environment
            return
        raise StackStateError(f"bench tune --parts overhead runs a real campaign and needs the local stack: {hint}")
    from pbp.stack.manager import status

    _, services = status(ep.state_dir)
    down = [f"{s.name} ({s.detail})" for s in services if not s.healthy]
    if down or not services:
        raise StackStateError(f"bench tune --parts overhead: the local stack in {ep.state_dir} is not healthy "
                              f"({', '.join(down) or 'no services'}): {hint}")  # fmt: skip


def bench_overhead(report_dir: Path) -> dict[str, Any]:
    """One trial of the tiny campaign, ASHA off: its wall time against the time in its training epochs; then the
    same campaign with Ray Train's own report poll (2 s) for the trial's run, against pbp's (``scaling.report_poll_s``)."""
    ours = _one_trial_campaign(report_dir, [])
    ray_default = _one_trial_campaign(report_dir, [f"scaling.report_poll_s={RAY_TRAIN_POLL_S}"])
    return {**ours, "ray_default_poll": ray_default, "poll_ratio": ray_default["trial_wall_s"] / ours["trial_wall_s"]}


RAY_TRAIN_POLL_S = 2.0
"""Ray Train's default controller poll (``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``)."""


def _one_trial_campaign(report_dir: Path, finetune_overrides: list[str]) -> dict[str, Any]:
    from pbp.tune.campaign import run_campaign
    from pbp.tune.config import TuneConfig

    name = f"bench-tune-{int(time.time() * 1000)}"
    cfg = load_config(TuneConfig, TUNE_TINY, [
        f"name={name}", "num_samples=1", "max_concurrent_trials=1", "asha.enabled=false",
        "storage_path=s3://pbp-runs/bench-tune", f"report_dir={report_dir}",
    ])  # fmt: skip
    cfg = replace(cfg, finetune_overrides=[*cfg.finetune_overrides, *finetune_overrides])
    t0 = time.perf_counter()
    result = run_campaign(cfg)
    campaign_s = time.perf_counter() - t0
    (trial,) = result.summary.trials
    if trial.status != "completed":
        raise RuntimeError(f"bench tune: the trial of campaign {name} ended {trial.status}")
    train_s = result.train_seconds.get(trial.trial_id, 0.0)
    if train_s <= 0:
        raise RuntimeError(f"bench tune: trial {trial.trial_id} reported no epoch_seconds")
    return {"campaign": name, "trial_wall_s": trial.seconds, "train_s": train_s,
            "campaign_wall_s": campaign_s, "ratio": trial.seconds / train_s,
            "campaign_over_train": campaign_s / train_s}  # fmt: skip
