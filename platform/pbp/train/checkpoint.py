"""Checkpoints: every rank saves its DeepSpeed shard; manifests make a checkpoint complete; loading falls back.

A checkpoint directory ``<run dir>/checkpoint-<step>/`` (every rank uploads its files into it through
``ray.train.report``'s upload hook, each file read once and hashed on the way) holds:
    ds/...                    DeepSpeed's files (model states from rank 0, one optimizer shard per rank)
    rank-<r>.json             per rank: its files with sizes and sha256, and its data reader's position
    pbp_checkpoint.json       rank 0's commit record: step, world size, MLflow run id, schedule state
It is COMPLETE when the commit record and every rank's manifest are present and every listed file exists with its
size (sha256 is checked after download, before loading). An incomplete one (a crash during upload, a missing or
damaged shard) is skipped with a warning naming it, and the previous complete one is used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path, PurePosixPath
from typing import IO, Any, cast

from pbp.data.storage import SMALL_READ_RETRIES, with_retries
from pbp.train.dist import DistContext, broadcast

log = logging.getLogger("pbp.train.checkpoint")

COMMIT = "pbp_checkpoint.json"
TRACKING_BACKLOG = "tracking_backlog.json"
"""Rank 0's metrics MLflow had not taken when the checkpoint was saved (``Tracker.backlog``): sent on resume."""
DS_TAG = "ds"
CKPT_RE = re.compile(r"^checkpoint-(\d{9})$")


def scratch_dir() -> Path:
    """A fresh local directory for one checkpoint's files (saving or loading)."""
    from pbp.scratch import make

    return make("train")


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:09d}"


def rank_manifest_name(rank: int) -> str:
    return f"rank-{rank:05d}.json"


UPLOAD_CHUNK = 8 << 20
UPLOAD_THREADS = 8


def _parent_dir(fs: Any, dest: str) -> None:
    """A local filesystem needs the directory; S3 has none to make."""
    if fs.type_name == "local":
        fs.create_dir(dest.rsplit("/", 1)[0], recursive=True)


def _copy_hashing(src: Any, dst: Any) -> tuple[int, str]:
    """Copy stream to stream in chunks, hashing the bytes on the way (read once). -> (bytes, sha256)."""
    h, n = hashlib.sha256(), 0
    while chunk := src.read(UPLOAD_CHUNK):
        h.update(chunk)  # releases the GIL, like the I/O: files hash and copy in parallel
        dst.write(chunk)
        n += len(chunk)
    return n, h.hexdigest()


def _put_file(fs: Any, src: Path, dest: str, what: str) -> tuple[int, str]:
    """Copy one local file to ``dest`` in ``fs``, hashing the bytes as they go. -> (bytes, sha256)."""

    def attempt() -> tuple[int, str]:
        _parent_dir(fs, dest)
        with src.open("rb") as f, fs.open_output_stream(dest) as out:
            return _copy_hashing(f, out)

    return with_retries(what, attempt, retries=SMALL_READ_RETRIES)


def _get_file(fs: Any, src: str, dest: Path, what: str) -> str:
    """Copy ``src`` in ``fs`` to the local ``dest``, hashing the bytes as they arrive. -> sha256."""
    dest.parent.mkdir(parents=True, exist_ok=True)

    def attempt() -> str:
        with fs.open_input_stream(src) as f, dest.open("wb") as out:
            return _copy_hashing(f, out)[1]

    return with_retries(what, attempt, retries=SMALL_READ_RETRIES)


def _put_json(fs: Any, dest: str, doc: dict, what: str) -> None:
    data = json.dumps(doc, indent=1).encode()

    def attempt() -> None:
        _parent_dir(fs, dest)
        with fs.open_output_stream(dest) as out:
            out.write(data)

    with_retries(what, attempt, retries=SMALL_READ_RETRIES)


class _TeeWriter:
    """A binary file-like object (``write``, ``flush``) for ``torch.save``: each chunk goes to the local file, into the
    sha256 and into an upload stream already open in storage, so the file is uploaded as it is serialised and never
    read back. The local copy is what a failed stream is retried from."""

    def __init__(self, path: Path, fs: Any, dest: str) -> None:
        self.local = path.open("wb")
        self.sha, self.nbytes = hashlib.sha256(), 0
        self.remote: Any = None
        self.error: BaseException | None = None
        try:
            _parent_dir(fs, dest)
            self.remote = fs.open_output_stream(dest)
        except Exception as e:  # retried from the local copy in finish()
            self.error = e

    def write(self, data: Any) -> int:
        self.local.write(data)
        self.sha.update(data)
        if self.remote is not None and self.error is None:
            try:
                self.remote.write(data)  # buffered; parts go up in pyarrow's background threads
            except Exception as e:
                self.error = e
        n = memoryview(data).nbytes
        self.nbytes += n
        return n

    def flush(self) -> None:
        self.local.flush()


