"""The streaming reader: shards from S3 (or disk) to corrupted, length-bucketed batches ready for the model.

    ds = PretrainingStream(ReaderConfig(url="s3://pbp-data/swissprot/v1/"), rank=0, world_size=2)
    loader = StatefulLoader(ds, num_workers=2)
    for batch in loader: ...               # batch["input_tokens"] (B, L) ... see collate()
    state = loader.state_dict()            # save with the checkpoint; PretrainingStream(..., state=state) resumes

Splitting: in ``exact`` mode (one pass, for evaluation) shard ``i`` goes to global reader ``i mod (world x workers)``
(reader = rank x DataLoader workers + worker), so ranks and workers read disjoint shards covering the split, and every
sample is yielded exactly once. In ``resampled`` mode (pretraining, infinite) each reader draws shards with
replacement from a generator seeded by (seed, rank, worker), as webdataset's ResampledShards.

Resume guarantee: exact. A reader's state is its position (shards drawn or passed, samples read from the current
one), the samples it holds but has not yielded yet (shuffle buffer and each bucket's partial batch, as references
``[shard draw, index in shard]``, re-read on resume) and the number of batches it yielded; its random generators
(shuffling, bucket choice, cropping, corruption) are re-seeded from that count after every batch. A resumed stream
therefore yields exactly the batches, corruption included, that the uninterrupted stream would have yielded next.
The state costs two integers per held sample (``shuffle_buffer + sum(batch sizes)`` at most).

Damaged shards: a shard is read whole and verified (size, then sha256 against the manifest) before any of its
samples is used, and its contents are checked; a missing, truncated, altered or malformed shard raises
:class:`ShardError` naming its URL (and the member); with ``on_shard_error="skip"`` it is counted
(``batch["shard_errors"]``) and reading continues with the next shard.

Formats: a format-2 dataset is read from each shard's ``__pbp_index__`` member (token ids, GO indices and accessions
as arrays, checked as arrays: :mod:`pbp.data.shard_index`); a format-1 dataset from its JSON members (each member's
fields checked). The next shard is fetched and verified in a background thread while the current one is read (two
shards in memory at most).
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pbp.data.episodes import DEFAULT_BUCKETS, Bucket, choose_bucket
from pbp.data.shard_index import MEMBER as INDEX_MEMBER
from pbp.data.shard_index import decode_index
from pbp.data.shards import DatasetError, load_manifest
from pbp.data.storage import Store
from pbp.model.pretraining import CorruptionConfig, corrupt_sparse
from pbp.model.tokenizer import ADDED_TOKENS_PER_SEQ, PAD_ID, encode_bytes, encode_normalized


class ShardError(DatasetError):
    """A corrupt, truncated or altered shard; the message names its URL."""


@dataclass
class ReaderConfig:
    url: str
    """Dataset URL (s3://bucket/prefix/ or a directory): must hold a manifest.json."""
    split: Literal["train", "valid"] = "train"
    mode: Literal["resampled", "exact"] = "resampled"
    shuffle_buffer: int = 1000
    """Samples held for shuffling (0 disables)."""
    buckets: tuple[Bucket, ...] = DEFAULT_BUCKETS
    seed: int = 0
    on_shard_error: Literal["raise", "skip"] = "raise"
    corruption: CorruptionConfig = field(default_factory=CorruptionConfig)
    corrupt_inputs: bool = True
    """Apply the pretraining corruption (False for evaluation of clean inputs)."""


@dataclass
class Position:
    shards_started: int = 0
    """Shards this reader has opened (exact: index in its list; resampled: draws so far)."""
    in_shard: int = 0
    """Samples read from the current shard."""
    epoch: int = 0
    shard_errors: int = 0
    batches: int = 0
    """Batches this reader has yielded (seeds its generators)."""
    buffer: list[list[int]] = field(default_factory=list)
    """Held in the shuffle buffer, in order: ``[shard draw, index in shard]`` each."""
    pending: list[list[list[int]]] = field(default_factory=list)
    """Each bucket's partial batch, the same way."""
    draining: bool = False
    """The shards are done and the shuffle buffer is being emptied (exact mode's end)."""
    bytes_read: int = 0
    """Shard bytes this reader has read from storage (for the ``pbp_data_bytes_read`` metric)."""


SAMPLE_FIELDS = {"accession": str, "sequence": str, "go": list}
_INT = {int}
_scan_json = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
"""The C scanner under ``json.loads``, called on the member's text directly: 2.5x faster than ``json.loads`` on a
shard member (which first sniffs the bytes' encoding and wraps the scanner in three Python calls)."""


def _parse_member(url: str, member: str, data: memoryview) -> object:
    """A member's JSON; anything else (not UTF-8, not JSON, trailing data) is a ShardError naming both."""
    try:
        text = str(data, "utf-8")
    except UnicodeDecodeError as e:
        raise ShardError(f"{url}: member {member}: not JSON ({e})") from None
    try:
        obj, end = _scan_json(text, 0)
        if end == len(text):
            return obj
    except (StopIteration, json.JSONDecodeError):
        pass
    try:  # blanks around the value, or not JSON: json.loads accepts it or says why
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ShardError(f"{url}: member {member}: not JSON ({e})") from None


def _check_sample(url: str, member: str, sample: object, n_annotations: int | None) -> dict:
    """A shard member's JSON has the fields the reader uses, with their types; else a ShardError naming both."""
    if type(sample) is dict:  # the common case in a few C calls; the checks below explain a failure
        go = sample.get("go")
        ok = type(sample.get("accession")) is str and type(sample.get("sequence")) is str and type(go) is list
        if ok and (
            not go or n_annotations is None or (set(map(type, go)) == _INT and 0 <= min(go) <= max(go) < n_annotations)
        ):
            return sample
    if not isinstance(sample, dict):
        raise ShardError(f"{url}: member {member}: not a JSON object")
    for key, kind in SAMPLE_FIELDS.items():
        if key not in sample:
            raise ShardError(f"{url}: member {member}: no {key!r} field (fields: {', '.join(sorted(sample))})")
        if not isinstance(sample[key], kind):
            raise ShardError(f"{url}: member {member}: {key!r} is {type(sample[key]).__name__}, not {kind.__name__}")
    last = "" if n_annotations is None else f" (0..{n_annotations - 1})"
    raise ShardError(f"{url}: member {member}: 'go' holds an index outside the vocabulary{last}")


def _fetch_shard(store: Store, shard: dict) -> bytes:
    """A whole shard, read into memory (shards are ``shard_size_mb``, 64 MiB by default) and verified: its size and
    sha256 against the manifest; else a ShardError naming its URL."""
    url = store.join(shard["name"])
    try:
        size = store.size(shard["name"])
    except FileNotFoundError:
        raise ShardError(f"{url}: shard listed in the manifest is missing") from None
    if size != shard["bytes"]:
        raise ShardError(f"{url}: {size} bytes, the manifest says {shard['bytes']} (truncated or replaced)")
    buf = io.BytesIO()
    digest = hashlib.sha256()
    try:
        with store.open(shard["name"]) as raw:
            while chunk := raw.read(8 << 20):
                digest.update(chunk)
                buf.write(chunk)
    except OSError as e:
        raise ShardError(f"{url}: could not be read ({type(e).__name__}: {e})") from None
    if buf.tell() != shard["bytes"]:
        raise ShardError(f"{url}: read {buf.tell()} bytes, the manifest says {shard['bytes']} (truncated)")
    if digest.hexdigest() != shard["sha256"]:
        raise ShardError(f"{url}: sha256 {digest.hexdigest()[:12]}... differs from the manifest's (altered shard)")
    return buf.getvalue()


def _parse_shard(data: bytes, url: str, skip: int, n_annotations: int | None) -> Iterator[dict]:
    """Samples of a verified shard (see :func:`_fetch_shard`) after ``skip``, each member's fields checked."""
    n = 0
    for name, body in _tar_members(data, url):
        if not name.endswith(".json"):
            continue
        if n >= skip:
            yield _check_sample(url, name, _parse_member(url, name, body), n_annotations)
        n += 1


def _indexed_samples(data: bytes, shard: dict, url: str, skip: int, n_annotations: int | None) -> Iterator[dict]:
    """Samples of a verified format-2 shard after ``skip``, from its index member (where the manifest says it is),
    checked as arrays: ``{"accession", "ids", "go"}`` each, ``ids`` the framed token ids."""
    where = shard.get("index")
    if not isinstance(where, dict) or not {"offset", "bytes"} <= where.keys():
        raise ShardError(f"{url}: the manifest gives no index record for this format-2 shard")
    start, size = where["offset"], where["bytes"]
    header = data[start - _BLOCK : start] if _BLOCK <= start <= len(data) - size else b""
    if header[:100].split(b"\0", 1)[0] != INDEX_MEMBER.encode():
        raise ShardError(f"{url}: no {INDEX_MEMBER} member at byte {start}, where the manifest says it is")
    try:
        index = decode_index(memoryview(data)[start : start + size], shard["samples"], n_annotations)
    except ValueError as e:
        raise ShardError(f"{url}: member {INDEX_MEMBER}: {e}") from None
    for j in range(skip, len(index)):
        yield index.sample(j)


def _shard_samples(store: Store, shard: dict, skip: int, pos: Position | None = None, n_annotations: int | None = None,
                   data: Future[bytes] | None = None, indexed: bool = False) -> Iterator[dict]:  # fmt: skip
    """Samples of one shard, after ``skip``, only once the whole shard is verified (:func:`_fetch_shard`, or
    ``data``: that fetch already started in the background). A read that stops early (``--max-proteins``,
    resampled pretraining) so never uses a sample of an altered shard. Bytes are counted in ``pos``. ``indexed``
    (format 2): from the shard's index member, else from its JSON members."""
    raw = data.result() if data is not None else _fetch_shard(store, shard)
    if pos is not None:
        pos.bytes_read += len(raw)
    url = store.join(shard["name"])
    if indexed:
        yield from _indexed_samples(raw, shard, url, skip, n_annotations)
    else:
        yield from _parse_shard(raw, url, skip, n_annotations)


_BLOCK = 512
_REGULAR = (b"0", b"\0")


def _tar_members(data: bytes, url: str) -> Iterator[tuple[str, memoryview]]:
    """(name, contents) of each regular file of a ustar archive held in memory, without copying and about 10x faster
    than ``tarfile`` (which parses every header field into objects). Only called on a shard whose sha256 was just
    verified against the manifest, so header checksums add nothing; sizes are still checked against the data.
    Extensions that pbp never writes (PAX, GNU long names) are refused naming the shard."""
    view = memoryview(data)
    off, end = 0, len(data)
    while off + _BLOCK <= end:
        if data[off] == 0 and data.count(0, off, off + _BLOCK) == _BLOCK:  # the end-of-archive marker
            return
        try:
            size = int(data[off + 124 : off + 136].split(b"\0", 1)[0].strip() or b"0", 8)
        except ValueError:
            raise ShardError(f"{url}: corrupt shard (unreadable tar header at byte {off})") from None
        name = data[off : off + 100].split(b"\0", 1)[0].decode("utf-8", "replace")
        if data[off + 345] != 0:
            name = data[off + 345 : off + 500].split(b"\0", 1)[0].decode("utf-8", "replace") + "/" + name
        kind = data[off + 156 : off + 157]
        body = off + _BLOCK
        if body + size > end:
            raise ShardError(f"{url}: corrupt shard (member {name} runs past the end: truncated)")
        if kind in _REGULAR:
            yield name, view[body : body + size]
        elif kind in (b"x", b"g", b"L", b"K"):
            raise ShardError(f"{url}: member {name}: tar extension {kind.decode()!r} is not a pbp shard's format")
        off = body + (size + _BLOCK - 1) // _BLOCK * _BLOCK


class PretrainingStream(IterableDataset):
    """Yields collated batches (see :func:`collate`); one stream per rank, split further by DataLoader workers."""

    def __init__(
        self,
        cfg: ReaderConfig,
        rank: int = 0,
        world_size: int = 1,
        state: dict[str, Any] | None = None,
        store: Store | None = None,
    ) -> None:
        super().__init__()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.store = store or Store(cfg.url)
        self.manifest = load_manifest(cfg.url, self.store)
        split = self.manifest["splits"].get(cfg.split)
        if not split or not split["shards"]:
            raise DatasetError(f"{self.store.url}: no {cfg.split!r} shards in the manifest")
        self.shards: list[dict] = split["shards"]
        self.n_annotations = len(self.manifest["go_vocabulary"])
        self.indexed = self.manifest.get("format_version", 1) >= 2
        self.state = state or {}

    # -- which shards this reader reads ----------------------------------------------------------------------------

    def reader_index(self) -> tuple[int, int]:
        info = get_worker_info()
        w, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        return self.rank * nw + w, self.world_size * nw

    def exact_shards(self, reader: int, n_readers: int) -> list[dict]:
        mine = self.shards[reader::n_readers]
        if not mine:
            raise DatasetError(
                f"{self.store.url}: the {self.cfg.split!r} split has {len(self.shards)} shard(s) for {n_readers} "
                f"readers (ranks x DataLoader workers), so reader {reader} would read nothing: use at most "
                f"{len(self.shards)} readers, or rebuild with a smaller shard_size_mb"
            )
        return mine

    def _shard_sequence(self, reader: int, n_readers: int, start: int) -> Iterator[dict]:
        """This reader's shards from draw ``start`` on (exact: its list; resampled: seeded draws, replayed)."""
        if self.cfg.mode == "exact":
            yield from self.exact_shards(reader, n_readers)[start:]
            return
        rng = random.Random(f"{self.cfg.seed}-{self.rank}-{reader}")
        for _ in range(start):  # replay the draws made before the saved position
            rng.randrange(len(self.shards))
        while True:
            yield self.shards[rng.randrange(len(self.shards))]

    def _reread(self, refs: list[list[int]], reader: int, n_readers: int, pos: Position) -> dict[tuple[int, int], dict]:
        """The held samples of a saved state, read again from their shards (each shard once, from its first ref)."""
        wanted: dict[int, set[int]] = {}
        for draw, index in refs:
            wanted.setdefault(draw, set()).add(index)
        found: dict[tuple[int, int], dict] = {}
        if not wanted:
            return found
        first = min(wanted)
        for draw, shard in enumerate(self._shard_sequence(reader, n_readers, first), start=first):
            if draw > max(wanted):
                break
            if draw not in wanted:
                continue
            lo, hi = min(wanted[draw]), max(wanted[draw])
            try:
                for index, sample in enumerate(
                    _shard_samples(self.store, shard, lo, pos, self.n_annotations, indexed=self.indexed), start=lo
                ):
                    if index in wanted[draw]:
                        sample["_ref"] = [draw, index]
                        found[(draw, index)] = sample
                    if index >= hi:
                        break
            except ShardError:
                if self.cfg.on_shard_error == "raise":
                    raise
                pos.shard_errors += 1  # those held samples are lost, as on first reading
        return found

    # -- samples, shuffled, bucketed, collated ---------------------------------------------------------------------

    def samples(self, pos: Position, reader: int, n_readers: int) -> Iterator[dict]:
        """This reader's samples from ``pos`` on. The next shard is fetched and verified in a background thread
        while this one is parsed (two shards in memory at most), so the read overlaps the parsing."""
        shards = self._shard_sequence(reader, n_readers, pos.shards_started)
        fetcher = ThreadPoolExecutor(1, thread_name_prefix="pbp-shard-fetch")
        try:
            shard = next(shards, None)
            fetch = fetcher.submit(_fetch_shard, self.store, shard) if shard is not None else None
            while shard is not None and fetch is not None:
                current, data = shard, fetch
                shard = next(shards, None)
                fetch = fetcher.submit(_fetch_shard, self.store, shard) if shard is not None else None
                try:
                    for sample in _shard_samples(
                        self.store, current, pos.in_shard, pos, self.n_annotations, data, self.indexed
                    ):
                        sample["_ref"] = [pos.shards_started, pos.in_shard]
                        pos.in_shard += 1
                        yield sample
                except ShardError:
                    if self.cfg.on_shard_error == "raise":
                        raise
                    pos.shard_errors += 1
                pos.shards_started += 1
                pos.in_shard = 0
        finally:
            fetcher.shutdown(wait=False, cancel_futures=True)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        reader, n_readers = self.reader_index()
        saved = self.state.get(str(reader))
        pos = Position(**saved) if saved else Position()
        if len(pos.pending) not in (0, len(self.cfg.buckets)):
            raise DatasetError(
                f"{self.store.url}: the saved reader state has {len(pos.pending)} buckets, the config "
                f"{len(self.cfg.buckets)}: resume with the data.buckets the run started with"
            )
        held = self._reread(pos.buffer + [r for p in pos.pending for r in p], reader, n_readers, pos)
        buffer: list[dict] = [held[(r[0], r[1])] for r in pos.buffer if (r[0], r[1]) in held]
        pending: list[list[dict]] = [[held[(r[0], r[1])] for r in p if (r[0], r[1]) in held] for p in pos.pending] or [
            [] for _ in self.cfg.buckets
        ]
        refs = [s["_ref"] for s in buffer]  # the buffer's references, kept beside it: a batch copies them in C
        seq_lens = tuple(b.seq_len for b in self.cfg.buckets)
        rng, gen = self._generators(reader, pos.batches)

        def place(sample: dict) -> Iterator[dict[str, Any]]:
            nonlocal rng, gen
            b = choose_bucket(_residues(sample), seq_lens, rng)
            pending[b].append(sample)
            if len(pending[b]) == self.cfg.buckets[b].batch_size:
                full, pending[b] = pending[b], []
                pos.batches += 1
                pos.buffer = refs
                pos.pending = [[s["_ref"] for s in p] for p in pending]
                yield self._collate(full, self.cfg.buckets[b].seq_len, rng, gen, pos, reader)
                rng, gen = self._generators(reader, pos.batches)

        for sample in self.samples(pos, reader, n_readers):
            if self.cfg.shuffle_buffer > 0:
                if len(buffer) < self.cfg.shuffle_buffer:
                    buffer.append(sample)
                    refs.append(sample["_ref"])
                    continue
                i = rng.randrange(len(buffer))
                buffer[i], sample = sample, buffer[i]
                refs[i] = buffer[i]["_ref"]
            yield from place(sample)
        if not pos.draining:  # exact mode: drain what is left (shuffled once, also across a resume), then the rest
            rng.shuffle(buffer)
            refs[:] = [s["_ref"] for s in buffer]
            pos.draining = True
        while buffer:
            refs.pop(0)
            yield from place(buffer.pop(0))
        for b, rest in enumerate(pending):
            if rest:
                pending[b] = []
                pos.batches += 1
                pos.buffer, pos.pending = [], [[s["_ref"] for s in p] for p in pending]
                yield self._collate(rest, self.cfg.buckets[b].seq_len, rng, gen, pos, reader)
                rng, gen = self._generators(reader, pos.batches)

    def _generators(self, reader: int, batches: int) -> tuple[random.Random, torch.Generator]:
        """Fresh generators for the reader's next batch: a resumed stream draws exactly what it would have drawn."""
        rng = random.Random(f"{self.cfg.seed}-rng-{reader}-{batches}")
        return rng, torch.Generator().manual_seed(rng.getrandbits(62))

    def _collate(
        self, samples: list[dict], seq_len: int, rng: random.Random, gen: torch.Generator, pos: Position, reader: int
    ) -> dict[str, Any]:
        batch, real, present = _collate_indexed(samples, seq_len, self.n_annotations, rng)
        if self.cfg.corrupt_inputs:
            noisable = None if self.cfg.corruption.corrupt_padding else real
            c = corrupt_sparse(batch["tokens"], batch["pad_mask"], noisable, present, self.n_annotations,
                               self.cfg.corruption, gen)  # fmt: skip
            batch.update(input_tokens=c.tokens, input_annotations=c.annotations, pad_mask=c.pad_mask)
        else:
            batch.update(
                input_tokens=batch["tokens"], input_annotations=batch["annotations"], pad_mask=batch["pad_mask"]
            )
        batch["reader"] = reader
        batch["position"] = {
            "shards_started": pos.shards_started, "in_shard": pos.in_shard, "epoch": pos.epoch,
            "shard_errors": pos.shard_errors, "batches": pos.batches, "buffer": list(pos.buffer),
            "pending": [list(p) for p in pos.pending], "draining": pos.draining, "bytes_read": pos.bytes_read,
        }  # fmt: skip
        batch["shard_errors"] = pos.shard_errors
        return batch


_PAD_BYTE = bytes([PAD_ID])


def _residues(sample: dict) -> int:
    ids = sample.get("ids")
    return len(sample["sequence"]) if ids is None else len(ids) - ADDED_TOKENS_PER_SEQ


def collate(samples: list[dict], seq_len: int, n_annotations: int, rng: random.Random) -> dict[str, Any]:
    """Samples -> {"tokens" (B, L) original, "annotations" (B, A) float, "pad_mask" (B, L), "accessions", ...}.

    Sequences longer than ``seq_len`` tokens are cropped to a random window (as the original, and drawing from
    ``rng`` exactly as :func:`pbp.model.tokenizer.random_crop`). No per-residue Python: each sequence (token ids
    from a format-2 shard's index, else encoded in C from its residues) is copied into one byte buffer, viewed as a
    uint8 array.
    """
    return _collate_indexed(samples, seq_len, n_annotations, rng)[0]


def _collate_indexed(samples: list[dict], seq_len: int, n_annotations: int,
                     rng: random.Random) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:  # fmt: skip
    """:func:`collate`, and what the sparse corruption needs: the flat positions of real tokens and the flat indices
    (``row * n_annotations + term``) of present annotations, known here without scanning the dense arrays."""
    flat = bytearray(_PAD_BYTE * (len(samples) * seq_len))
    lengths = np.empty(len(samples), dtype=np.int64)
    for row, s in enumerate(samples):
        ids = s.get("ids")
        if ids is None:
            try:
                ids = encode_normalized(s["sequence"])
            except UnicodeEncodeError:
                ids = encode_bytes(s["sequence"], s["accession"])  # raises SequenceError naming the record
        if len(ids) > seq_len:
            offset = rng.randint(0, len(ids) - seq_len)
            ids = ids[offset : offset + seq_len]
        start = row * seq_len
        flat[start : start + len(ids)] = ids
        lengths[row] = len(ids)
    tokens = np.frombuffer(flat, dtype=np.uint8).reshape(len(samples), seq_len)
    present = np.sort(np.array([row * n_annotations + t for row, s in enumerate(samples) for t in s["go"]],
                               dtype=np.int64))  # fmt: skip
    if len(present):  # distinct and sorted, as a scan of the dense array finds them
        present = present[np.append(True, present[1:] != present[:-1])]
    annotations = np.zeros(len(samples) * n_annotations, dtype=np.float32)  # numpy: torch's list indexing is 8x slower
    annotations[present] = 1.0
    # real tokens are each row's first lengths[row] positions
    real = np.arange(lengths.sum()) + np.repeat(
        np.arange(len(samples)) * seq_len - (np.cumsum(lengths) - lengths), lengths
    )
    tokens_BL = torch.from_numpy(tokens).long()
    batch = {
        "tokens": tokens_BL,
        "annotations": torch.from_numpy(annotations.reshape(len(samples), n_annotations)),
        "pad_mask": tokens_BL != PAD_ID,
        "seq_len": seq_len,
        "accessions": [s["accession"] for s in samples],
    }
    return batch, real, present


def _as_is(batch: Any) -> Any:
    """The stream's batches are final: DataLoader's default conversion would walk every nested list (the reader's
    position holds a reference per held sample) and cost more than reading the batch (measured: 53 % of the time)."""
    return batch


_COMPACT = {"tokens": (np.uint8, torch.long), "input_tokens": (np.uint8, torch.long),
            "annotations": (np.uint8, torch.float32), "input_annotations": (np.uint8, torch.float32),
            "pad_mask": (np.bool_, torch.bool)}  # fmt: skip
"""What a DataLoader worker sends for each batch tensor, and what the loader rebuilds: token ids (< 256) and 0/1
annotations as bytes. Tensors sent as such go through a new shared-memory segment and a descriptor handed over a
socket each, which made a worker 3.5x slower than reading in the training process; these arrays travel in the
pickle, 8x smaller than int64 ids."""


def _compact(batch: Any) -> Any:
    """In a DataLoader worker (its collate_fn): batch tensors as compact numpy arrays (see ``_COMPACT``), and the
    position's held-sample references as (N, 2) int arrays: as lists, a reference per held sample, unpickling them
    cost the training process 0.26 ms of the 0.33 ms a batch took to unpickle. :meth:`StatefulLoader.state_dict`
    turns them back into lists."""
    out = {k: v.numpy().astype(_COMPACT[k][0]) if k in _COMPACT else v for k, v in batch.items()}
    pos = out["position"] = dict(batch["position"])
    pos["buffer"] = np.array(pos["buffer"], dtype=np.int64).reshape(-1, 2)
    pos["pending"] = [np.array(p, dtype=np.int64).reshape(-1, 2) for p in pos["pending"]]
    return out


def _expand(batch: dict[str, Any]) -> dict[str, Any]:
    """In the training process: the tensors ``_compact`` packed, with their original dtypes."""
    for k, (_, dtype) in _COMPACT.items():
        if k in batch:
            batch[k] = torch.from_numpy(batch[k]).to(dtype)
    return batch


class StatefulLoader:
    """A DataLoader over a :class:`PretrainingStream` that remembers every reader's position for checkpoints."""

    def __init__(self, stream: PretrainingStream, num_workers: int = 0, prefetch_factor: int | None = 2) -> None:
        self.stream = stream
        self.positions: dict[str, dict] = dict(stream.state)
        self.loader = DataLoader(
            stream,
            batch_size=None,
            num_workers=num_workers,
            prefetch_factor=prefetch_factor if num_workers > 0 else None,
            persistent_workers=False,
            collate_fn=_compact if num_workers > 0 else _as_is,
        )
        self.workers = num_workers

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.loader:
            if self.workers:
                batch = _expand(batch)
            self.positions[str(batch["reader"])] = batch["position"]
            yield batch

    def state_dict(self) -> dict[str, dict]:
        """Per-reader positions (JSON-serialisable); pass as ``state`` to a new stream to resume."""
        return {k: {f: _as_lists(x) for f, x in v.items()} for k, v in self.positions.items()}


def _as_lists(value: Any) -> Any:
    """A position field as JSON has it: the (N, 2) reference arrays of ``_compact`` as lists of pairs."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, list) and any(isinstance(x, np.ndarray) for x in value):
        return [x.tolist() if isinstance(x, np.ndarray) else x for x in value]
    return value
