"""Fine-tuning pieces that need no cluster: batching, the frozen-body feature cache, the plateau/early-stopping
bookkeeping, and the exported model (safetensors + JSON, the pyfunc predictor, MLflow's loader)."""

from __future__ import annotations

import random
import re
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pbp.config import load_config
from pbp.finetune.batching import eval_batches, fitting_rows, train_batches
from pbp.finetune.config import FinetuneConfig, ScheduleConfig, TaskConfig
from pbp.finetune.data import Split, load_task
from pbp.finetune.export import TaskInfo, load_finetuned, save_finetuned
from pbp.finetune.features import SHARED_MEMORY, build_cache, cache_size_bytes
from pbp.finetune.loop import STATE_FILE, Patience, Progress, Trainer
from pbp.finetune.pyfunc import FinetunedPredictor, save_pyfunc
from pbp.model import ProteinBERT
from pbp.model.finetune import IGNORE_INDEX, FinetuneModel, TaskKind, TaskSpec
from pbp.model.tokenizer import AMINO_ACIDS, END_ID, PAD_ID, START_ID, encode, pad
from pbp.train import checkpoint as ckpt
from pbp.train.dist import DistContext, spawn_gloo_ranks
from pbp.train.launch import RAY_SNAPSHOT, forget_ray_snapshot

from ..conftest import REPO

RESIDUES = "ACDEFGHIKLMNPQRSTVWY"
CPU = torch.device("cpu")


def _seqs(n: int, lo: int, hi: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(RESIDUES) for _ in range(rng.randint(lo, hi))) for _ in range(n)]


def _write(tmp_path: Path, kind: str, seqs: list[str], name: str = "t.csv") -> str:
    """A task CSV whose labels are a function of the sequence (so a crop can be checked against its residues)."""
    rows = ["seq,label"]
    for i, s in enumerate(seqs):
        label = {
            "numeric": f"{len(s) / 10:.3f}",
            "binary": str(i % 2),
            "categorical": "abc"[i % 3],
            "residue_binary": "".join("1" if c in "AILMFVW" else "0" for c in s),
            "residue_categorical": s,  # the label of a residue is its own letter
        }[kind]
        rows.append(f"{s},{label}")
    p = tmp_path / name
    p.write_text("\n".join(rows) + "\n")
    return str(p)


def _load(tmp_path: Path, kind: str, seqs: list[str]):
    path = _write(tmp_path, kind, seqs)
    return load_task(TaskConfig(kind=TaskKind(kind), train=path, valid=path))


# ---- batching -----------------------------------------------------------------------------------------------------


def test_drop_leaves_out_sequences_longer_than_seq_len(tmp_path):
    seqs = ["M" * n for n in (5, 14, 15, 30, 8)]  # 7, 16, 17, 32, 10 tokens
    split = _load(tmp_path, "numeric", seqs).train
    rows, dropped = fitting_rows(split, 16, "drop")
    assert list(rows) == [0, 1, 4] and dropped == 2
    rows, dropped = fitting_rows(split, 16, "crop")
    assert list(rows) == [0, 1, 2, 3, 4] and dropped == 0


def test_crop_keeps_residue_labels_with_their_residues(tmp_path):
    data = _load(tmp_path, "residue_categorical", _seqs(40, 5, 60))
    split, classes, seq_len = data.train, data.classes, 16
    rows, _ = fitting_rows(split, seq_len, "crop")
    seen = []
    for b in train_batches(split, rows, seq_len, 8, np.random.default_rng(0)):
        assert b.tokens.shape[1] <= seq_len and b.labels.shape == b.tokens.shape
        for j, i in enumerate(b.index):
            tok, lab = b.tokens[j], b.labels[j]
            n = min(len(split.tokens[i]), seq_len)
            assert (tok[n:] == PAD_ID).all() and (lab[n:] == IGNORE_INDEX).all()
            # The window is a contiguous piece of the row's tokens ...
            whole = split.tokens[i].astype(np.int64)
            starts = [s for s in range(len(whole) - n + 1) if (whole[s : s + n] == tok[:n].numpy()).all()]
            assert starts, f"row {i}: the crop is not a window of its tokens"
            # ... and every residue in it carries its own label (the label of a residue is its letter here).
            for t, y in zip(tok[:n].tolist(), lab[:n].tolist(), strict=True):
                if t in (START_ID, END_ID):
                    assert y == IGNORE_INDEX
                else:
                    assert classes[y] == AMINO_ACIDS[t]
            seen.append(int(i))
    assert sorted(seen) == list(range(len(split)))  # crop keeps every row