class Upload:
    """One rank's checkpoint going up to ``run/name``, each file read at most once, uploads overlapping the writing:

    - ``open(path)``: a writer for ``torch.save`` that uploads and hashes the bytes while they are written;
    - ``ready(path)``: a file someone else wrote is complete: it goes up now (hashed from the bytes sent) while the
      next one is written;
    - ``finish``: sends the rest, waits, then writes the rank manifest (sizes and sha256) and, for rank 0, the commit
      record.

    A checkpoint is trusted only once complete (``check_complete``), so the order across ranks does not matter, and a
    rank that fails half-way leaves files without a manifest: an incomplete checkpoint that loading skips.
    """

    def __init__(self, local_dir: Path, run: StorageDir, name: str) -> None:
        self.local, self.run, self.name = local_dir.resolve(), run, name
        self._pool: ThreadPoolExecutor | None = None
        self._sent: dict[Path, Future[dict[str, Any]]] = {}

    def _submit(self, path: Path, fn: Callable[[], dict[str, Any]]) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=UPLOAD_THREADS, thread_name_prefix="pbp-ckpt-upload")
        self._sent[path] = self._pool.submit(fn)

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.local).as_posix()

    @contextmanager
    def open(self, path: Path) -> Iterator[IO[bytes]]:
        """Write ``path`` (inside the local directory) through the returned writer: uploaded as it is written."""
        path = Path(path).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        rel = self._rel(path)
        tee = _TeeWriter(path, self.run.fs, f"{self.run.path}/{self.name}/{rel}")
        try:
            yield cast("IO[bytes]", tee)  # what torch.save uses of a file: write and flush
        except BaseException:
            tee.local.close()
            if tee.remote is not None:  # a partial object, without a manifest: an incomplete checkpoint
                with suppress(Exception):
                    tee.remote.close()
            raise
        tee.local.close()

        def close() -> dict[str, Any]:
            try:
                if tee.error is None and tee.remote is not None:
                    tee.remote.close()  # waits for the last parts
                    return {"path": rel, "bytes": tee.nbytes, "sha256": tee.sha.hexdigest()}
            except Exception as e:
                tee.error = e
            log.warning("upload of %s/%s failed while writing (%s); sending it again from the local copy",
                        self.run.url(self.name), rel, tee.error)  # fmt: skip
            return self._put(path)

        self._submit(path, close)

    def ready(self, path: Path) -> None:
        """``path`` (inside the local directory) is written and closed: start its upload."""
        path = Path(path).resolve()
        if path not in self._sent:
            self._submit(path, lambda: self._put(path))

    def _put(self, p: Path) -> dict[str, Any]:
        rel = self._rel(p)
        dest = f"{self.run.path}/{self.name}/{rel}"
        nbytes, digest = _put_file(self.run.fs, p, dest, f"upload {self.run.url(self.name)}/{rel}")
        return {"path": rel, "bytes": nbytes, "sha256": digest}

    def finish(self, rank: int, step: int, reader_state: dict, commit: dict | None) -> None:
        """Upload what is not sent yet, wait for every file, then the manifest and the commit record. Can be called
        again after it raised (Ray Train retries an upload): only the files that failed go up again."""
        try:
            for p in sorted(self.local.rglob("*")):
                if p.is_file() and p.name != COMMIT and not p.name.startswith("rank-"):
                    self.ready(p)
            wait(self._sent.values())
            failed = [self._sent.pop(p) for p, f in list(self._sent.items()) if f.exception() is not None]
            if failed:
                failed[0].result()  # raises the first failure, naming the file; all of them go again next time
            files = sorted((f.result() for f in self._sent.values()), key=lambda f: f["path"])
        finally:
            self.abandon()
        dest = f"{self.run.path}/{self.name}"
        doc = {"rank": rank, "step": step, "files": files, "reader": reader_state}
        manifest = rank_manifest_name(rank)
        _put_json(self.run.fs, f"{dest}/{manifest}", doc, f"upload {self.run.url(self.name)}/{manifest}")
        if commit is not None:
            where = f"upload {self.run.url(self.name)}/{COMMIT}"
            _put_json(self.run.fs, f"{dest}/{COMMIT}", {"step": step, **commit}, where)

    def abandon(self) -> None:
        """Stop: wait for the uploads under way, start no more."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def upload(local_dir: Path, run: StorageDir, name: str, rank: int, step: int, reader_state: dict,
           commit: dict | None) -> None:  # fmt: skip
    """Upload the files in ``local_dir`` as this rank's part of checkpoint ``run/name`` (see ``Upload``)."""
    Upload(local_dir, run, name).finish(rank, step, reader_state, commit)


