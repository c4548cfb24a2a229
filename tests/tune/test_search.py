"""The searcher (no cluster needed): trials stopped early reach Optuna as PRUNED with their per-epoch values, finished
ones as COMPLETE; the space is checked against the fine-tuning config before anything starts."""

from __future__ import annotations

import pytest

from pbp.config import ConfigError, load_config
from pbp.tune.config import TuneConfig
from pbp.tune.search import base_finetune_dict, check_space, make_searcher, trial_finetune_config

from ..conftest import REPO


def _cfg(*overrides: str) -> TuneConfig:
    return load_config(TuneConfig, REPO / "configs/tune/tiny.yaml", list(overrides))


def test_asha_stopped_trials_are_pruned_and_finished_ones_complete():
    searcher = make_searcher(_cfg("num_samples=3"), "valid_spearman", "max")
    a, _b, _c = (searcher.suggest(t) for t in ("a", "b", "c"))
    assert set(a) == {"stages.0.lr", "stages.1.lr", "head_dropout"}
    for epoch, v in ((1, 0.1), (2, 0.2)):
        searcher.on_trial_result("a", {"valid_spearman": v, "epoch": epoch, "finished": 0})
    searcher.on_trial_result("a", {"valid_spearman": 0.3, "epoch": 2, "finished": 1})  # the final report
    searcher.on_trial_complete("a", {"valid_spearman": 0.3, "epoch": 2, "finished": 1})
    searcher.on_trial_result("b", {"valid_spearman": 0.9, "epoch": 1, "finished": 0})
    searcher.on_trial_complete("b", {"valid_spearman": 0.9, "epoch": 1, "finished": 0})  # stopped by ASHA
    searcher.on_trial_complete("c", None, error=True)
    trials = {t.number: t for t in searcher.study.trials}
    assert trials[0].state.name == "COMPLETE" and trials[0].value == 0.3 and trials[0].intermediate_values == {
        1: 0.1, 2: 0.2}  # fmt: skip
    # PRUNED, carrying its last intermediate value as Optuna does for pruned trials (TPE ranks it below complete ones)
    assert trials[1].state.name == "PRUNED" and trials[1].intermediate_values == {1: 0.9}
    assert trials[2].state.name == "FAIL"
    assert searcher.study.best_trial.number == 0  # a better low-budget value does not make a pruned trial best


def test_space_keys_and_ranges_are_checked_before_anything_starts():
    check_space(_cfg())
    with pytest.raises(ConfigError, match=r"space\.stages\.0\.lrr"):
        check_space(_cfg("space={stages.0.lrr: {type: uniform, low: 0.1, high: 0.2}}"))
    with pytest.raises(ConfigError, match=r"space\.head_dropout=1\.5"):
        check_space(_cfg("space={head_dropout: {type: uniform, low: 0.1, high: 1.5}}"))
    with pytest.raises(ConfigError, match=r"space\.stages\.7\.lr"):
        check_space(_cfg("space={stages.7.lr: {type: loguniform, low: 0.001, high: 0.1}}"))
    with pytest.raises(ConfigError, match="low must be > 0"):
        _cfg("space={stages.0.lr: {type: loguniform, low: 0.0, high: 0.1}}")
    with pytest.raises(ConfigError, match="name"):
        _cfg("name=a'b")


def test_a_space_reaches_stages_the_fine_tuning_config_leaves_at_their_defaults():
    # configs/finetune/stability.yaml lists no stages: the paper's schedule is its default
    cfg = _cfg(f"finetune={REPO / 'configs/finetune/stability.yaml'}", "finetune_overrides=[]")
    base = check_space(cfg)
    assert [s.name for s in base.stages] == ["frozen", "unfrozen", "final-1024"]
    trial = trial_finetune_config(base_finetune_dict(cfg), {"stages.0.lr": 0.05}, "t")
    assert trial.stages[0].lr == 0.05 and trial.stages[1:] == base.stages[1:]


