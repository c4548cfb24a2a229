import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from pbp.config import ConfigError, apply_overrides, dump_yaml, load_config, read_yaml
from pbp.model import ModelConfig
from pbp.model.pretraining import CorruptionConfig

from .conftest import REPO


def test_every_shipped_yaml_loads():
    from pbp.demo.pipeline import DemoConfig
    from pbp.finetune.config import FinetuneConfig
    from pbp.train.config import PretrainConfig
    from pbp.tune.config import TuneConfig

    paths = sorted((REPO / "configs").rglob("*.yaml"))
    assert paths, "no configs shipped"
    kinds = {"model": ModelConfig, "pretrain": PretrainConfig, "finetune": FinetuneConfig, "tune": TuneConfig,
             "demo": DemoConfig}  # fmt: skip
    for p in paths:
        assert p.parent.name in kinds, f"{p}: no config class for configs/{p.parent.name}/"
        cfg = load_config(kinds[p.parent.name], p)
        read_yaml(p)
        assert cfg is not None
    assert {p.stem for p in (REPO / "configs/pretrain").glob("*.yaml")} >= {"tiny", "base", "zero0", "zero1",
                                                                             "zero2", "zero3"}  # fmt: skip


def test_base_yaml_is_the_paper_model():
    assert load_config(ModelConfig, REPO / "configs/model/base.yaml") == ModelConfig()


@dataclass
class Optim:
    lr: float = 1e-3
    name: Literal["adamw", "lamb"] = "adamw"


@dataclass
class Job:
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: Optim = field(default_factory=Optim)
    seq_lens: tuple[int, ...] = (128, 512)
    note: str | None = None


def test_dotted_overrides_reach_nested_fields(tmp_path):
    p = tmp_path / "job.yaml"
    p.write_text("model:\n  n_blocks: 2\noptim:\n  lr: 0.1\n")
    cfg = load_config(Job, p, ["optim.lr=1e-4", "model.padding_mask=false", "seq_lens=[128, 1024]", "note=hi"])
    assert cfg.optim.lr == pytest.approx(1e-4)  # YAML 1.1 reads 1e-4 as a string; accepted for floats
    assert cfg.model.n_blocks == 2 and cfg.model.padding_mask is False
    assert cfg.seq_lens == (128, 1024) and cfg.note == "hi"


def test_unknown_key_in_file_fails_naming_file_and_key(tmp_path):
    p = tmp_path / "job.yaml"
    p.write_text("model:\n  n_blockz: 2\n")
    with pytest.raises(ConfigError, match=r"job.yaml: unknown key 'model.n_blockz'"):
        load_config(Job, p)


def test_unknown_override_fails_naming_key():
    with pytest.raises(ConfigError, match=r"unknown key 'optim.learning_rate'"):
        load_config(Job, None, ["optim.learning_rate=3"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.n_blocks=two", "model.n_blocks: expected an integer"),
        ("model.padding_mask=1", "model.padding_mask: expected true/false"),
        ("optim.name=sgd", r"optim.name: 'sgd' is not one of \['adamw', 'lamb'\]"),
        ("optim.lr=fast", "optim.lr: expected a number"),
        ("model.d_global=130", "divisible by model.n_heads"),
        ("optim", "not key=value"),
    ],
)
def test_bad_values_fail_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Job, None, [override])


def test_override_into_a_value_is_refused():
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"a": 1}, ["a.b=2"])