def test_eval_batches_cover_every_row_once_within_max_tokens(tmp_path):
    seqs = [*_seqs(50, 3, 40, seed=1), "W" * 120]  # the last one is longer than max_tokens on its own
    split = _load(tmp_path, "residue_binary", seqs).train
    max_tokens = 100
    seen = []
    for b in eval_batches(split, max_tokens):
        if len(b.index) > 1:
            assert b.tokens.numel() <= max_tokens
        for j, i in enumerate(b.index):
            n = len(split.tokens[i])
            assert torch.equal(b.tokens[j, :n], torch.from_numpy(split.tokens[i].astype(np.int64)))  # not truncated
            assert torch.equal(b.labels[j, :n], torch.from_numpy(split.labels[i]))
        seen.extend(int(i) for i in b.index)
    assert sorted(seen) == list(range(len(split)))
    # Two ranks split the batches between them, together still every row once.
    by_rank = [int(i) for r in (0, 1) for b in eval_batches(split, max_tokens, r, 2) for i in b.index]
    assert sorted(by_rank) == list(range(len(split)))


# ---- the frozen-body feature cache --------------------------------------------------------------------------------


def _frozen(tiny_cfg, spec: TaskSpec) -> FinetuneModel:
    model = FinetuneModel(ProteinBERT(tiny_cfg), spec)
    model.freeze_body()
    return model.eval()


def _cache_logits(model: FinetuneModel, cache, i: int) -> torch.Tensor:
    with torch.no_grad():
        if cache.offsets is None:
            x = torch.from_numpy(np.asarray(cache.features[i : i + 1])).float()
            return model.head(x).squeeze(-1)[0]
        x = torch.from_numpy(np.asarray(cache.features[cache.offsets[i] : cache.offsets[i + 1]])).float()
        return model.head(x)


def _full_logits(model: FinetuneModel, split: Split, i: int) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.from_numpy(split.tokens[i].astype(np.int64))[None])[0]


def _budget(split: Split, model: FinetuneModel, storage: str) -> float:
    """A memory budget (MiB) that makes ``build_cache`` choose ``storage``."""
    per_residue = model.task.kind.per_residue
    cfg = model.body.config
    F = cfg.local_feature_dim if per_residue else cfg.global_feature_dim
    fp32, fp16 = (cache_size_bytes(split, per_residue, F, n) / 2**20 for n in (4, 2))
    return fp32 * 1.01 if storage == "float32" else (fp16 + fp32) / 2


@pytest.mark.parametrize(("kind", "storage", "tol"), [
    ("numeric", "float32", 1e-5), ("residue_categorical", "float32", 1e-5),
    ("numeric", "float16", 1e-2), ("residue_categorical", "float16", 1e-2),
])  # fmt: skip
def test_cached_features_give_the_full_models_logits(tmp_path, tiny_cfg, kind, storage, tol):
    data = _load(tmp_path, kind, _seqs(16, 3, 50, seed=2))
    split = data.train
    model = _frozen(tiny_cfg, data.spec)
    cache = build_cache(model, split, 256, _budget(split, model, storage), 0.0, CPU)
    assert cache is not None and cache.storage == storage and len(cache) == len(split)
    for i in range(len(split)):
        torch.testing.assert_close(_cache_logits(model, cache, i), _full_logits(model, split, i), atol=tol, rtol=0)
        if cache.offsets is None:
            assert cache.labels[i] == split.labels[i]
        else:
            np.testing.assert_array_equal(cache.labels[cache.offsets[i] : cache.offsets[i + 1]], split.labels[i])