@contextmanager
def _checkpoint_engine(engine: Any, **methods: Callable[..., Any]) -> Iterator[Any]:
    """DeepSpeed's ``engine.checkpoint_engine`` with ``methods`` in place of its own while inside (-> the original);
    every other attribute is the original's."""
    inner = engine.checkpoint_engine

    class Wrapped:
        def __getattr__(self, attr: str) -> Any:
            return methods[attr] if attr in methods else getattr(inner, attr)

    engine.checkpoint_engine = Wrapped()
    try:
        yield inner
    finally:
        engine.checkpoint_engine = inner


@contextmanager
def upload_as_saved(engine: Any, up: Upload) -> Iterator[None]:
    """While DeepSpeed's ``engine.save_checkpoint`` runs inside: every file its checkpoint engine saves goes up as
    it is written (``Upload.open``, with DeepSpeed's default engine, which is a ``torch.save``), or as soon as it is
    written (``Upload.ready``, any other engine)."""
    inner = engine.checkpoint_engine

    def save(state_dict: Any, path: str) -> None:
        if type(inner).__name__ == "TorchCheckpointEngine" and hasattr(inner, "zipfile_serialization"):
            import torch

            with up.open(Path(path)) as f:  # what TorchCheckpointEngine.save does, into the upload
                torch.save(state_dict, f, _use_new_zipfile_serialization=inner.zipfile_serialization)
        else:
            inner.save(state_dict, path)
            up.ready(Path(path))

    with _checkpoint_engine(engine, save=save):
        yield


DEEPSPEED_SAFE_GLOBALS = (
    ("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
    ("deepspeed.runtime.fp16.loss_scaler", "DynamicLossScaler"),
    ("deepspeed.runtime.zero.config", "ZeroStageEnum"),
    ("deepspeed.utils.tensor_fragment", "fragment_address"),
)
"""The classes DeepSpeed's checkpoints hold besides tensors and plain containers (its ZeRO optimizer states: the
loss scaler, the ZeRO stage, fragment addresses), found with ``torch.serialization.get_unsafe_globals_in_checkpoint``
on checkpoints of ZeRO 0-2, fp32 and bf16. Plain records: building one runs no code of the file's choosing."""


@contextmanager
def load_weights_only(engine: Any, local: Path, url: str) -> Iterator[None]:
    """While DeepSpeed's ``engine.load_checkpoint`` of the checkpoint downloaded to ``local`` (from ``url``) runs
    inside: every file is read with ``torch.load(weights_only=True)``, allowing DeepSpeed's few record classes
    (:data:`DEEPSPEED_SAFE_GLOBALS`). DeepSpeed's own engine unpickles with ``weights_only=False``, so a checkpoint
    written by anyone who can write the run's storage (digests included) would run its code on every worker. A file
    naming anything else is refused (ValueError naming it) before any of it is used."""
    import importlib
    import pickle

    import torch

    allowed = [getattr(importlib.import_module(module), name) for module, name in DEEPSPEED_SAFE_GLOBALS]

    def load(path: str, map_location: Any = None) -> Any:
        try:
            with torch.serialization.safe_globals(allowed):
                return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as e:
            where = f"{url}/{Path(path).relative_to(local)}" if Path(path).is_relative_to(local) else path
            why = next((line for line in str(e).splitlines() if "GLOBAL" in line or "global" in line), str(e))
            raise ValueError(f"{where}: refused to load: {why.strip()} (a DeepSpeed checkpoint holds tensors and "
                             "DeepSpeed's own records only; was the run's storage written by someone else?)") from None  # fmt: skip

    with _checkpoint_engine(engine, load=load):
        yield


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

    def put_dir(self, local: Path, rel: str) -> None:
        """Copy the local folder ``local`` to ``rel`` in this run directory (S3 has no folders to make; a local
        filesystem needs it made first)."""
        from pyarrow import fs as pafs

        if isinstance(self.fs, pafs.LocalFileSystem):
            self.fs.create_dir(f"{self.path}/{rel}", recursive=True)
        pafs.copy_files(str(local), f"{self.path}/{rel}", source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=self.fs)  # fmt: skip

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


def newest_commit(run: StorageDir) -> tuple[str, CommitRecord] | None:
    """The newest complete checkpoint's URL and commit record (None: no complete checkpoint)."""
    name = newest_complete(run)
    if name is None:
        return None
    return run.url(name), CommitRecord.from_json(run.read_json(f"{name}/{COMMIT}") or {}, run.url(f"{name}/{COMMIT}"))


def exported(run: StorageDir, files: Sequence[str], folder: str = "final_model") -> bool:
    """Whether the run's exported model (``folder``) holds every one of ``files``, each non-empty."""
    return all(run.size(f"{folder}/{f}") for f in files)


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
    for path in files:  # keys are names, not paths: "a/../../x" is a legal S3 key that would land outside ``local``
        rel = PurePosixPath(path[len(src) + 1 :])
        if not path.startswith(f"{src}/") or rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"{run.url(name)}: holds a file named {path[len(src) + 1 :]!r}, which would be written "
                             f"outside {local}; refused (a checkpoint holds plain relative names)")  # fmt: skip

    def fetch(path: str) -> tuple[str, str]:
        rel = path[len(src) + 1 :]
        # One file per attempt: a 503 on a small file's read is not retried by the SDK (storage.SMALL_READ_RETRIES),
        # and retrying the whole directory would redo every other file each time.
        return rel, _get_file(run.fs, path, local / rel, f"download {run.url(name)}/{rel}")

    with ThreadPoolExecutor(max_workers=max(1, min(UPLOAD_THREADS, len(files)))) as pool:
        digests = dict(pool.map(fetch, files))
    commit = json.loads((local / COMMIT).read_text())
    mine = json.loads((local / rank_manifest_name(rank)).read_text()) if rank < commit["world_size"] else {}
    for doc_rank in {0, rank} & set(range(commit["world_size"])):
        doc = json.loads((local / rank_manifest_name(doc_rank)).read_text())
        for f in doc["files"]:
            if digests.get(f["path"]) != f["sha256"]:
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
    config: dict[str, Any] = field(default_factory=dict)
    """The run's identity: the config fields it was started with (``pbp.train.run_identity``); a re-run with other
    values is refused."""

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

        return StorageDir(resolve().pyarrow_fs(url), url[len("s3://") :].rstrip("/"))
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
    tracking_backlog: list[list[Any]] = field(default_factory=list)
    """Metrics the run had not delivered to MLflow when this checkpoint was saved (``TRACKING_BACKLOG``)."""

    def cleanup(self) -> None:
        shutil.rmtree(self.local.parent, ignore_errors=True)


