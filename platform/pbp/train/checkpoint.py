"""Checkpoints: every rank saves its DeepSpeed shard; manifests make a checkpoint complete; loading falls back.

A checkpoint directory ``<run dir>/checkpoint-<step>/`` (Ray Train merges every rank's files into it) holds:
    ds/...                    DeepSpeed's files (model states from rank 0, one optimizer shard per rank)
    rank-<r>.json             per rank: its files with sizes and sha256, and its data reader's position
    pbp_checkpoint.json       rank 0's commit record: step, world size, MLflow run id, schedule state
It is COMPLETE when the commit record and every rank's manifest are present and every listed file exists with its
size (sha256 is checked after download, before loading). An incomplete one (a crash during upload, a missing or
damaged shard) is skipped with a warning naming it, and the previous complete one is used.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from pbp.data.shards import file_sha256
from pbp.data.storage import SMALL_READ_RETRIES, with_retries
from pbp.train.dist import DistContext, broadcast

log = logging.getLogger("pbp.train.checkpoint")

COMMIT = "pbp_checkpoint.json"
DS_TAG = "ds"
CKPT_RE = re.compile(r"^checkpoint-(\d{9})$")


def scratch_dir() -> Path:
    """A fresh local directory for one checkpoint's files (saving or loading)."""
    return Path(tempfile.mkdtemp(prefix="pbp-train-"))


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:09d}"


def rank_manifest_name(rank: int) -> str:
    return f"rank-{rank:05d}.json"


def write_manifests(local_dir: Path, rank: int, step: int, reader_state: dict, commit: dict | None) -> None:
    """After DeepSpeed wrote this rank's files into ``local_dir``: the rank manifest, and (rank 0) the commit."""
    files = [
        {"path": p.relative_to(local_dir).as_posix(), "bytes": p.stat().st_size, "sha256": file_sha256(p)}
        for p in sorted(local_dir.rglob("*"))
        if p.is_file() and p.name != COMMIT and not p.name.startswith("rank-")
    ]
    doc = {"rank": rank, "step": step, "files": files, "reader": reader_state}
    (local_dir / rank_manifest_name(rank)).write_text(json.dumps(doc, indent=1))
    if commit is not None:
        (local_dir / COMMIT).write_text(json.dumps({"step": step, **commit}, indent=1))


@dataclass
class StorageDir:
    """A run directory in storage, through a pyarrow filesystem (S3 or local)."""

    fs: Any
    path: str
    """Path inside ``fs`` (``bucket/prefix/run`` for S3)."""

    def url(self, name: str = "") -> str:
        from pyarrow import fs as pafs

        scheme = "s3://" if isinstance(self.fs, pafs.S3FileSystem) else ""
        return f"{scheme}{self.path}/{name}".rstrip("/")

    def read_json(self, rel: str) -> dict | None:
        from pyarrow import fs as pafs

        def read() -> dict | None:
            info = self.fs.get_file_info(f"{self.path}/{rel}")
            if info.type != pafs.FileType.File:
                return None
            with self.fs.open_input_stream(f"{self.path}/{rel}") as f:
                return json.loads(f.read())

        # A 503 on a small read surfaces as a non-retried INTERNAL_FAILURE (see storage.SMALL_READ_RETRIES).
        return with_retries(f"read {self.url(rel)}", read, retries=SMALL_READ_RETRIES)

    def size(self, rel: str) -> int | None:
        from pyarrow import fs as pafs

        info = self.fs.get_file_info(f"{self.path}/{rel}")
        return info.size if info.type == pafs.FileType.File else None

    def checkpoints(self) -> list[str]:
        """Checkpoint directory names, newest (highest step) first."""
        from pyarrow import fs as pafs

        sel = pafs.FileSelector(self.path, allow_not_found=True, recursive=False)
        names = [i.base_name for i in self.fs.get_file_info(sel) if i.type == pafs.FileType.Directory]
        # Some S3 servers (SeaweedFS) keep a deleted prefix as an empty "directory": only non-empty ones count.
        return sorted((n for n in names if CKPT_RE.match(n) and not self._empty(n)), reverse=True)

    def _empty(self, name: str) -> bool:
        from pyarrow import fs as pafs

        sel = pafs.FileSelector(f"{self.path}/{name}", allow_not_found=True, recursive=True)
        return not any(i.type == pafs.FileType.File for i in self.fs.get_file_info(sel))


def check_complete(run: StorageDir, name: str) -> str | None:
    """None if ``name`` is a complete checkpoint, else why not."""
    commit = run.read_json(f"{name}/{COMMIT}")
    if commit is None:
        return f"no {COMMIT} (not committed)"
    for r in range(int(commit["world_size"])):
        rank_doc = run.read_json(f"{name}/{rank_manifest_name(r)}")
        if rank_doc is None:
            return f"rank {r}'s manifest is missing"
        for f in rank_doc["files"]:
            size = run.size(f"{name}/{f['path']}")
            if size is None:
                return f"{f['path']} (rank {r}) is missing"
            if size != f["bytes"]:
                return f"{f['path']} (rank {r}) has {size} bytes, the manifest says {f['bytes']}"
    return None


def newest_complete(run: StorageDir) -> str | None:
    for name in run.checkpoints():
        problem = check_complete(run, name)
        if problem is None:
            return name
        log.warning("skipping incomplete checkpoint %s: %s", run.url(name), problem)
    return None


def prune(run: StorageDir, keep_last: int) -> list[str]:
    """Keep the newest ``keep_last`` complete checkpoints; delete everything older. -> deleted names."""
    names = run.checkpoints()
    complete = [n for n in names if check_complete(run, n) is None][:keep_last]
    if len(complete) < keep_last:
        return []
    oldest_kept = complete[-1]
    deleted = [n for n in names if n < oldest_kept]
    for n in deleted:
        run.fs.delete_dir(f"{run.path}/{n}")
    return deleted