def test_a_cache_build_says_its_progress_in_whole_lines_with_rate_and_time_left(
    tmp_path, tiny_cfg, capsys, monkeypatch
):
    """Rank 0's progress lines (the shared console progress, every PROGRESS_EVERY_S) on the worker's stdout, then
    the cache's one summary line; a rank that does not show progress prints none."""
    import pbp.finetune.features as features

    monkeypatch.setattr(features, "PROGRESS_EVERY_S", 0.0)
    data = _load(tmp_path, "numeric", _seqs(12, 3, 30, seed=4))
    model = _frozen(tiny_cfg, data.spec)
    assert build_cache(model, data.train, 64, 100.0, 0.0, CPU, show_progress=True) is not None
    out = capsys.readouterr().out.splitlines()
    lines = [ln for ln in out if ln.startswith("feature cache: train:")]
    n = len(data.train)
    # the summary last, on the same stream (it was a log line on stderr: a Ray job's log showed it after epoch lines)
    assert re.fullmatch(rf"feature cache: train, {n} rows x \d+ features, float32 \(0 MiB\)", out[-1]), out
    assert lines and all(re.fullmatch(rf"feature cache: train: \d+/{n} sequences \(\d+ s(, [\d,]+/s, ETA \d+ s)?\)",
                                      ln) for ln in lines), lines  # fmt: skip
    counts = [int(re.search(r"(\d+)/", ln).group(1)) for ln in lines]
    assert counts == sorted(counts) and counts[-1] == n  # never past the split's rows
    build_cache(model, data.train, 64, 100.0, 0.0, CPU, show_progress=False)
    assert "feature cache: train:" not in capsys.readouterr().out


def test_cache_on_disk_and_over_both_budgets(tmp_path, tiny_cfg):
    data = _load(tmp_path, "numeric", _seqs(10, 3, 30, seed=3))
    model = _frozen(tiny_cfg, data.spec)
    assert build_cache(model, data.train, 256, 0.0, 0.0, CPU) is None  # recompute instead
    cache = build_cache(model, data.train, 256, 0.0, 100.0, CPU)
    assert cache is not None and cache.storage == "disk-float16"
    # The file is unlinked once mapped: its space is freed with the cache, and nothing is left in the temp dir.
    assert not Path(cache.features.filename).parent.exists()
    for i in range(len(data.train)):
        torch.testing.assert_close(_cache_logits(model, cache, i), _full_logits(model, data.train, i), atol=1e-2,
                                   rtol=0)  # fmt: skip


def _cache_on_rank(ctx: DistContext, tmp: str, kind: str, memory_mb: float, disk_mb: float) -> None:
    """One of 2 ranks (gloo, spawned): build the cache with the parent's model; save what this rank holds and how
    many rows its own body forwards computed."""
    import pbp.finetune.features as features
    from pbp.model.config import ModelConfig

    data = load_task(TaskConfig(kind=TaskKind(kind), train=f"{tmp}/t.csv", valid=f"{tmp}/t.csv"))
    model = FinetuneModel(ProteinBERT(load_config(ModelConfig, REPO / "configs/model/tiny.yaml")), data.spec)
    model.load_state_dict(torch.load(f"{tmp}/model.pt", weights_only=True))
    model.freeze_body()
    computed = []
    extract = features.extract_features
    features.extract_features = lambda body, tokens: computed.append(len(tokens)) or extract(body, tokens)
    cache = build_cache(model.eval(), data.train, 64, memory_mb, disk_mb, CPU, ctx=ctx)
    assert cache is not None
    np.savez(f"{tmp}/rank{ctx.rank}.npz", features=np.asarray(cache.features, dtype=np.float32),
             labels=cache.labels, computed=sum(computed), storage=cache.storage, shared_by=cache.shared_by)  # fmt: skip


@pytest.mark.parametrize("nodes", [1, 2])
@pytest.mark.parametrize(("kind", "storage"), [("numeric", "float32"), ("residue_categorical", "disk-float16")])
def test_two_ranks_each_compute_half_of_the_cache_and_both_hold_all_of_it(tmp_path, tiny_cfg, kind, storage, nodes):
    """On one node the two ranks map one shared cache (one copy per node); on two nodes each holds a copy, filled
    by exchanging features. Either way each ran the body on half of the rows."""
    seqs = _seqs(23, 3, 50, seed=5)
    data = _load(tmp_path, kind, seqs)  # writes t.csv, which the ranks read
    model = _frozen(tiny_cfg, data.spec)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    memory_mb, disk_mb = (_budget(data.train, model, "float32"), 0.0) if storage == "float32" else (0.0, 100.0)
    alone = build_cache(model, data.train, 64, memory_mb, disk_mb, CPU)
    assert alone is not None and alone.storage == storage
    left_before = sorted(SHARED_MEMORY.glob("pbp-features-*")) + sorted(
        Path(tempfile.gettempdir()).glob("pbp-features-*")
    )
    spawn_gloo_ranks(_cache_on_rank, 2, (str(tmp_path), kind, memory_mb, disk_mb), str(tmp_path / "pg"), nodes=nodes)
    ranks = [np.load(tmp_path / f"rank{r}.npz") for r in (0, 1)]
    for got in ranks:
        assert str(got["storage"]) == storage and int(got["shared_by"]) == (2 if nodes == 1 else 1)
        np.testing.assert_allclose(got["features"], np.asarray(alone.features, dtype=np.float32), atol=1e-3, rtol=0)
        np.testing.assert_array_equal(got["labels"], alone.labels)
    # Each rank ran the body on its own batches only: together every row once, about half each.
    computed = [int(got["computed"]) for got in ranks]
    assert sum(computed) == len(seqs) and min(computed) >= len(seqs) // 4, computed
    left = sorted(SHARED_MEMORY.glob("pbp-features-*")) + sorted(Path(tempfile.gettempdir()).glob("pbp-features-*"))
    assert left == left_before  # the shared files were unlinked once mapped