def test_a_section_may_name_a_yaml_file_and_overrides_reach_into_it(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # paths in configs are relative to the working directory (the project's root)
    tiny = load_config(ModelConfig, "configs/model/tiny.yaml")
    assert load_config(Job, None, ["model=configs/model/tiny.yaml"]).model == tiny
    cfg = load_config(Job, None, ["model=configs/model/tiny.yaml", "model.n_blocks=3"])
    assert cfg.model.n_blocks == 3 and cfg.model.d_local == tiny.d_local
    # a job config's own section of the same name: "the model of that run"
    assert load_config(Job, None, ["model=configs/pretrain/tiny.yaml"]).model.d_global == tiny.d_global
    p = tmp_path / "job.yaml"
    p.write_text("model: configs/model/tiny.yaml\n")
    assert load_config(Job, p).model == tiny
    with pytest.raises(ConfigError, match=r"model: configs/nope\.yaml: config file not found"):
        load_config(Job, None, ["model=configs/nope.yaml"])
    with pytest.raises(ConfigError, match=r"model=configs/tune/tiny\.yaml: unknown key 'model\.name'"):
        load_config(Job, None, ["model=configs/tune/tiny.yaml"])
    with pytest.raises(ConfigError, match=r"model: expected a mapping for ModelConfig \(or a YAML file of one\)"):
        load_config(Job, None, ["model=tiny"])


@dataclass
class Stage:
    name: str
    lr: float = 1e-3


@dataclass
class Staged:
    stages: list[Stage] = field(default_factory=lambda: [Stage("frozen"), Stage("unfrozen", 1e-4)])
    model: ModelConfig | None = None


def test_an_override_indexes_a_default_list_the_file_leaves_out(tmp_path):
    p = tmp_path / "job.yaml"
    p.write_text("model: {n_blocks: 2}\n")
    cfg = load_config(Staged, p, ["stages.1.lr=0.5"])
    assert cfg.stages == [Stage("frozen"), Stage("unfrozen", 0.5)]  # the default list, copied in, then changed
    p.write_text("stages: [{name: only}]\n")  # a list the file has is the file's, not the default's
    with pytest.raises(ConfigError, match="'1' is not an index of the 1-item list 'stages'"):
        load_config(Staged, p, ["stages.1.lr=0.5"])
    with pytest.raises(ConfigError, match="'2' is not an index of the 2-item list 'stages'"):
        load_config(Staged, None, ["stages.2.lr=0.5"])
    assert load_config(Staged, None, ["model.n_blocks=3"]).model.n_blocks == 3  # an optional section with no default


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Job, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(Job, bad)


def test_dump_roundtrip(tmp_path):
    cfg = load_config(Job, None, ["model.n_blocks=3"])
    p = tmp_path / "resolved.yaml"
    p.write_text(dump_yaml(cfg))
    assert load_config(Job, p) == cfg


def test_corruption_rates_are_checked():
    with pytest.raises(ConfigError, match="p_token_noise must be a probability"):
        load_config(CorruptionConfig, None, ["p_token_noise=1.5"])


@pytest.mark.parametrize(
    "override",
    ["checkpoint.every_steps=0", "tracking.log_every=0", "checkpoint.keep_last=0", "optim.lr=nan", "optim.lr=inf",
     "optim.lr=0", "scaling.num_workers=0", "optim.eps=0", "optim.betas=[0.9, 1.5]", "optim.min_lr=1",
     "optim.warmup_steps=-1", "optim.grad_clip=-1", "deepspeed.gradient_accumulation_steps=0", "max_steps=0",
     "data.num_workers=-1", "loss.annotation_loss_weight=nan", "seed=-1", "scaling.cpus_per_worker=0",
     "scaling.resource_wait_s=0"],
)  # fmt: skip
def test_every_numeric_pretraining_field_is_range_checked_at_load_naming_the_key(override):
    """Before: every_steps=0 and log_every=0 started Ray workers and died there with ZeroDivisionError."""
    from pbp.train.config import PretrainConfig

    key = override.split("=")[0].split(".")[-1]
    with pytest.raises(ValueError, match=re.escape(key)):
        load_config(PretrainConfig, REPO / "configs/pretrain/tiny.yaml", [override])


def test_a_bad_pretraining_value_fails_the_command_in_seconds_before_ray():
    import subprocess
    import sys
    import time

    t0 = time.monotonic()
    res = subprocess.run([str(Path(sys.executable).with_name("pbp")), "pretrain", "--config",
                          "configs/pretrain/tiny.yaml", "checkpoint.every_steps=0"], cwd=REPO, capture_output=True,
                         text=True, timeout=120, env={**os.environ, "PBP_STACK_DIR": "/nonexistent"})  # fmt: skip
    assert res.returncode == 2 and "checkpoint.every_steps must be a finite number >= 1, got 0" in res.stderr
    assert "Ray" not in res.stderr and time.monotonic() - t0 < 60


def test_an_empty_value_of_a_string_field_is_the_empty_string():
    """`task.valid=` or `task.valid=null` is how a user leaves an optional path out; it was 'expected a string'."""
    from pbp.finetune.config import FinetuneConfig

    for override in ("task.valid=", "task.valid=null", "task.valid=~"):
        cfg = load_config(FinetuneConfig, REPO / "configs/finetune/tiny.yaml", [override])
        assert cfg.task.valid == "", override
    with pytest.raises(ValueError, match="task.train is empty"):
        load_config(FinetuneConfig, REPO / "configs/finetune/tiny.yaml", ["task.train="])
    with pytest.raises(ConfigError, match="run_name: '' is not a valid name"):
        load_config(FinetuneConfig, REPO / "configs/finetune/tiny.yaml", ["run_name=null"])


def test_a_string_field_takes_an_overrides_text_and_a_files_unquoted_yes_is_explained(tmp_path):
    """`task.positive_label=yes` was YAML's True: 'expected a string, got True'."""
    from pbp.finetune.config import FinetuneConfig

    cfg = load_config(FinetuneConfig, REPO / "configs/finetune/tiny.yaml",
                      ["task.kind=binary", "task.positive_label=yes", "run_name=2024", "stages.0.name=1e3",
                       "task.label_column=on", "tracking.enabled=false", "stages.0.lr=1e-3"])  # fmt: skip
    assert (cfg.task.positive_label, cfg.run_name, cfg.stages[0].name, cfg.task.label_column) == ("yes", "2024", "1e3",
                                                                                                  "on")  # fmt: skip
    assert cfg.tracking.enabled is False and cfg.stages[0].lr == pytest.approx(1e-3)  # other types still parsed
    p = tmp_path / "ft.yaml"
    text = (REPO / "configs/finetune/tiny.yaml").read_text()
    p.write_text(text.replace("  kind: numeric", "  kind: binary\n  positive_label: yes"))
    with pytest.raises(ConfigError, match=r"task.positive_label: expected a string, got True \(YAML reads yes/no"):
        load_config(FinetuneConfig, p)


@dataclass
class Linking:
    child: str = "child.yaml"
    child_overrides: list[str] = field(default_factory=lambda: ["a=1"])
    plain: str = "other.yaml"


def test_a_key_of_a_linked_config_is_added_to_its_overrides_list(tmp_path):
    """`pbp tune ... finetune.task.train=s3://...` (the natural dotted form) failed with the linked file's whole
    contents in a type error; replacing `finetune_overrides=[...]` dropped the list's own entries."""
    assert apply_overrides({}, ["child.x.y=s3://b/k.csv", "child.a=2"], Linking) == {
        "child_overrides": ["a=1", "x.y=s3://b/k.csv", "a=2"]  # the default list kept, later entries win
    }
    doc = {"child_overrides": ["b=yes"]}
    assert apply_overrides(doc, ["child.b=no"], Linking)["child_overrides"] == ["b=yes", "b=no"]  # the text as typed
    # a replacement of the whole list, before or after, does not drop them
    for order in (["child.a=3", "child_overrides=[c=1]"], ["child_overrides=[c=1]", "child.a=3"]):
        assert apply_overrides({}, order, Linking)["child_overrides"] == ["c=1", "a=3"]
    with pytest.raises(ConfigError, match="plain"):  # a string field with no overrides list is no link
        apply_overrides({"plain": "v"}, ["plain.x=1"], Linking)
    from pbp.finetune.config import FinetuneConfig
    from pbp.tune.config import TuneConfig
    from pbp.tune.search import base_finetune_dict, trial_finetune_config

    tune = REPO / "configs/tune/tiny.yaml"
    cfg = load_config(TuneConfig, tune, ["finetune.task.max_rows=50", "finetune.task.train=s3://b/t.csv"])
    ft = trial_finetune_config(base_finetune_dict(cfg), {}, "t")
    assert isinstance(ft, FinetuneConfig) and (ft.task.max_rows, ft.task.train) == (50, "s3://b/t.csv")
    assert ft.stages[0].max_epochs == 2  # the tune config's own entries still apply


def test_override_text_meant_as_a_string_and_numbers_no_field_can_take():
    """`deepspeed.bf16=false` failed (YAML's False is not one of the strings), `run_name=2024-01-01` was a date, a
    400-digit number was an OverflowError traceback, and a negative fine-tuning seed passed until numpy refused it
    on every worker."""
    from pbp.data.shards import BuildConfig
    from pbp.finetune.config import FinetuneConfig
    from pbp.train.config import PretrainConfig
    from pbp.tune.config import TuneConfig

    cfg = load_config(
        PretrainConfig, REPO / "configs/pretrain/tiny.yaml", ["deepspeed.bf16=false", "run_name=2024-01-01"]
    )
    assert (cfg.deepspeed.bf16, cfg.run_name) == ("false", "2024-01-01")
    with pytest.raises(ConfigError, match=r"stages\[0\]\.lr: 1{20}\.\.\. is too large for a number"):
        load_config(FinetuneConfig, REPO / "configs/finetune/tiny.yaml", ["stages.0.lr=" + "1" * 400])
    for cls, path, high in ((PretrainConfig, "pretrain", 2**63 - 1), (FinetuneConfig, "finetune", 2**32 - 1),
                            (TuneConfig, "tune", 2**32 - 1)):  # fmt: skip
        assert load_config(cls, REPO / f"configs/{path}/tiny.yaml", [f"seed={high}"]).seed == high
        for seed in (-1, high + 1, 10**400):
            with pytest.raises(ConfigError, match=rf"seed must be a finite number >= 0 and <= {high}"):
                load_config(cls, REPO / f"configs/{path}/tiny.yaml", [f"seed={seed}"])
    for size in (float("nan"), 1e-300, 0):
        with pytest.raises(ValueError, match="shard_size_mb must be a finite number >= 0.01"):
            BuildConfig(shard_size_mb=size)


def test_a_search_space_takes_dotted_keys_from_the_command_line():
    """`space.stages.1.batch_size={...}` failed with "unknown key 'space.stages.1'": the space's keys hold dots."""
    from pbp.tune.config import TuneConfig
    from pbp.tune.search import check_space

    tune = REPO / "configs/tune/tiny.yaml"
    cfg = load_config(TuneConfig, tune, ["space.stages.1.batch_size={type: choice, values: [16, 32]}",
                                         "space.stages.0.lr.high=0.2", "space.head_dropout.high=0.3"])  # fmt: skip
    assert cfg.space["stages.1.batch_size"].values == [16, 32]
    assert (cfg.space["stages.0.lr"].high, cfg.space["stages.0.lr"].low, cfg.space["head_dropout"].high) == (
        0.2,
        1e-3,
        0.3,
    )
    check_space(cfg)  # the new key is a fine-tuning field, checked at both ends of its range
    with pytest.raises(ConfigError, match=r"space has no key 'stages\.0\.lrr' to change \(its keys: head_dropout, "):
        load_config(TuneConfig, tune, ["space.stages.0.lrr.high=0.2"])  # a typo is not a new dimension
    with pytest.raises(
        ConfigError, match=r"finetune_overrides \(applied to configs/finetune/tiny\.yaml\): override 'foo'"
    ):
        check_space(load_config(TuneConfig, tune, ["finetune_overrides=[foo]"]))
