"""How a rank's checkpoint goes up (``checkpoint.Upload``): each file read once and hashed from the bytes sent,
uploads started as files are written, a failed file retried alone, and the checkpoint complete only at the end."""

import hashlib
import io
import json
import tempfile
from pathlib import Path

import pytest
from pyarrow import fs as pafs

from pbp.hardware import cpu_bf16_native
from pbp.train import checkpoint as ckpt


def _run(tmp_path) -> ckpt.StorageDir:
    return ckpt.StorageDir(pafs.LocalFileSystem(), str(tmp_path / "run"))


def _manifest(tmp_path, name: str, rank: int = 0) -> dict:
    return json.loads((tmp_path / "run" / name / ckpt.rank_manifest_name(rank)).read_text())


def test_the_digest_is_of_the_bytes_uploaded_and_the_file_is_not_read_again(tmp_path):
    """A file handed to ``ready`` goes up at once; ``finish`` does not read it a second time to hash it: changing the
    local copy after its upload leaves the manifest describing what storage holds."""
    local = tmp_path / "local"
    (local / "ds").mkdir(parents=True)
    (local / "ds" / "model.pt").write_bytes(b"m" * 5000)
    run, name = _run(tmp_path), ckpt.checkpoint_name(7)
    up = ckpt.Upload(local, run, name)
    up.ready(local / "ds" / "model.pt")
    up._sent[(local / "ds" / "model.pt").resolve()].result()  # uploaded
    (local / "ds" / "model.pt").write_bytes(b"changed")
    (local / "latest").write_text("ds")  # never announced: goes up in finish
    up.finish(0, 7, {"0": {"batches": 2}}, {"world_size": 1, "schedule": {}})

    stored = tmp_path / "run" / name
    assert (stored / "ds" / "model.pt").read_bytes() == b"m" * 5000
    files = {f["path"]: f for f in _manifest(tmp_path, name)["files"]}
    assert files["ds/model.pt"] == {"path": "ds/model.pt", "bytes": 5000,
                                    "sha256": hashlib.sha256(b"m" * 5000).hexdigest()}  # fmt: skip
    assert files["latest"]["sha256"] == hashlib.sha256(b"ds").hexdigest()
    assert ckpt.check_complete(run, name) is None
    commit, mine = ckpt.download(run, name, tmp_path / "back", rank=0)
    assert commit == {"step": 7, "world_size": 1, "schedule": {}} and mine["reader"] == {"0": {"batches": 2}}


def test_files_are_announced_as_the_deepspeed_engine_saves_them(tmp_path):
    """``upload_as_saved`` hands each file to the upload when DeepSpeed's checkpoint engine has written it, before
    the next one is written, and puts the engine back afterwards."""
    order: list[str] = []

    class Engine:  # DeepSpeed's engine as save_checkpoint uses it: every file through self.checkpoint_engine.save
        class checkpoint_engine:  # noqa: N801
            @staticmethod
            def save(state_dict, path):
                order.append(f"write {Path(path).name}")
                Path(path).write_bytes(state_dict)

        def save_checkpoint(self, d):
            Path(d).mkdir(parents=True)
            self.checkpoint_engine.save(b"model", f"{d}/model_states.pt")
            self.checkpoint_engine.save(b"optim", f"{d}/optim_states.pt")

    class Up:
        def ready(self, p):
            order.append(f"ready {p.name}")

    engine, original = Engine(), Engine.checkpoint_engine
    with ckpt.upload_as_saved(engine, Up()):
        engine.save_checkpoint(tmp_path / "ds")
    assert order == ["write model_states.pt", "ready model_states.pt", "write optim_states.pt", "ready optim_states.pt"]
    assert engine.checkpoint_engine is original


class _FailingFor:
    """A filesystem whose writes to one path fail ``times`` times: the fault a real server cannot be told to make
    for one chosen file."""

    def __init__(self, inner, suffixes: tuple[str, ...], times: int) -> None:
        self.inner, self.times, self.opened = inner, dict.fromkeys(suffixes, times), []

    def open_output_stream(self, path):
        self.opened.append(path)
        for suffix, left in self.times.items():
            if path.endswith(suffix) and left > 0:
                self.times[suffix] -= 1
                raise OSError(f"injected failure writing {path}")
        return self.inner.open_output_stream(path)

    def __getattr__(self, attr):
        return getattr(self.inner, attr)