@pytest.mark.parametrize("kind", ["numeric", "categorical", "residue_binary", "residue_categorical"])
def test_training_the_head_on_the_cache_equals_training_through_the_body(tmp_path, kind):
    """One frozen-body epoch with the cache and one without (no dropout): the same head weights."""
    path = _write(tmp_path, kind, _seqs(24, 5, 40, seed=4))
    heads = []
    for enabled in ("true", "false"):
        cfg = load_config(FinetuneConfig, REPO / "configs/finetune/tiny.yaml", [
            f"task.kind={kind}", f"task.train={path}", f"task.valid={path}", "task.test=", "head_dropout=0",
            "stages.0.batch_size=8", f"feature_cache.enabled={enabled}", f"checkpoint.storage_path={tmp_path}",
        ])  # fmt: skip
        tr = Trainer(cfg, {}, DistContext.single())
        tr.begin_stage(cfg.stages[0], resuming=False)
        assert (tr.caches.get("train") is not None) == (enabled == "true")
        tr.train_epoch(cfg.stages[0])
        heads.append({k: v.detach().clone() for k, v in tr.model.head.state_dict().items()})
        if enabled == "true":
            cached_valid = tr.validate()
            tr.caches = {}
            torch.testing.assert_close(cached_valid["valid_loss"], tr.validate()["valid_loss"], atol=1e-4, rtol=0)
    for k in heads[0]:
        torch.testing.assert_close(heads[0][k], heads[1][k], atol=1e-5, rtol=0)


# ---- reduce-on-plateau and early stopping -------------------------------------------------------------------------


def test_patience_cuts_the_lr_on_a_plateau_and_stops_early():
    cfg = ScheduleConfig(plateau_patience=2, plateau_factor=0.5, min_lr=0.3, early_stopping_patience=3)
    p = Patience(lr=1.0)
    trace = []
    for epoch, loss in enumerate([1.0, 1.0, 1.1, 0.9, 0.95, 0.9, 0.91], 1):
        best = p.observe(epoch, loss, cfg)
        trace.append((best, p.lr, p.should_stop(cfg)))
    assert trace == [
        (True, 1.0, False),
        (False, 1.0, False),  # an equal loss is no improvement
        (False, 0.5, False),  # two epochs without one: lr * 0.5
        (True, 0.5, False),
        (False, 0.5, False),
        (False, 0.3, False),  # 0.25 would be below min_lr
        (False, 0.3, True),  # three epochs without improvement: stop
    ]
    assert (p.best, p.best_epoch) == (0.9, 4)


def test_patience_min_delta_and_zero_patience():
    p = Patience(lr=1.0)
    cfg = ScheduleConfig(plateau_patience=1, plateau_factor=0.25, min_lr=0.0, early_stopping_patience=0, min_delta=0.1)
    assert p.observe(1, 1.0, cfg) and not p.observe(2, 0.95, cfg)  # better, but by less than min_delta
    assert p.lr == 0.25 and not p.should_stop(cfg)  # patience 0: never stops
    off = ScheduleConfig(plateau_patience=0, early_stopping_patience=1)
    q = Patience(lr=1.0)
    q.observe(1, 1.0, off), q.observe(2, 2.0, off)
    assert q.lr == 1.0 and q.should_stop(off)


# ---- resume ---------------------------------------------------------------------------------------------------------


