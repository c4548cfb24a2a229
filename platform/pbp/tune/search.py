"""The search: the space as Optuna distributions, checked against the fine-tuning config, and a TPE searcher that
records trials stopped early by ASHA as PRUNED.

Ray's ``OptunaSearch`` tells Optuna that a trial ASHA stopped is COMPLETE with the value of its last (low-budget)
epoch, so TPE ranks a setting that had 1 epoch beside ones that had 40: it misleads the sampler. pbp's searcher
reports every epoch's value as an intermediate value (step = epoch) and tells Optuna the trial was PRUNED unless
its fine-tuning reported ``finished``. TPE then treats a pruned trial as worse than every complete one and orders
pruned trials among themselves by the budget they reached and their last value (Optuna's own rule for pruned
trials), which is the comparable signal. The study records them as PRUNED (tested).
"""

from __future__ import annotations

import copy
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from pbp.config import ConfigError, from_dict, read_yaml, set_dotted
from pbp.finetune.config import FinetuneConfig
from pbp.tune.config import TPE_STARTUP_TRIALS, ParamSpec, TuneConfig

FINISHED = "finished"
EPOCH = "epoch"


def distributions(space: dict[str, ParamSpec]) -> dict[str, Any]:
    import optuna.distributions as od

    out: dict[str, Any] = {}
    for key, p in space.items():
        if p.type == "loguniform":
            out[key] = od.FloatDistribution(p.low, p.high, log=True)
        elif p.type == "uniform":
            out[key] = od.FloatDistribution(p.low, p.high)
        elif p.type == "int":
            out[key] = od.IntDistribution(int(p.low), int(p.high), log=p.log)
        else:
            out[key] = od.CategoricalDistribution(list(p.values))
    return out


def base_finetune_dict(cfg: TuneConfig) -> dict[str, Any]:
    from pbp.config import apply_overrides

    base = read_yaml(cfg.finetune)
    try:
        return apply_overrides(base, cfg.finetune_overrides, FinetuneConfig)
    except ConfigError as e:  # say where the override came from: the campaign's list (or a finetune.KEY=VALUE)
        raise ConfigError(f"finetune_overrides (applied to {cfg.finetune}): {e}") from None


def trial_finetune_config(
    base: dict[str, Any], params: dict[str, Any], run_name: str, storage_path: str = ""
) -> FinetuneConfig:
    """The base fine-tuning config with a trial's sampled values, its run name and (in a campaign) its storage."""
    data = copy.deepcopy(base)
    for key, value in params.items():
        set_dotted(data, key.split("."), value, f"space.{key}", FinetuneConfig)
    data["run_name"] = run_name
    if storage_path:
        data.setdefault("checkpoint", {})["storage_path"] = storage_path
    return from_dict(FinetuneConfig, data)


def check_space(cfg: TuneConfig, base: dict[str, Any] | None = None) -> FinetuneConfig:
    """Every space key, at each end of its range, must give a valid fine-tuning config. -> the base config.
    ``base``: :func:`base_finetune_dict` of ``cfg`` if already read."""
    base = base if base is not None else base_finetune_dict(cfg)
    try:
        base_cfg = from_dict(FinetuneConfig, base)
    except ConfigError as e:
        raise ConfigError(f"{cfg.finetune}: {e}") from None
    for key, spec in cfg.space.items():
        for value in spec.end_points():
            try:
                trial_finetune_config(base, {key: value}, "space-check")
            except ConfigError as e:
                raise ConfigError(
                    f"space.{key}={value!r} does not fit the fine-tuning config {cfg.finetune}: {e}"
                ) from None
    return base_cfg


class PruneAwareOptunaSearch(OptunaSearch):
    """Ray's OptunaSearch, but epochs are intermediate values and an early-stopped trial is PRUNED."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._completed_trials or self.metric not in result or EPOCH not in result:
            return
        if result.get(FINISHED):  # the final report repeats the last epoch's step; its value goes to tell()
            return
        self._ot_trials[trial_id].report(float(result[self.metric]), int(result[EPOCH]))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        study: Any = self._ot_study
        value = (result or {}).get(self.metric)
        if error or value is None:
            study.tell(ot_trial, None, state=TrialState.FAIL)
        elif (result or {}).get(FINISHED):
            study.tell(ot_trial, float(value), state=TrialState.COMPLETE)
        else:  # stopped early (ASHA or a campaign stop): its value is at a lower budget
            study.tell(ot_trial, None, state=TrialState.PRUNED)
        self._completed_trials.add(trial_id)

    @property
    def study(self) -> optuna.Study:
        assert self._ot_study is not None, "the searcher's study is set up at construction (space, metric, mode)"
        return self._ot_study


def make_searcher(cfg: TuneConfig, metric: str, mode: str) -> PruneAwareOptunaSearch:
    """A seeded TPE searcher (``constant_liar`` when trials run in parallel) that records ASHA stops as PRUNED."""
    sampler = optuna.samplers.TPESampler(
        seed=cfg.seed,
        constant_liar=cfg.max_concurrent_trials > 1,
        n_startup_trials=min(TPE_STARTUP_TRIALS, cfg.num_samples),
    )
    return PruneAwareOptunaSearch(
        space=distributions(cfg.space), metric=metric, mode=mode, sampler=sampler, study_name=cfg.name
    )
