"""``pbp bench tune``'s search-efficiency arithmetic (pure functions of trial records; no training)."""

from __future__ import annotations

import math

import pytest

from pbp.bench.tune import Reach, TrialRun, best_value, reach


def done(value: float, epochs: int = 4) -> TrialRun:
    return TrialRun(value, epochs, completed=True)


def pruned(value: float, epochs: int = 1) -> TrialRun:
    return TrialRun(value, epochs, completed=False)


RANDOM = [done(0.2), done(0.5), done(0.3)]  # 3 trials x 4 epochs: best 0.5, compute 12


def test_reach_counts_every_epoch_until_the_first_completed_trial_at_randoms_best():
    # A pruned trial's higher intermediate value does not count; the epochs it spent do.
    guided = [pruned(0.9), done(0.4), pruned(0.1, 2), done(0.5), done(0.7)]
    assert reach(guided, RANDOM) == Reach(target=0.5, reached=True, compute=1 + 4 + 2 + 4, trials=4,
                                          random_compute=12, ratio=11 / 12)  # fmt: skip


def test_not_reached_reports_all_the_compute_spent():
    guided = [done(0.49), pruned(0.6, 3), done(0.1)]
    r = reach(guided, RANDOM)
    assert (r.reached, r.compute, r.trials, r.ratio) == (False, 11, 3, 11 / 12)


def test_reach_of_random_on_itself_is_where_it_first_had_its_best():
    assert reach(RANDOM, RANDOM).ratio == 8 / 12
    assert reach([done(0.5, 12)], [done(0.5, 12)]).ratio == 1.0  # equal to the target counts as reached


def test_mode_min_and_non_finite_values():
    random = [done(2.0), done(1.0), done(math.nan)]
    r = reach([done(math.nan), done(1.5), done(0.9)], random, mode="min")
    assert (r.target, r.reached, r.compute) == (1.0, True, 12)


def test_random_without_a_completed_finite_trial_is_an_error():
    with pytest.raises(ValueError, match="no completed trial"):
        reach([done(0.1)], [pruned(0.3), done(math.nan)])


def test_best_value_within_a_compute_budget():
    runs = [pruned(0.9), done(0.4), done(0.6), done(0.5)]  # trials end at 1, 5, 9, 13 trial-epochs
    assert best_value(runs, within=4) is None
    assert best_value(runs, within=5) == 0.4
    assert best_value(runs, within=12.9) == 0.6
    assert best_value(runs) == 0.6
    assert best_value(runs, mode="min") == 0.4


def test_the_guided_searchs_pruner_by_name():
    import optuna

    from pbp.bench.tune import bench_search, make_pruner

    assert isinstance(make_pruner("asha", 2, 2, 12), optuna.pruners.SuccessiveHalvingPruner)
    assert isinstance(make_pruner("hyperband", 1, 3, 12), optuna.pruners.HyperbandPruner)
    assert isinstance(make_pruner("none", 2, 2, 12), optuna.pruners.NopPruner)
    # A bad choice fails naming it, before a body is built or a trial trained.
    with pytest.raises(ValueError, match="unknown pruner 'median'"):
        bench_search([0], rows=10, trials=2, epochs=2, grace=1, reduction_factor=2, pruner="median")
    with pytest.raises(ValueError, match="startup_trials must be >= 0"):
        bench_search([0], rows=10, trials=2, epochs=2, grace=1, reduction_factor=2, startup_trials=-1)
    with pytest.raises(ValueError, match="unknown sampler 'cmaes'"):
        bench_search([0], rows=10, trials=2, epochs=2, grace=1, reduction_factor=2, sampler="cmaes")


def test_bench_tune_refuses_a_bad_search_option_before_any_part_runs(capsys):
    from pbp.cli.main import main

    # overhead would need the stack and cache would train for minutes: both come first, neither may run.
    assert main(["bench", "tune", "--startup-trials", "-1"]) == 2
    assert "--startup-trials must be >= 0, got -1" in capsys.readouterr().err


@pytest.mark.parametrize(("pruner", "sampler", "name"), [("asha", "tpe", "ASHA+TPE"), ("hyperband", "tpe", "Hyperband+TPE"),
                                                     ("none", "tpe", "TPE"), ("none", "gp", "GP")])  # fmt: skip