def test_failed_files_leave_an_incomplete_checkpoint_and_a_second_finish_sends_only_them(tmp_path, monkeypatch):
    monkeypatch.setattr(ckpt, "SMALL_READ_RETRIES", 0)  # no backoff: the file fails on its first attempt
    local = tmp_path / "local"
    local.mkdir()
    for n in ("a.pt", "b.pt", "c.pt"):
        (local / n).write_bytes(n.encode() * 100)
    fs = _FailingFor(pafs.LocalFileSystem(), ("/b.pt", "/c.pt"), times=1)
    run, name = ckpt.StorageDir(fs, str(tmp_path / "run")), ckpt.checkpoint_name(3)
    up = ckpt.Upload(local, run, name)
    with pytest.raises(OSError, match=r"upload .*checkpoint-000000003/b.pt: failed after 1 attempts"):
        up.finish(0, 3, {}, {"world_size": 1})
    assert ckpt.check_complete(run, name) == "no pbp_checkpoint.json (not committed)"
    assert ckpt.newest_complete(run) is None

    fs.opened.clear()
    up.finish(0, 3, {}, {"world_size": 1})  # as Ray Train retries a failed upload
    names = [Path(p).name for p in fs.opened]
    assert sorted(names[:2]) == ["b.pt", "c.pt"] and names[2:] == [ckpt.rank_manifest_name(0), ckpt.COMMIT]
    assert ckpt.newest_complete(run) == name
    assert [f["path"] for f in _manifest(tmp_path, name)["files"]] == ["a.pt", "b.pt", "c.pt"]


def test_a_file_written_through_open_is_uploaded_as_written_and_loads_back(tmp_path):
    """``Upload.open`` is what the loops give ``torch.save``: the object in storage, the local copy and the manifest's
    digest are the same bytes, and the checkpoint downloads and loads."""
    import torch

    local = tmp_path / "local"
    local.mkdir()
    run, name = _run(tmp_path), ckpt.checkpoint_name(1)
    state = {"w": torch.arange(100_000, dtype=torch.float32), "step": 1}
    up = ckpt.Upload(local, run, name)
    with up.open(local / "ds" / "model_states.pt") as f:
        torch.save(state, f, _use_new_zipfile_serialization=False)  # DeepSpeed's default serialisation
    up.finish(0, 1, {}, {"world_size": 1})
    stored = (tmp_path / "run" / name / "ds" / "model_states.pt").read_bytes()
    assert stored == (local / "ds" / "model_states.pt").read_bytes()
    assert _manifest(tmp_path, name)["files"] == [
        {"path": "ds/model_states.pt", "bytes": len(stored), "sha256": hashlib.sha256(stored).hexdigest()}
    ]
    ckpt.download(run, name, tmp_path / "back", rank=0)
    back = torch.load(tmp_path / "back" / "ds" / "model_states.pt", weights_only=True)
    assert torch.equal(back["w"], state["w"]) and back["step"] == 1


def test_a_stream_that_fails_while_written_is_sent_again_from_the_local_copy(tmp_path, caplog):
    local = tmp_path / "local"
    local.mkdir()
    fs = _FailingFor(pafs.LocalFileSystem(), ("/model.pt",), times=1)  # the stream cannot even be opened
    run, name = ckpt.StorageDir(fs, str(tmp_path / "run")), ckpt.checkpoint_name(2)
    up = ckpt.Upload(local, run, name)
    with up.open(local / "model.pt") as f:
        f.write(b"weights" * 1000)
    with caplog.at_level("WARNING", logger="pbp.train.checkpoint"):
        up.finish(0, 2, {}, {"world_size": 1})
    assert "checkpoint-000000002/model.pt failed while writing (injected failure" in caplog.text
    assert (tmp_path / "run" / name / "model.pt").read_bytes() == b"weights" * 1000
    assert ckpt.newest_complete(run) == name


def test_a_stored_name_that_climbs_out_of_the_download_directory_is_refused(tmp_path):
    """``a/../../x`` is a legal S3 key (AWS keeps it as written); a listing that holds one must not make download
    write outside its directory. A stand-in file system lists it: the local stack's S3 normalises such keys."""
    files = {"pbp_checkpoint.json": b'{"step": 1, "world_size": 1}', "rank-00000.json": b'{"files": []}',
             "../../../escaped.txt": b"outside"}  # fmt: skip
    name = ckpt.checkpoint_name(1)

    class ListsAnything:
        type_name = "s3"

        def get_file_info(self, selector):
            return [pafs.FileInfo(f"bucket/run/{name}/{k}", pafs.FileType.File, size=len(v)) for k, v in files.items()]

        def open_input_stream(self, path):
            return io.BytesIO(files[path.split(f"{name}/", 1)[1]])

    local = tmp_path / "a" / "b" / "scratch" / name
    with pytest.raises(
        ValueError, match=r"holds a file named '\.\./\.\./\.\./escaped\.txt', which would be written outside"
    ):
        ckpt.download(ckpt.StorageDir(ListsAnything(), "bucket/run"), name, local, 0)
    assert not list(tmp_path.rglob("escaped.txt"))


