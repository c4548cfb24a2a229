"""A shard's index member (dataset format 2): what the reader needs, as arrays that cost nothing to decode.

A format-2 shard holds one ``<key>.json`` member per protein (``{"accession", "sequence", "go"}``: what users of
``wds.WebDataset(url)`` read, unchanged from format 1) and, last, an ``__pbp_index__`` member (webdataset skips
``__name__`` members) with the same samples in the same order as arrays:

    ids          (T,)    uint8   every sample's token ids, <START> and <END> included, concatenated
    ids_offsets  (N+1,)  int64   sample j's ids are ids[ids_offsets[j] : ids_offsets[j + 1]]
    go           (G,)    int32   every sample's GO vocabulary indices, concatenated
    go_offsets   (N+1,)  int64   likewise
    accessions   (A,)    uint8   the accessions in UTF-8, each followed by a newline

Layout: ``PBPINDEX\\n``, one JSON line ``{"version": 1, "samples": N, "arrays": [[name, dtype, count], ...]}``, then
the arrays' bytes in that order, each padded to a multiple of 8 bytes. Deterministic: the same samples give the same
bytes. The reader takes this member's place in the shard from the manifest (``index: {offset, bytes}``) and never
parses the JSON members: no JSON, no tar walk, no encoding, checks as array operations.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pbp.model.tokenizer import VOCAB_SIZE

MEMBER = "__pbp_index__"
MAGIC = b"PBPINDEX\n"
VERSION = 1
ARRAYS = (("ids", "|u1"), ("ids_offsets", "<i8"), ("go", "<i4"), ("go_offsets", "<i8"), ("accessions", "|u1"))


@dataclass
class ShardIndex:
    ids: bytes
    ids_offsets: list[int]
    go: list[int]
    go_offsets: list[int]
    accessions: list[str]

    def __len__(self) -> int:
        return len(self.accessions)

    def sample(self, j: int) -> dict:
        """Sample ``j`` as the reader holds it: ``{"accession", "ids" (bytes, framed), "go" (list)}``."""
        return {
            "accession": self.accessions[j],
            "ids": self.ids[self.ids_offsets[j] : self.ids_offsets[j + 1]],
            "go": self.go[self.go_offsets[j] : self.go_offsets[j + 1]],
        }


def _padded(raw: bytes) -> bytes:
    return raw + b"\0" * (-len(raw) % 8)


def encode_index(samples: Sequence[tuple[str, bytes, Sequence[int]]]) -> bytes:
    """``(accession, framed token ids, GO indices)`` per sample, in shard order -> the member's bytes."""
    ids_len = np.fromiter((len(ids) for _, ids, _ in samples), dtype=np.int64, count=len(samples))
    go_len = np.fromiter((len(go) for _, _, go in samples), dtype=np.int64, count=len(samples))
    arrays = {
        "ids": np.frombuffer(b"".join(ids for _, ids, _ in samples), dtype=np.uint8),
        "ids_offsets": np.concatenate([[0], np.cumsum(ids_len)]).astype("<i8"),
        "go": np.fromiter((t for _, _, go in samples for t in go), dtype="<i4"),
        "go_offsets": np.concatenate([[0], np.cumsum(go_len)]).astype("<i8"),
        "accessions": np.frombuffer("".join(f"{acc}\n" for acc, _, _ in samples).encode(), dtype=np.uint8),
    }
    header = {"version": VERSION, "samples": len(samples),
              "arrays": [[name, dtype, int(arrays[name].size)] for name, dtype in ARRAYS]}  # fmt: skip
    out = [MAGIC, json.dumps(header, sort_keys=True).encode() + b"\n"]
    return b"".join(
        [_padded(b"".join(out))] + [_padded(arrays[name].astype(dtype).tobytes()) for name, dtype in ARRAYS]
    )


def decode_index(data: bytes | memoryview, n_samples: int, n_annotations: int | None) -> ShardIndex:
    """The member's arrays, checked (structure, offsets, token ids below the vocabulary size, GO indices inside
    the vocabulary, ``n_samples`` samples as the manifest says); ValueError says what is wrong, and where."""
    data = bytes(data)
    if not data.startswith(MAGIC):
        raise ValueError(f"does not start with {MAGIC!r}")
    end = data.find(b"\n", len(MAGIC))
    try:
        header = json.loads(data[len(MAGIC) : end])
        version, samples, arrays = header["version"], header["samples"], header["arrays"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"unreadable header ({type(e).__name__}: {e})") from None
    if version != VERSION:
        raise ValueError(f"index version {version!r}; this pbp reads {VERSION}")
    if [a[:2] for a in arrays] != [list(a) for a in ARRAYS]:
        raise ValueError(f"arrays {[a[:2] for a in arrays]}, expected {[list(a) for a in ARRAYS]}")
    if samples != n_samples:
        raise ValueError(f"{samples} samples, the manifest says {n_samples}")
    got: dict[str, np.ndarray] = {}
    off = end + 1 + (-(end + 1) % 8)
    for name, dtype, count in arrays:
        nbytes = np.dtype(dtype).itemsize * count
        if off + nbytes > len(data):
            raise ValueError(f"array {name!r} runs past the member's end (truncated)")
        got[name] = np.frombuffer(data, dtype=dtype, count=count, offset=off)
        off += nbytes + (-nbytes % 8)
    for values, offsets in (("ids", "ids_offsets"), ("go", "go_offsets")):
        o = got[offsets]
        if len(o) != samples + 1 or o[0] != 0 or o[-1] != len(got[values]) or (np.diff(o) < 0).any():
            raise ValueError(f"{offsets!r} does not delimit {samples} samples of {values!r}")
    if len(got["ids"]) and int(got["ids"].max()) >= VOCAB_SIZE:
        j = _sample_of(got["ids_offsets"], int(np.argmax(got["ids"] >= VOCAB_SIZE)))
        raise ValueError(f"sample {j}: a token id outside the vocabulary (0..{VOCAB_SIZE - 1})")
    go = got["go"]
    if len(go) and n_annotations is not None and (int(go.min()) < 0 or int(go.max()) >= n_annotations):
        j = _sample_of(got["go_offsets"], int(np.argmax((go < 0) | (go >= n_annotations))))
        raise ValueError(f"sample {j}: 'go' holds an index outside the vocabulary (0..{n_annotations - 1})")
    try:
        accessions = got["accessions"].tobytes().decode("utf-8").split("\n")
    except UnicodeDecodeError as e:
        raise ValueError(f"accessions are not UTF-8 ({e})") from None
    if len(accessions) != samples + 1 or accessions[-1] != "":
        raise ValueError(f"{len(accessions) - 1} accessions for {samples} samples")
    return ShardIndex(ids=got["ids"].tobytes(), ids_offsets=got["ids_offsets"].tolist(), go=go.tolist(),
                      go_offsets=got["go_offsets"].tolist(), accessions=accessions[:-1])  # fmt: skip


def _sample_of(offsets: np.ndarray, position: int) -> int:
    """The sample whose slice of the concatenated array holds ``position``."""
    return int(np.searchsorted(offsets, position, side="right")) - 1