def test_the_search_rows_name_the_guided_search_that_ran(capsys, pruner, sampler, name):
    from pbp.bench.tune import Reach, guided_name
    from pbp.cli.bench_cmds import _print_search

    seed = {
        "seed": 0,
        **Reach(0.3, True, 60, 9, 240, 0.25).__dict__,
        "guided_completed": 2,
        "random_own_best_at": 0.5,
        "seconds": 1.0,
        "value_at_third": 0.31,
        "value_at_third_over_target": 1.03,
        "unguided_ratio": 1.01,
        "unguided_reached": False,
    }
    _print_search({"trials": 20, "epochs": 12, "rows": 2000, "pruner": pruner, "sampler": sampler, "guided": guided_name(pruner, sampler),
                   "grace_period": 2, "reduction_factor": 2, "startup_trials": 4, "seeds": [seed],
                   "mean_ratio": 0.25, "mean_unguided_ratio": 1.01, "mean_value_at_third": 1.03,
                   "all_reached": True})  # fmt: skip
    out = capsys.readouterr().out
    assert f"seed 0: {name} trial-epochs to random's best" in out
    assert pruner == "asha" or "ASHA" not in out
    assert f"sampler {sampler.upper()} with 4 random start-up trials" in out
    assert "baseline, random search from the same start-up draws: the same ratio   1.010   not reached" in out
    assert "mean of 1 seeds: the baseline's (no guidance)" in out


@pytest.mark.parametrize("sampler", ["tpe", "gp"])
def test_the_unguided_baseline_starts_with_the_guided_searchs_start_up_draws(sampler):
    """The baseline's RandomSampler(seed) replays the guided sampler's (seed) random start-up trials, then differs."""
    import optuna

    from pbp.bench.tune import make_sampler
    from pbp.tune.config import ParamSpec
    from pbp.tune.search import distributions

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = distributions({"lr": ParamSpec("loguniform", low=1e-5, high=1.0),
                           "p": ParamSpec("uniform", low=0.0, high=0.9)})  # fmt: skip

    def draws(sampler, n: int) -> list[dict]:
        study = optuna.create_study(direction="maximize", sampler=sampler)
        out = []
        for _ in range(n):
            t = study.ask(dists)
            study.tell(t, -abs(math.log10(t.params["lr"]) + 2) - t.params["p"])
            out.append(t.params)
        return out

    guided = draws(make_sampler(sampler, 7, 4), 8)
    unguided = draws(optuna.samplers.RandomSampler(seed=7), 8)
    assert guided[:4] == unguided[:4]
    assert guided[4:] != unguided[4:]


def test_the_cache_build_on_two_ranks_is_timed_against_one_and_gives_the_same_features():
    from pbp.bench.tune import bench_cache_ranks

    r = bench_cache_ranks(rows=24, ranks=2, repeats=1)
    assert r["features_max_abs_diff"] == 0.0 and r["ranks"] == 2
    assert r["one_rank_s"] > 0 and r["ranks_s"] > 0 and r["ratio"] == r["ranks_s"] / r["one_rank_s"]


def test_one_seed_of_the_search_part_measures_the_guided_search_and_the_unguided_baseline():
    from pbp.bench.tune import search_seed

    r = search_seed(0, rows=48, trials=3, epochs=2, grace=1, reduction_factor=2)
    assert r["random_compute"] == 3 * 2
    for ratio, reached in ((r["ratio"], r["reached"]), (r["unguided_ratio"], r["unguided_reached"])):
        assert 0 < ratio <= 1 + 2 / 6  # it stops once it reached or spent random's compute (one trial may overrun)
        assert ratio <= 1 if reached else ratio >= 1


def test_search_seeds_are_a_list_or_ranges_and_a_bad_one_is_named():
    from pbp.cli.bench_cmds import parse_seeds

    assert parse_seeds("0,1,2") == [0, 1, 2]
    assert parse_seeds("0-4, 9") == [0, 1, 2, 3, 4, 9] and parse_seeds("0,1,") == [0, 1]
    for bad in ("0,x", "3-", "", "5-2"):
        with pytest.raises(ValueError, match="--seeds"):
            parse_seeds(bad)


def test_the_gradient_exchange_is_timed_bucketed_against_per_tensor():
    from pbp.bench.tune import bench_gradient_exchange

    r = bench_gradient_exchange("configs/model/tiny.yaml", ranks=2, steps=1, repeats=1)
    assert r["tensors"] > 10 and r["elements"] > 0
    assert r["per_tensor"] > 0 and r["bucketed"] > 0 and r["ratio"] == r["bucketed"] / r["per_tensor"]