class Checkpointer:
    """One run's checkpoints: restore the newest complete one, save (through ``ray.train.report`` in a Ray Train
    worker, else committed directly), keep the last N.

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
        backlog_file = local / TRACKING_BACKLOG  # written by rank 0, verified with its manifest
        backlog = json.loads(backlog_file.read_text()) if backlog_file.is_file() else []
        return Restored(chosen, self.run.url(chosen), local, commit, reader, backlog)

    def save(
        self, write: Callable[[Path, Upload], None], commit: CommitRecord, metrics: dict[str, Any],
        reader_state: dict[str, Any] | None = None, tracking_backlog: list[list[Any]] | None = None,
    ) -> None:  # fmt: skip
        """``write(dir, upload)`` puts this rank's files into a fresh directory, through ``upload.open`` or announcing
        them with ``upload.ready`` where it can (see ``Upload``; the rest go up when it returns). Then the manifests
        through ``ray.train.report`` (committed directly outside Ray Train), and retention. ``tracking_backlog``
        (rank 0): the metrics MLflow has not taken yet, kept with the checkpoint so that a resumed run sends them
        (``Restored.tracking_backlog``)."""
        import torch

        local = scratch_dir()
        name = checkpoint_name(commit.step)
        up = Upload(local, self.run, name)
        try:
            write(local, up)
            if self.ctx.is_main and tracking_backlog:
                (local / TRACKING_BACKLOG).write_text(json.dumps(tracking_backlog))
        except BaseException:
            up.abandon()
            shutil.rmtree(local, ignore_errors=True)
            raise
        doc = {k: v for k, v in commit.to_json().items() if k != "step"} if self.ctx.is_main else None
        try:
            if self.ctx.in_ray_train:
                self._report(
                    name, local, metrics, lambda: up.finish(self.ctx.rank, commit.step, reader_state or {}, doc)
                )
            else:  # a loop run in this process: the same upload and commit, no Ray Train session to tell
                up.finish(self.ctx.rank, commit.step, reader_state or {}, doc)
        finally:
            shutil.rmtree(local, ignore_errors=True)
        if torch.distributed.is_initialized():
            torch.distributed.barrier()  # every rank's report (and so its upload) has returned
        if self.ctx.is_main:
            for old in prune(self.run, self.keep_last):
                log.debug("retention: deleted %s", self.run.url(old))

    def _report(self, name: str, local: Path, metrics: dict[str, Any], finish: Callable[[], None]) -> None:
        """Ray Train's report of checkpoint ``name`` (files in ``local``), uploaded by pbp's ``finish``."""
        import ray.train

        def upload_fn(_: ray.train.Checkpoint, dir_name: str) -> ray.train.Checkpoint:
            assert dir_name == name, (dir_name, name)
            finish()
            return ray.train.Checkpoint(path=f"{self.run.path}/{dir_name}", filesystem=self.run.fs)

        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(str(local)),
            checkpoint_dir_name=name,
            checkpoint_upload_fn=upload_fn,  # pbp's upload: each file read once (hashed on the way), in parallel
        )
