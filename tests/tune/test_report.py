"""The campaign report: best trial, importances, the four images and the self-contained HTML page, JSON storage."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from pbp.tune.report import (
    CampaignSummary,
    TrialRecord,
    _parallel_axis,
    best_trial,
    param_importances,
    summary_from_json,
    summary_to_json,
    write_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IMAGES = ("history.png", "importances.png", "parallel.png", "curves.png")
EVIL = "<script>alert(1)</script>"


def _trial(number: int, status: str, value: float | None, lr: float, layers: int, act: str) -> TrialRecord:
    """A trial whose curve climbs towards its value; pruned trials stop after 2 epochs, failed ones after 1."""
    epochs = {"completed": 5, "pruned": 2, "failed": 1, "running": 3}[status]
    end = value if value is not None else 0.1
    curve = [(e, round(end * (e + 1) / epochs, 4)) for e in range(epochs)]
    params: dict[str, float | int | str] = {"optim.lr": lr, "model.layers": layers, "activation": act}
    held = None if status == "failed" else 50.0 * epochs  # a failed trial: never reported
    return TrialRecord(f"t{number:03d}", number, params, status, value, curve, 60.0 * epochs, held)


def _summary() -> CampaignSummary:
    # The objective grows with the learning rate; pruned trial 5 looks best but is not eligible.
    trials = [
        _trial(0, "completed", 0.41, 1e-5, 2, "gelu"),
        _trial(1, "completed", 0.62, 1e-4, 4, EVIL),
        _trial(2, "completed", 0.78, 1e-3, 2, "gelu"),
        _trial(3, "failed", None, 3e-2, 6, "relu"),
        _trial(4, "completed", 0.66, 3e-4, 6, EVIL),
        _trial(5, "pruned", 0.91, 2e-3, 4, "relu"),
        _trial(6, "completed", 0.45, 2e-5, 6, "relu"),
        _trial(7, "pruned", 0.30, 3e-5, 2, "gelu"),
    ]
    return CampaignSummary("lr-sweep", "valid_spearman", "max", trials)


def test_best_trial_is_the_best_completed_one_by_mode() -> None:
    summary = _summary()
    best = best_trial(summary)
    assert best is not None and best.number == 2  # not pruned trial 5 with 0.91
    summary.mode = "min"
    best = best_trial(summary)
    assert best is not None and best.number == 0  # not pruned trial 7 with 0.30
    assert best_trial(CampaignSummary("empty", "m", "max", [])) is None


def test_importances_sum_to_one_over_the_params_and_are_deterministic() -> None:
    importances = param_importances(_summary())
    assert set(importances) == {"optim.lr", "model.layers", "activation"}
    assert math.isclose(sum(importances.values()), 1.0)
    assert all(v >= 0 for v in importances.values())
    assert importances == param_importances(_summary())
    assert max(importances, key=importances.__getitem__) == "optim.lr"


def test_importances_empty_when_not_computable() -> None:
    summary = _summary()
    summary.trials = [t for t in summary.trials if t.status != "completed" or t.number == 2]
    assert param_importances(summary) == {}  # one completed trial
    flat = _summary()
    for t in flat.trials:
        t.value = 0.5
    assert param_importances(flat) == {}  # nothing to explain
    constant = _summary()
    for t in constant.trials:
        t.params = {"optim.lr": 1e-3, "activation": "gelu"}
    assert param_importances(constant) == {}


def test_parallel_axis_is_log_scaled_for_log_spread_floats_and_spaces_categories_evenly() -> None:
    lr = _parallel_axis("optim.lr", [1e-6, 1e-4, 1e-2, None])  # spans more than 2 decades
    assert lr.positions[:3] == pytest.approx([0.0, 0.5, 1.0])
    assert math.isnan(lr.positions[3])  # a trial without the parameter leaves a gap
    assert _parallel_axis("optim.lr", [1e-3, 5e-2, 1e-1]).positions[1] == pytest.approx(0.49 / 0.99)  # linear
    act = _parallel_axis("activation", ["relu", "gelu", "swish", "gelu"])
    assert act.positions == pytest.approx([0.5, 0.0, 1.0, 0.0])
    assert [label for _, label in act.ticks] == ["gelu", "relu", "swish"]


def _images_in(page: str) -> list[str]:
    return re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)


def test_write_report_writes_four_images_and_a_self_contained_escaped_page(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    figures_before = plt.get_fignums()
    report = write_report(_summary(), tmp_path / "report")
    assert report == tmp_path / "report" / "report.html"
    for name in IMAGES:
        data = (report.parent / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000, name
    assert plt.get_fignums() == figures_before  # no figure left open

    page = report.read_text(encoding="utf-8")
    assert len(_images_in(page)) == 4
    assert page.count("data:image/png;base64,") == 4
    assert "<script" not in page.lower() and "<link" not in page.lower()  # no JS, no external CSS
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    for number in range(8):
        assert f"<td class='num'>{number}</td>" in page
    assert "lr-sweep" in page and "valid_spearman" in page and "max" in page
    # its workers' time (without trial 3, which never reported), not the trials' wall times (1,800 s)
    assert "Total cost: 1450.0 s of trials holding their workers (0:24:10, 1 trial(s) that never reported not" in page
    assert "Trial <b>#2</b>" in page and "0.78" in page


@pytest.mark.parametrize("n_completed", [0, 1])
def test_write_report_with_too_few_completed_trials_says_importances_are_unavailable(
    tmp_path: Path, n_completed: int
) -> None:
    summary = _summary()
    completed = [t for t in summary.trials if t.status == "completed"][:n_completed]
    summary.trials = [t for t in summary.trials if t.status != "completed"] + completed
    (tmp_path / "importances.png").write_bytes(b"stale")
    page = write_report(summary, tmp_path).read_text(encoding="utf-8")
    assert "Parameter importances not available: fewer than 2 completed trials" in page
    assert not (tmp_path / "importances.png").exists()
    assert len(_images_in(page)) == 3
    assert ("No trial has completed yet" in page) == (n_completed == 0)


def test_write_report_of_an_empty_campaign(tmp_path: Path) -> None:
    page = write_report(CampaignSummary("empty", "valid_loss", "min", []), tmp_path).read_text(encoding="utf-8")
    assert "0 completed" in page and "not available" in page
    assert (tmp_path / "history.png").read_bytes().startswith(PNG_SIGNATURE)


def test_json_round_trip() -> None:
    summary = _summary()
    again = summary_from_json(summary_to_json(summary))
    assert again == summary
    assert isinstance(again.trials[0].curve[0], tuple)
    with pytest.raises(ValueError, match="colour"):
        summary_from_json(summary_to_json(summary).replace('"status"', '"colour"', 1))


def test_the_campaigns_closing_lines_count_trials_by_status_and_name_the_best_with_its_parameters(
    tmp_path: Path,
) -> None:
    from pbp.cli.finetune_cmds import campaign_lines

    summary = _summary()
    text = campaign_lines("lr-sweep", summary, best_trial(summary))
    assert text.splitlines() == [
        "campaign lr-sweep: 8 trials: 5 completed, 2 pruned, 1 failed",
        "best:    trial t002 valid_spearman=0.7800 with optim.lr=0.001, model.layers=2, activation=gelu",
    ]
    summary.baseline = 0.0  # the metric's trivial baseline, from a finished trial's report
    assert "valid_spearman=0.7800 (trivial baseline 0.0000) with" in campaign_lines("lr-sweep", summary,
                                                                                   best_trial(summary))  # fmt: skip
    assert "note:" not in campaign_lines("lr-sweep", summary, best_trial(summary))
    summary.baseline = 0.78  # no trial beat it: said, since the gate would refuse the model a user is told to register
    assert (
        campaign_lines("lr-sweep", summary, best_trial(summary))
        .splitlines()[-1]
        .startswith(
            "note:    no trial beat the trivial baseline: the best model predicts no better than a constant "
            "(valid_spearman 0.7800 against 0.7800)"
        )
    )
    summary.baseline = 0.0
    assert "(trivial baseline 0.0000)" in write_report(summary, tmp_path).read_text(encoding="utf-8")
    assert summary_from_json(summary_to_json(summary)) == summary
    assert campaign_lines("none", CampaignSummary("none", "valid_spearman", "max", []), None) == (
        "campaign none: 0 trials: 0 completed, 0 pruned, 0 failed"
    )


def test_a_campaign_that_stopped_early_says_why(tmp_path: Path) -> None:
    from dataclasses import replace

    from pbp.cli.finetune_cmds import campaign_lines
    from pbp.config import load_config
    from pbp.tune.config import TuneConfig
    from pbp.tune.progress import stop_reason

    from ..conftest import REPO

    summary = _summary()  # 8 trials, best completed value 0.78
    cfg = load_config(TuneConfig, REPO / "configs/tune/tiny.yaml", ["num_samples=8"])
    assert stop_reason(cfg, summary, 10.0) == ""  # it ran them all
    cfg = replace(cfg, num_samples=20)
    target = replace(cfg, stop=replace(cfg.stop, target=0.75, time_budget_s=60.0))
    assert stop_reason(target, summary, 60.0) == (
        "stopped after 8 of 20 trials: valid_spearman reached stop.target=0.75")  # fmt: skip
    budget = replace(cfg, stop=replace(cfg.stop, target=0.99, time_budget_s=60.0))
    assert stop_reason(budget, summary, 59.0).endswith(": stop.time_budget_s=60 spent (running trials were stopped)")
    patience = replace(cfg, stop=replace(cfg.stop, patience_trials=3))
    assert stop_reason(patience, summary, 5.0).endswith(
        ": 3 finished trials in a row without a new best (stop.patience_trials)")  # fmt: skip
    summary.stopped = stop_reason(budget, summary, 59.0)
    assert campaign_lines("lr-sweep", summary, best_trial(summary)).splitlines()[1] == f"why:     {summary.stopped}"
    assert "Stopped after 8 of 20 trials" in write_report(summary, tmp_path).read_text(encoding="utf-8")
    assert summary_from_json(summary_to_json(summary)) == summary


def test_a_trials_cost_is_the_time_its_workers_were_held_over_every_attempt_not_its_wait_for_a_slot() -> None:
    """Tune's time_total_s counts a queued trial's wait for a free slot (hours behind busy siblings): the ledger
    charged it as CPU-seconds. The cost is each attempt's last worker_seconds (a retry restarts the count), summed;
    a trial that never reported is not measured (Tune has no time for it either: it was charged 0 as if measured)."""
    from types import SimpleNamespace

    import pandas as pd

    from pbp.config import load_config
    from pbp.tune.campaign import summarize, worker_seconds
    from pbp.tune.config import TuneConfig

    from ..conftest import REPO

    df = pd.DataFrame({"epoch": [1, 2, 2, 3], "valid_spearman": [0.1, 0.2, 0.2, 0.3], "finished": [0, 0, 0, 1],
                       "worker_started_at": [100.0, 100.0, 500.0, 500.0],
                       "worker_seconds": [10.0, 20.0, 5.0, 30.0]})  # fmt: skip
    assert worker_seconds(df) == 50.0  # the second attempt's first report (5 s) is no continuation of the first
    old = df.assign(worker_seconds=[float("nan"), float("nan"), 5.0, 30.0])  # a resumed campaign of an older pbp
    assert worker_seconds(old) is None and worker_seconds(df.drop(columns="worker_seconds")) is None

    def result(trial_id: str, frame, error=None):
        last = frame.iloc[-1].to_dict() if frame is not None and len(frame) else {}
        return SimpleNamespace(metrics={**last, "trial_id": trial_id, "time_total_s": 3600.0} if last else
                               {"trial_id": trial_id}, metrics_dataframe=frame, error=error, config={},
                               path=f"/x/{trial_id}")  # fmt: skip

    cfg = load_config(TuneConfig, REPO / "configs/tune/tiny.yaml")
    grid = [result("queued", df), result("crashed", None, RuntimeError("died in its first epoch"))]
    queued, crashed = summarize(grid, cfg, "valid_spearman", "max").trials
    assert (queued.status, queued.seconds, queued.worker_seconds) == ("completed", 3600.0, 50.0)
    assert (crashed.status, crashed.seconds, crashed.worker_seconds) == ("failed", 0.0, None)