def download(run: StorageDir, name: str, local: Path, rank: int) -> tuple[dict, dict]:
    """Copy a complete checkpoint to ``local`` and verify the digests this rank will load.

    -> (commit record, this rank's manifest). Raises ValueError naming the file on a digest mismatch.
    """
    from pyarrow import fs as pafs

    local.mkdir(parents=True, exist_ok=True)
    src = f"{run.path}/{name}"
    infos = with_retries(f"list {run.url(name)}", lambda: run.fs.get_file_info(pafs.FileSelector(src, recursive=True)))
    files = [i.path for i in infos if i.type == pafs.FileType.File]

    def fetch(path: str) -> None:
        dest = local / path[len(src) + 1 :]
        dest.parent.mkdir(parents=True, exist_ok=True)
        # One file per attempt: a 503 on a small file's read is not retried by the SDK (storage.SMALL_READ_RETRIES),
        # and retrying the whole directory would redo every other file each time.
        with_retries(f"download {run.url(name)}/{dest.relative_to(local)}", lambda: pafs.copy_files(
            path, str(dest), source_filesystem=run.fs, destination_filesystem=pafs.LocalFileSystem()),
            retries=SMALL_READ_RETRIES)  # fmt: skip

    with ThreadPoolExecutor(max_workers=min(8, max(1, len(files)))) as pool:
        list(pool.map(fetch, files))
    commit = json.loads((local / COMMIT).read_text())
    mine = json.loads((local / rank_manifest_name(rank)).read_text()) if rank < commit["world_size"] else {}
    for doc_rank in {0, rank} & set(range(commit["world_size"])):
        doc = json.loads((local / rank_manifest_name(doc_rank)).read_text())
        for f in doc["files"]:
            if file_sha256(local / f["path"]) != f["sha256"]:
                raise ValueError(f"{run.url(name)}/{f['path']}: sha256 differs from rank {doc_rank}'s manifest")
    return commit, mine


# ---- the API the training loops use: one typed commit record, restore, save through Ray Train, prune ---------


@dataclass
class CommitRecord:
    """Rank 0's commit record (``pbp_checkpoint.json``), written last: what a resumed run needs."""

    step: int
    """Steps (pretraining) or epochs (fine-tuning) done."""
    world_size: int
    run_name: str = ""
    mlflow_run_id: str | None = None
    schedule: dict[str, Any] = field(default_factory=dict)
    """The learning-rate schedule's state."""
    nonfinite_steps: int = 0
    job: dict[str, Any] = field(default_factory=dict)
    """Job-specific resume state (fine-tuning: stage, epoch in the stage, early-stopping state)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any], where: str) -> CommitRecord:
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in doc.items() if k in known})
        except TypeError as e:
            raise ValueError(f"{where}: not a pbp commit record ({e})") from None


def storage_dir(url: str) -> StorageDir:
    """A run's directory in storage from its URL: S3 through pyarrow with the resolved endpoint, or a local path."""
    from pyarrow import fs as pafs

    if url.startswith("s3://"):
        from pbp.stack.endpoints import resolve

        return StorageDir(resolve().pyarrow_fs(), url[len("s3://") :].rstrip("/"))
    return StorageDir(pafs.LocalFileSystem(), str(Path(url).expanduser().resolve()))


@dataclass
class Restored:
    """A complete checkpoint downloaded (and its digests verified) for this rank."""

    name: str
    url: str
    local: Path
    """The checkpoint's files here (job files, ``ds/`` for DeepSpeed)."""
    commit: CommitRecord
    reader_state: dict[str, Any] | None
    """This rank's data-reader position, when the world size is unchanged."""

    def cleanup(self) -> None:
        shutil.rmtree(self.local.parent, ignore_errors=True)


class Checkpointer:
    """One run's checkpoints: restore the newest complete one, save through ``ray.train.report``, keep the last N.

    Every rank calls ``restore`` and ``save`` (they synchronise); rank 0 chooses and prunes.
    """

    def __init__(self, run_url: str, ctx: DistContext, keep_last: int) -> None:
        self.run, self.ctx, self.keep_last = storage_dir(run_url), ctx, keep_last

    def restore(self) -> Restored | None:
        chosen = broadcast(newest_complete(self.run) if self.ctx.is_main else None, self.ctx)
        if chosen is None:
            return None
        local = scratch_dir() / chosen
        commit_doc, mine = download(self.run, chosen, local, self.ctx.rank)
        commit = CommitRecord.from_json(commit_doc, self.run.url(f"{chosen}/{COMMIT}"))
        reader = mine.get("reader") if commit.world_size == self.ctx.world_size else None
        return Restored(chosen, self.run.url(chosen), local, commit, reader)

    def save(
        self, write: Callable[[Path], None], commit: CommitRecord, metrics: dict[str, Any],
        reader_state: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        """``write(dir)`` puts this rank's files into a fresh directory; then manifests, the report, retention."""
        import ray.train
        import torch

        local = scratch_dir()
        write(local)
        doc = {k: v for k, v in commit.to_json().items() if k != "step"} if self.ctx.is_main else None
        write_manifests(local, self.ctx.rank, commit.step, reader_state or {}, doc)
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(str(local)),
            checkpoint_dir_name=checkpoint_name(commit.step),
        )
        shutil.rmtree(local, ignore_errors=True)
        if torch.distributed.is_initialized():
            torch.distributed.barrier()  # every rank's report (and so its upload) has returned
        if self.ctx.is_main:
            for name in prune(self.run, self.keep_last):
                log.info("retention: deleted %s", self.run.url(name))