def test_a_warm_start_from_another_space_names_each_difference():
    """It listed both spaces' keys, which were the same when only a range differed."""
    import optuna.distributions as od

    from pbp.tune.campaign import space_difference

    then = {"head_dropout": od.FloatDistribution(0.0, 0.6), "stages.1.lr": od.FloatDistribution(1e-4, 1e-2, log=True)}
    now = {"head_dropout": od.FloatDistribution(0.0, 0.3), "stages.0.lr": od.FloatDistribution(1e-3, 0.1, log=True)}
    text = space_difference(then, now)
    assert text.startswith("head_dropout: FloatDistribution(high=0.6, ") and "high=0.3, " in text
    assert "stages.0.lr: only here" in text and "stages.1.lr: only there" in text
    assert space_difference(now, now) == ""


def test_a_campaign_reads_every_config_file_before_it_connects(tmp_path, monkeypatch):
    """A submitted campaign runs in Ray's unpacked copy of the project, which Ray was seen to delete while the job
    ran: the linked fine-tuning config, read again after connecting to save it with the campaign, was then "not
    found". Here the connection takes the file away; the campaign saves what it read before."""
    import shutil

    import yaml

    from pbp.train import launch
    from pbp.tune import campaign

    monkeypatch.chdir(REPO)  # the tiny config's task files
    ft = tmp_path / "ft.yaml"
    shutil.copy(REPO / "configs/finetune/tiny.yaml", ft)
    tune = tmp_path / "tune.yaml"
    doc = yaml.safe_load((REPO / "configs/tune/tiny.yaml").read_text())
    doc.update(finetune=str(ft), name="reads-first", storage_path=str(tmp_path / "tune"))
    doc["finetune_overrides"] += ["tracking.enabled=false", f"checkpoint.storage_path={tmp_path / 'runs'}"]
    tune.write_text(yaml.safe_dump(doc))
    cfg = load_config(TuneConfig, tune)

    class Connected(Exception):  # noqa: N818 (a sentinel, not an error)
        pass

    monkeypatch.setattr(launch, "connect_ray", lambda address=None: ft.unlink())  # Ray takes the working dir away
    monkeypatch.setattr(launch, "alive_nodes", lambda: [])
    monkeypatch.setattr(launch, "require_room", lambda *a, **k: None)
    monkeypatch.setattr(launch, "git_commit", lambda: "x")

    def tracker(*a, **k):  # the first thing after the config is saved
        raise Connected

    monkeypatch.setattr("pbp.train.tracking.Tracker", tracker)
    with pytest.raises(Connected):
        campaign.run_campaign(cfg)
    saved = yaml.safe_load((tmp_path / "tune" / "reads-first" / campaign.BASE_FILE).read_text())
    assert saved["task"]["max_rows"] == 200 and not ft.exists()  # the file's content with the overrides, saved


def test_a_trial_waits_for_a_slot_as_long_as_the_campaign_may_run():
    """A trial's wait for room: slot_wait_s, else the campaign's time budget, else 24 h; Ray Train's tries stretch
    with it (a traceback per try: one a minute for hours would bury the campaign's lines)."""
    from pbp.train.launch import resource_wait

    cfg = load_config(TuneConfig, REPO / "configs/tune/tiny.yaml", [])
    assert cfg.trial_resource_wait() == 24 * 3600
    timed = load_config(TuneConfig, REPO / "configs/tune/tiny.yaml", ["stop.time_budget_s=1800"])
    assert timed.trial_resource_wait() == 1800
    set_ = load_config(TuneConfig, REPO / "configs/tune/tiny.yaml", ["stop.time_budget_s=1800", "slot_wait_s=120"])
    assert set_.trial_resource_wait() == 120
    for bad in ("-1", "0.5", ".inf", ".nan"):  # refused before anything is saved, as the trials' own check would
        with pytest.raises(ConfigError, match="slot_wait_s"):
            load_config(TuneConfig, REPO / "configs/tune/tiny.yaml", [f"slot_wait_s={bad}"])
    short = load_config(TuneConfig, REPO / "configs/tune/tiny.yaml", ["stop.time_budget_s=0.5"])
    assert short.trial_resource_wait() == 1  # what a trial's scaling.resource_wait_s accepts
    assert resource_wait(300) == (60, 5) and resource_wait(20) == (20, 1)  # a run's wait as before
    assert resource_wait(24 * 3600) == (8640, 10)
