"""`pbp demo`: the generated task and the config (no stack), then the whole pipeline at its smallest on the local
stack; a failing step stops the demo with its log's tail. A second run reuses the stack, dataset, pretraining run and
campaign, and is faster (`slow`: it runs the demo twice)."""

from __future__ import annotations

import csv
import re
import time

import pytest

from pbp.config import load_config
from pbp.data.synth import SynthConfig
from pbp.demo.pipeline import Demo, DemoConfig, DemoStepError, run_demo
from pbp.demo.task import CHARGED, make_task
from pbp.stack.state import StackState

from .conftest import REPO
from .promql import panels_without_data


def test_the_generated_task_is_binary_split_and_reproducible(tmp_path):
    a = make_task(tmp_path / "a", SynthConfig(n_proteins=600))
    b = make_task(tmp_path / "b", SynthConfig(n_proteins=600))
    ids = {}
    for split, path in a.items():
        rows = list(csv.DictReader(path.open()))
        assert rows and {r["label"] for r in rows} == {"0", "1"} and all(len(r["seq"]) <= 254 for r in rows)
        assert path.read_bytes() == b[split].read_bytes()
        ids[split] = {r["id"] for r in rows}
    assert not (ids["train"] & ids["test"]) and not (ids["train"] & ids["valid"])
    charged = {k: [sum(c in CHARGED for c in r["seq"]) / len(r["seq"]) for r in csv.DictReader(a["train"].open())
                   if r["label"] == k] for k in ("0", "1")}  # fmt: skip
    assert min(map(len, charged.values())) > 50
    assert sum(charged["1"]) / len(charged["1"]) > sum(charged["0"]) / len(charged["0"]) + 0.1  # the signal is there


def test_demo_config_is_checked_before_anything_runs():
    for bad in (["trials=0"], ["trial_epochs=[1, 1]"], ["name=a b"], ["proteins=-5"]):
        with pytest.raises(ValueError):
            load_config(DemoConfig, REPO / "configs/demo/small.yaml", bad)


def test_an_in_process_step_that_fails_stops_the_demo_naming_the_step_with_its_traceback_in_its_log(tmp_path):
    """Steps such as register and promote run in-process: their failure was a bare traceback, not a step error."""
    cfg = load_config(DemoConfig, REPO / "configs/demo/small.yaml", [f"out={tmp_path / 'demo'}"])
    lines: list[str] = []
    demo = Demo(cfg, echo=lines.append)
    demo.step("task", lambda: "made")
    log = tmp_path / "demo" / "logs" / "register.log"
    log.parent.mkdir(parents=True)
    log.write_text("$ pbp registry ...\nthe command's own output\n")  # a step may run a command, then fail

    def broken() -> str:
        raise KeyError("best_trial")

    with pytest.raises(DemoStepError, match=r"demo step 'register' failed: KeyError: 'best_trial'") as e:
        demo.step("register", broken)
    assert str(log) in str(e.value) and "in broken" in log.read_text()
    assert log.read_text().startswith("$ pbp registry ...\nthe command's own output\n")  # kept, not overwritten
    assert [s.name for s in demo.steps] == ["task"]  # the failed step is not summarised as done


def test_a_changed_setting_names_a_new_campaign_and_pretraining_steps_continue_the_same_run():
    """`pbp demo trials=6` resumed the 4-trial campaign of the first run by its name and reported it as 6 trials."""
    base = load_config(DemoConfig, REPO / "configs/demo/default.yaml")
    assert (base.pretrain_run, base.data_key) == ("demo-pretrain-p2000-g20", "p2000-g20")
    assert re.fullmatch(r"demo-campaign-[0-9a-f]{8}", base.campaign_name)
    assert load_config(DemoConfig, REPO / "configs/demo/default.yaml").campaign_name == base.campaign_name
    for change in ("trials=6", "trial_epochs=[1, 2, 1]", "task_max_rows=50", "pretrain_steps=400", "proteins=3000"):
        other = load_config(DemoConfig, REPO / "configs/demo/default.yaml", [change])
        assert other.campaign_name != base.campaign_name, change
    more_steps = load_config(DemoConfig, REPO / "configs/demo/default.yaml", ["pretrain_steps=400"])
    assert more_steps.pretrain_run == base.pretrain_run  # more steps continue the same pretraining run
    bigger = load_config(DemoConfig, REPO / "configs/demo/default.yaml", ["proteins=3000"])
    assert bigger.pretrain_run == "demo-pretrain-p3000-g20"  # another corpus: another run


def _first_run(tmp_path, monkeypatch, lines: list[str]):
    monkeypatch.chdir(REPO)  # the configs' relative paths, as `make demo` runs it
    cfg = load_config(DemoConfig, REPO / "configs/demo/small.yaml", [f"out={tmp_path / 'demo'}",
                                                                      f"name=demo-{tmp_path.name[-6:]}"])  # fmt: skip
    first = run_demo(cfg, echo=lines.append)
    names = [s.name for s in first.steps]
    assert names == ["stack", "corpus", "shards", "pretrain", "task", "campaign", "register", "promote", "predict",
                     "attention"]  # fmt: skip
    return cfg, first


def test_demo_end_to_end_and_a_failing_step(stack_env, tmp_path, monkeypatch):
    lines: list[str] = []
    t0 = time.time()
    cfg, first = _first_run(tmp_path, monkeypatch, lines)
    fig = {s.name: s.figure for s in first.steps}
    assert fig["shards"].startswith("built") and "@champion = version 1" in fig["promote"]
    assert "right (majority class:" in fig["predict"] and "(trivial baseline 0.500)" in fig["campaign"]
    out = tmp_path / "demo"
    assert (out / "attention.png").read_bytes()[:4] == b"\x89PNG" and (out / "predictions.csv").is_file()
    text = first.render()
    assert "MLflow UI" in text and "Ray dashboard" in text and "report.html" in text
    assert any("pretrain" in x for x in lines)  # progress on the terminal
    # Every panel of every Grafana dashboard has data in the stack's Prometheus after this real pretraining run and
    # campaign (pbp's metrics go through Ray's metrics agents, which Prometheus scrapes).
    prom = StackState.load(stack_env).prometheus_url
    assert prom and f"Prometheus {prom}" in " ".join(text.split())
    assert not panels_without_data(prom, t0), panels_without_data(prom, t0, wait_s=0)

    with pytest.raises(DemoStepError) as e:
        Demo(cfg, echo=lines.append).pbp("broken", "data", "inspect", "s3://pbp-data/no-such-dataset/")
    msg = str(e.value)
    assert "demo step 'broken' failed" in msg and "broken.log" in msg and "no-such-dataset" in msg


@pytest.mark.slow
def test_a_second_demo_run_reuses_everything_and_is_faster(stack_env, tmp_path, monkeypatch):
    lines: list[str] = []
    cfg, first = _first_run(tmp_path, monkeypatch, lines)
    second = run_demo(cfg, echo=lines.append)
    fig2 = {s.name: s.figure for s in second.steps}
    assert fig2["shards"].startswith("reused") and "reused" in fig2["stack"]
    # the same pretraining run, campaign and model: no Ray Train run started, no second registered copy, no
    # promotion of a version over itself
    assert all(fig2[k].startswith("reused") for k in ("pretrain", "campaign", "register", "promote")), fig2
    assert fig2["register"].endswith(f"models:/{cfg.name}/1") and fig2["promote"] == "reused: @champion is version 1"
    assert sum(s.seconds for s in second.steps) < sum(s.seconds for s in first.steps)