def test_a_finetuning_checkpoint_restores_from_storage(tmp_path):
    """A checkpoint as a worker writes it (state.pt, rank manifest, commit record: no subdirectory) is found
    complete, downloaded and loaded: weights, stage progress and the MLflow run id."""
    path = _write(tmp_path, "numeric", _seqs(20, 5, 30, seed=5))
    cfg = load_config(FinetuneConfig, REPO / "configs/finetune/tiny.yaml",
                      [f"task.train={path}", f"task.valid={path}", "task.test=", "run_name=r",
                       f"checkpoint.storage_path={tmp_path / 'runs'}"])  # fmt: skip
    meta: dict = {}
    tr = Trainer(cfg, meta, DistContext.single())
    with torch.no_grad():
        tr.model.head.weight.add_(1.0)
    progress = Progress(stage=1, epoch_in_stage=1, epochs_done=3, patience={"lr": 1e-3, "best": 0.5}, best_metric=0.25)
    local = tmp_path / "scratch"
    local.mkdir()
    torch.save({"model": tr.model.state_dict(), "optimizer": None, "best": None}, local / STATE_FILE)
    commit = ckpt.CommitRecord(step=3, world_size=1, run_name=cfg.run_name, mlflow_run_id="abc", job=asdict(progress))
    ckpt.upload(local, ckpt.storage_dir(cfg.run_url), ckpt.checkpoint_name(3), 0, 3, {},
                {k: v for k, v in commit.to_json().items() if k != "step"})  # fmt: skip
    assert ckpt.newest_complete(ckpt.storage_dir(cfg.run_url)) == ckpt.checkpoint_name(3)
    fresh = Trainer(cfg, meta, DistContext.single())
    assert not torch.equal(fresh.model.head.weight, tr.model.head.weight)
    assert fresh.restore() == "abc"
    assert torch.equal(fresh.model.head.weight, tr.model.head.weight)
    assert fresh.progress == progress


def test_a_rerun_forgets_ray_trains_stale_checkpoint_list(tmp_path):
    """Ray Train refuses a run whose snapshot names a checkpoint pbp's retention deleted: the launcher drops it."""
    run = tmp_path / "runs" / "r"
    forget_ray_snapshot(str(run))  # nothing there yet: nothing to do
    run.mkdir(parents=True)
    (run / RAY_SNAPSHOT).write_text('{"checkpoint_results": []}')
    (run / ckpt.checkpoint_name(4)).mkdir()
    forget_ray_snapshot(str(run))
    assert sorted(p.name for p in run.iterdir()) == [ckpt.checkpoint_name(4)]


# ---- the exported model -------------------------------------------------------------------------------------------

KINDS = {
    "numeric": TaskInfo(TaskKind.NUMERIC),
    "binary": TaskInfo(TaskKind.BINARY),
    "binary_named": TaskInfo(TaskKind.BINARY, 1, ["no", "yes"]),  # task.positive_label=yes: class 1 is 'yes'
    "categorical": TaskInfo(TaskKind.CATEGORICAL, 3, ["2", "10", "x.1"]),
    "residue_binary": TaskInfo(TaskKind.RESIDUE_BINARY),
    "residue_categorical": TaskInfo(TaskKind.RESIDUE_CATEGORICAL, 3, ["C", "E", "H"]),
}
SEQS = ["MKTAYIAKQRQISFVKSHFSRQ", "MKV", "GSSGSSGLLW", "ACDEFGHIKLMNPQRSTVWY" * 3]


def _model(tiny_cfg, task: TaskInfo) -> FinetuneModel:
    model = FinetuneModel(ProteinBERT(tiny_cfg), task.spec)
    with torch.no_grad():
        model.head.bias.normal_()  # a head that is not all zeros at the bias
    return model.eval()


def _expected(model: FinetuneModel, task: TaskInfo, seq: str) -> dict:
    with torch.no_grad():
        logits = model(torch.tensor([encode(seq)]))[0]
    if task.kind is TaskKind.NUMERIC:
        return {"prediction": float(logits)}
    if task.kind is TaskKind.BINARY:
        p = float(torch.sigmoid(logits))
        return {"probability": p, "label": task.classes[int(p >= 0.5)]} if task.classes else {"probability": p}
    if task.kind is TaskKind.CATEGORICAL:
        return {"label": task.classes[int(logits.argmax())], "probabilities": torch.softmax(logits, -1).tolist()}
    res = logits[1:-1]
    if task.kind is TaskKind.RESIDUE_BINARY:
        return {"residue_predictions": torch.sigmoid(res).tolist()}
    return {"residue_predictions": [task.classes[int(c)] for c in res.argmax(-1)]}