_DEEPSPEED_RESUME = """
import os, pickle, sys, torch
from pathlib import Path
os.environ["DS_ACCELERATOR"] = "cpu"
import deepspeed
from pbp.config import load_config
from pbp.model import ProteinBERT
from pbp.train import checkpoint as ckpt
from pbp.train.config import PretrainConfig
from pbp.train.deepspeed_config import deepspeed_config
from pbp.train.dist import one_rank_env
from pbp.train.optim import build_optimizer

os.environ.update(one_rank_env())
deepspeed.init_distributed(dist_backend="gloo")
cfg = load_config(PretrainConfig, "configs/pretrain/tiny.yaml", [f"deepspeed.zero_stage={sys.argv[3]}",
                  f"deepspeed.bf16={sys.argv[4]}"])
model = ProteinBERT(cfg.model)
engine, *_ = deepspeed.initialize(model=model, optimizer=build_optimizer(model.parameters(), cfg.optim),
                                  config=deepspeed_config(cfg, 1, "cpu"))
local = Path(sys.argv[1])
engine.save_checkpoint(str(local), tag=ckpt.DS_TAG)
with ckpt.load_weights_only(engine, local, "s3://runs/r/checkpoint-1"):
    engine.load_checkpoint(str(local), tag=ckpt.DS_TAG, load_optimizer_states=True, load_lr_scheduler_states=False)
print("clean checkpoint loaded")

class Planted:
    def __reduce__(self):
        return os.system, (f"touch {sys.argv[2]}",)

planted = sorted((local / ckpt.DS_TAG).glob("*.pt"))[-1]  # the optimizer's states (ZeRO), else the model's
torch.save({"optimizer_state_dict": Planted(), "module": Planted()}, planted)
try:
    with ckpt.load_weights_only(engine, local, "s3://runs/r/checkpoint-1"):
        engine.load_checkpoint(str(local), tag=ckpt.DS_TAG, load_optimizer_states=True)
except ValueError as e:
    print("REFUSED", e)
"""


@pytest.mark.parametrize("zero_stage,bf16", [
    (0, "false"), (1, "false"), (2, "false"),
    pytest.param(2, "true", marks=pytest.mark.skipif(not cpu_bf16_native(), reason="bf16 is refused on a CPU without it")),
])  # fmt: skip
def test_resuming_from_a_checkpoint_never_runs_code_it_holds(tmp_path, zero_stage, bf16):
    """DeepSpeed unpickles its checkpoint files with weights_only=False: whoever could write the run's storage (its
    digests too) ran code on every worker at the next resume. Loading is now weights_only, allowing DeepSpeed's own
    record classes (a real ZeRO-2 checkpoint loads), and a planted file is refused naming it."""
    import subprocess
    import sys

    from ..conftest import REPO

    pwned = tmp_path / "pwned"
    argv = [sys.executable, "-c", _DEEPSPEED_RESUME, str(tmp_path / "ck"), str(pwned), str(zero_stage), bf16]
    res = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert "clean checkpoint loaded" in res.stdout, res.stdout + res.stderr[-3000:]
    refused = [line for line in res.stdout.splitlines() if line.startswith("REFUSED")]
    assert refused and "s3://runs/r/checkpoint-1/" in refused[0] and ".pt: refused to load" in refused[0]
    assert "posix.system" in refused[0] or "os.system" in refused[0], refused[0]
    assert not pwned.exists()


@pytest.mark.parametrize("in_ray_train", [True, False])
def test_a_checkpoint_keeps_rank_0s_undelivered_metrics_and_a_restore_reads_them(in_ray_train, tmp_path, monkeypatch):
    """``Checkpointer.save(..., tracking_backlog=...)`` puts the metrics MLflow had not taken into rank 0's files
    (verified with its manifest); ``restore`` hands them back for the resumed run's tracker. In a Ray Train worker the
    save goes through ``ray.train.report`` (stood in by what it does with pbp's upload function: call it with the
    checkpoint's directory name); outside it (a loop run in this process) it is committed directly, the same way."""
    import ray.train

    from pbp.train.dist import DistContext

    reported: list[dict] = []

    def report(metrics, checkpoint, checkpoint_dir_name, checkpoint_upload_fn):
        reported.append(metrics)
        checkpoint_upload_fn(checkpoint, checkpoint_dir_name)

    monkeypatch.setattr(ray.train, "report", report)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # (tempfile caches TMPDIR once read)
    ctx = DistContext(0, 1, 0, 0, in_ray_train=in_ray_train)
    saver = ckpt.Checkpointer(str(tmp_path / "run"), ctx, keep_last=2)
    backlog = [["valid_loss", 0.5, 1_700_000_000_000, 3], ["train_loss", 0.25, 1_700_000_000_001, 3]]
    commit = ckpt.CommitRecord(step=3, world_size=1, run_name="r", mlflow_run_id="abc")
    saver.save(lambda d, up: (d / "state.pt").write_bytes(b"s"), commit, {"step": 3}, tracking_backlog=backlog)
    name = ckpt.checkpoint_name(3)
    assert ckpt.TRACKING_BACKLOG in {f["path"] for f in _manifest(tmp_path, name)["files"]}
    restored = ckpt.Checkpointer(str(tmp_path / "run"), DistContext.single(), keep_last=2).restore()
    assert restored is not None and restored.tracking_backlog == backlog
    restored.cleanup()
    saver.save(lambda d, up: (d / "state.pt").write_bytes(b"s"), ckpt.CommitRecord(step=4, world_size=1), {"step": 4})
    again = saver.restore()  # nothing undelivered at step 4: no file, an empty backlog
    assert again is not None and again.tracking_backlog == [] and again.name == ckpt.checkpoint_name(4)
    assert reported == ([{"step": 3}, {"step": 4}] if in_ray_train else [])