def _assert_predictions(df: pd.DataFrame, model: FinetuneModel, task: TaskInfo, seqs: list[str]) -> None:
    assert len(df) == len(seqs)
    for i, seq in enumerate(seqs):
        want = _expected(model, task, seq)
        assert set(df.columns) == set(want)
        for col, value in want.items():
            got = df[col].iloc[i]
            if isinstance(value, float):
                assert got == pytest.approx(value, abs=1e-5)
            elif col == "label" or task.kind is TaskKind.RESIDUE_CATEGORICAL:
                assert list(got) == value if isinstance(value, list) else got == value
                if col == "residue_predictions":
                    assert len(got) == len(seq)
            else:
                np.testing.assert_allclose(np.asarray(got, dtype=np.float64), value, atol=1e-5)


@pytest.mark.parametrize("kind", list(KINDS))
def test_save_load_round_trip_and_the_predictor(tmp_path, tiny_cfg, kind):
    task = KINDS[kind]
    model = _model(tiny_cfg, task)
    save_finetuned(model, task, tmp_path / "m", {"run_name": "ft-x"})
    loaded, task2, meta = load_finetuned(tmp_path / "m")
    assert task2 == task and meta == {"run_name": "ft-x"}
    tokens = pad([encode(s) for s in SEQS], max(len(s) for s in SEQS) + 2)
    with torch.no_grad():
        assert torch.equal(model(tokens), loaded(tokens))
    predictor = FinetunedPredictor(loaded, task2, max_tokens=64)  # several batches, one sequence longer than that
    _assert_predictions(predictor.predict(pd.DataFrame({"seq": SEQS, "other": 1})), model, task, SEQS)


def test_a_damaged_model_directory_is_named_not_a_traceback(tmp_path, tiny_cfg):
    """An interrupted copy of the weights, a description without its task, one that is not JSON and weights of
    another model each raised a bare SafetensorError / KeyError / JSONDecodeError / torch size mismatch."""
    import json
    import shutil

    task = KINDS["categorical"]
    good = save_finetuned(_model(tiny_cfg, task), task, tmp_path / "good", {})

    def damaged(name: str, file: str, change) -> Path:
        d = tmp_path / name
        shutil.copytree(good, d)
        (d / file).write_bytes(change((d / file).read_bytes()))
        return d

    meta = json.loads((good / "finetuned.json").read_text())
    cases = {
        "cut": ("model.safetensors", lambda b: b[: len(b) // 2], r"model.safetensors: not a readable safetensors"),
        "notask": ("finetuned.json", lambda b: json.dumps({k: v for k, v in meta.items() if k != "task"}).encode(),
                   r"finetuned.json: not a fine-tuned model's description \(KeyError: 'task'\)"),
        "notjson": ("finetuned.json", lambda b: b[:-5], r"finetuned.json: not valid JSON"),
        "other": ("finetuned.json", lambda b: json.dumps({**meta, "model": {**meta["model"], "d_global": 8}}).encode(),
                  r"model.safetensors: tensor '.*' has shape"),
    }  # fmt: skip
    for name, (file, change, message) in cases.items():
        with pytest.raises(ValueError, match=message):
            load_finetuned(damaged(name, file, change))


def test_the_predictor_needs_the_sequence_column(tmp_path, tiny_cfg):
    task = TaskInfo(TaskKind.NUMERIC, seq_column="protein")
    predictor = FinetunedPredictor(_model(tiny_cfg, task), task)
    with pytest.raises(ValueError, match=r"input has no column 'protein' \(columns: \['sequence'\]\)"):
        predictor.predict(pd.DataFrame({"sequence": SEQS}))
    assert len(predictor.predict(pd.DataFrame({"protein": SEQS}))) == len(SEQS)
    assert len(predictor.predict({"seq": SEQS[:2]})) == 2  # 'seq' is accepted too, and a dict of columns


def test_load_refuses_a_directory_that_is_not_a_finetuned_model(tmp_path, tiny_cfg):
    ProteinBERT(tiny_cfg).save_pretrained(tmp_path / "pre")
    with pytest.raises(FileNotFoundError, match="not a fine-tuned pbp model"):
        load_finetuned(tmp_path / "pre")


@pytest.mark.parametrize("kind", ["numeric", "categorical", "residue_categorical"])
def test_mlflow_pyfunc_loads_the_saved_model_without_pickles(tmp_path, tiny_cfg, kind):
    import mlflow.pyfunc

    task = KINDS[kind]
    model = _model(tiny_cfg, task)
    save_finetuned(model, task, tmp_path / "m", {})
    out = save_pyfunc(tmp_path / "m", tmp_path / "pyfunc", SEQS)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in (".pkl", ".pickle", ".cloudpickle")], files
    for p in files:  # no pickle stream under another name (pickle protocol 2+ starts with 0x80, then the protocol)
        head = p.read_bytes()[:2]
        assert p.suffix == ".safetensors" or not (head[:1] == b"\x80" and head[1:2] in b"\x02\x03\x04\x05"), p
    mlmodel = (out / "MLmodel").read_text()
    assert "loader_module: pbp.finetune.pyfunc" in mlmodel
    loaded = mlflow.pyfunc.load_model(str(out))
    _assert_predictions(loaded.predict(pd.DataFrame({"seq": SEQS})), model, task, SEQS)


def test_the_closing_lines_give_the_test_metrics_per_length_bucket_apart_from_the_overall_table() -> None:
    from pbp.cli.finetune_cmds import BUCKET_KEY, length_table

    metrics = {"test_loss": 0.6, "test_spearman": 0.2, "test_le512_loss": 0.5, "test_le512_spearman": 0.25,
               "test_le512_n": 300.0, "test_gt512_n": 4.0, "test_gt512_loss": 0.9}  # fmt: skip
    assert [line.split() for line in length_table(metrics).splitlines()] == [
        ["test", "by", "length", "n", "loss", "spearman"],
        ["tokens", "<=", "512", "300", "0.5000", "0.2500"],
        ["tokens", ">", "512", "4", "0.9000", "-"],  # a bucket too small to score a Spearman on
    ]
    assert [k for k in metrics if not BUCKET_KEY.match(k)] == ["test_loss", "test_spearman"]
    assert length_table({"test_loss": 0.6}) == ""


def test_a_relative_task_path_that_is_not_there_names_the_key_and_the_directory_it_was_read_from(tmp_path, monkeypatch):
    """`pbp finetune --config configs/finetune/tiny.yaml` from another directory: its ../shared/... paths are read
    from the current directory; the error said only '/tmp/shared/...: task file not found'."""
    from pbp.config import load_config
    from pbp.finetune.config import FinetuneConfig
    from pbp.finetune.data import TaskDataError
    from pbp.finetune.launch import resolve_config

    monkeypatch.chdir(tmp_path)
    cfg = load_config(FinetuneConfig, REPO / "configs/finetune/tiny.yaml", ["tracking.enabled=false"])
    with pytest.raises(TaskDataError) as e:
        resolve_config(cfg)
    want = tmp_path.parent / "shared/data/proteinbert_benchmarks/stability.train.csv"
    assert str(e.value) == (f"task.train=../shared/data/proteinbert_benchmarks/stability.train.csv: no such file, "
                            f"{want} (a relative path is read from the current directory, {tmp_path})")  # fmt: skip


def test_a_run_whose_model_mlflow_did_not_take_fails_saying_how_to_finish_it(monkeypatch, capsys):
    """A chaos run: MLflow down at the end of `pbp finetune`; the worker warned that the model was not logged, then
    the closing lines still said the model was in the MLflow run's 'model' artifact and to register the run (which
    had no model), exit 0."""
    import pbp.finetune.launch as launch
    from pbp.cli import finetune_cmds

    cfg = load_config(FinetuneConfig, REPO / "configs/finetune/tiny.yaml", ["run_name=ft-x"])
    result = launch.FinetuneResult("s3://pbp-runs/finetune/ft-x", {"test_spearman": 0.3}, True, "abc",
                                   tracking_gaps=["its model is not logged"])  # fmt: skip
    monkeypatch.setattr(launch, "finetune", lambda cfg, address=None: result)
    assert finetune_cmds.finetune_and_report(cfg) is False
    out, err = capsys.readouterr()
    assert "its MLflow run is not complete (its model is not logged)" in err
    assert "Run the same command again (once MLflow answers)" in err
    assert "register it" not in out and "'model' artifact" not in out
