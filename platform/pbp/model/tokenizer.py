"""ProteinBERT's 26-token vocabulary and pbp's input policy.

Vocabulary (identical to the original ``proteinbert/tokenization.py``):

    ids 0-21  the 22 letters ``ACDEFGHIKLMNPQRSTUVWXY``
    22 ``<OTHER>``  23 ``<START>``  24 ``<END>``  25 ``<PAD>``

Every encoded sequence is ``<START> residues... <END>`` and batches are right-padded with ``<PAD>``.

Normalisation policy (:func:`normalize_sequence`), applied to every raw sequence before encoding:

1. Non-ASCII anywhere -> :class:`SequenceError` naming the record (a sign of a wrong file or encoding).
2. Whitespace (spaces, tabs, CR/LF from wrapped FASTA lines) and digits (position numbers in
   GenBank-style dumps) are removed.
3. Letters are upper-cased.
4. One trailing ``*`` (a stop codon written by translators) is removed.
5. An empty result -> :class:`SequenceError` naming the record.
6. Any remaining character outside the 22 letters (``B``, ``Z``, ``J``, ``O``, ``-``, an inner ``*``...) is
   encoded as ``<OTHER>`` and *counted* per character in :class:`TokenStats`; with
   ``unknown="error"`` it is rejected instead, naming the record, the character and its position.

Length policy:

* Pretraining crops a random contiguous window of ``seq_len`` tokens from the START/END-framed sequence, as
  the original did (:func:`random_crop`).
* Inference and fine-tuning never truncate silently (:func:`encode_batch`): the model has no positional
  embeddings, so a batch is padded to its longest member; a sequence longer than ``max_len`` raises
  :class:`SequenceTooLongError` naming the record, unless the caller asks for ``on_too_long="crop_start"``
  or ``"crop_center"`` explicitly, in which case the number of cropped sequences is counted in the stats.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTUVWXY"
SPECIAL_TOKENS = ("<OTHER>", "<START>", "<END>", "<PAD>")
VOCAB: tuple[str, ...] = tuple(AMINO_ACIDS) + SPECIAL_TOKENS
VOCAB_SIZE = len(VOCAB)  # 26
TOKEN_TO_ID: dict[str, int] = {tok: i for i, tok in enumerate(VOCAB)}
OTHER_ID = TOKEN_TO_ID["<OTHER>"]  # 22
START_ID = TOKEN_TO_ID["<START>"]  # 23
END_ID = TOKEN_TO_ID["<END>"]  # 24
PAD_ID = TOKEN_TO_ID["<PAD>"]  # 25
ADDED_TOKENS_PER_SEQ = 2  # <START> and <END>

UnknownPolicy = Literal["other", "error"]
TooLongPolicy = Literal["error", "crop_start", "crop_center"]

_STRIP = str.maketrans("", "", " \t\r\n\v\f0123456789")
_DELETE_AMINO_ACIDS = str.maketrans("", "", AMINO_ACIDS)
# Lookup table for fast encoding: byte value -> token id (OTHER for anything not a known letter).
_FRAME_START, _FRAME_END = bytes([START_ID]), bytes([END_ID])
_BYTE_TO_ID = bytes(TOKEN_TO_ID[chr(b)] if chr(b) in AMINO_ACIDS else OTHER_ID for b in range(256))


class SequenceError(ValueError):
    """A sequence that the input policy rejects. The message names the record."""


class SequenceTooLongError(SequenceError):
    """A sequence longer than the allowed length, under the ``error`` length policy."""


@dataclass
class TokenStats:
    """Counts of what normalisation and encoding did, so nothing is changed silently."""

    sequences: int = 0
    residues: int = 0
    other: Counter[str] = field(default_factory=Counter)  # character -> times encoded as <OTHER>
    stop_codons_removed: int = 0
    cropped: int = 0

    @property
    def n_other(self) -> int:
        return sum(self.other.values())

    def as_dict(self) -> dict[str, object]:
        return {
            "sequences": self.sequences,
            "residues": self.residues,
            "other": dict(sorted(self.other.items())),
            "n_other": self.n_other,
            "stop_codons_removed": self.stop_codons_removed,
            "cropped": self.cropped,
        }


def _where(record: str | None) -> str:
    return f"record {record!r}" if record is not None else "sequence"


def normalize_sequence(
    seq: str | bytes,
    record: str | None = None,
    *,
    unknown: UnknownPolicy = "other",
    stats: TokenStats | None = None,
) -> str:
    """Apply the normalisation policy (module docstring) and return the cleaned residue string."""
    if isinstance(seq, bytes):
        try:
            seq = seq.decode("ascii")
        except UnicodeDecodeError as e:
            raise SequenceError(f"{_where(record)}: non-ASCII byte at position {e.start}") from None
    if not seq.isascii():
        pos = next(i for i, c in enumerate(seq) if not c.isascii())
        raise SequenceError(f"{_where(record)}: non-ASCII character {seq[pos]!r} at position {pos}")
    clean = seq.translate(_STRIP).upper()
    stop_codon = clean.endswith("*")
    if stop_codon:
        clean = clean[:-1]
    if not clean:
        raise SequenceError(f"{_where(record)}: empty sequence")
    if clean.translate(_DELETE_AMINO_ACIDS):  # fast path: nothing outside the alphabet
        bad = [(i, c) for i, c in enumerate(clean) if c not in AMINO_ACIDS]
        if unknown == "error":
            i, c = bad[0]
            raise SequenceError(
                f"{_where(record)}: character {c!r} at residue {i + 1} is not one of {AMINO_ACIDS} "
                f"({len(bad)} such characters)"
            )
        if stats is not None:
            stats.other.update(c for _, c in bad)
    if stats is not None:  # counted once the sequence is accepted
        stats.sequences += 1
        stats.residues += len(clean)
        stats.stop_codons_removed += stop_codon
    return clean


def encode(
    seq: str | bytes,
    record: str | None = None,
    *,
    unknown: UnknownPolicy = "other",
    stats: TokenStats | None = None,
) -> list[int]:
    """Normalise and encode one sequence as ``[<START>, residues..., <END>]``."""
    return list(encode_bytes(seq, record, unknown=unknown, stats=stats))


def encode_bytes(
    seq: str | bytes,
    record: str | None = None,
    *,
    unknown: UnknownPolicy = "other",
    stats: TokenStats | None = None,
) -> bytes:
    """:func:`encode` as one byte per token (every id is < 256), built in C: ``np.frombuffer(b, np.uint8)``."""
    clean = normalize_sequence(seq, record, unknown=unknown, stats=stats)
    return _FRAME_START + clean.encode("ascii").translate(_BYTE_TO_ID) + _FRAME_END


def decode(ids: Iterable[int]) -> str:
    """Token ids back to a string: residues as letters, ``<OTHER>`` as ``?``, START/END/PAD dropped."""
    out = []
    for i in ids:
        i = int(i)
        if i < len(AMINO_ACIDS):
            out.append(AMINO_ACIDS[i])
        elif i == OTHER_ID:
            out.append("?")
    return "".join(out)


def encode_normalized(clean: str) -> bytes:
    """:func:`encode_bytes` for residues already normalised (a dataset shard's, which ``pbp data build`` normalised):
    one C translation, no checks. A non-ASCII character raises UnicodeEncodeError."""
    return _FRAME_START + clean.encode("ascii").translate(_BYTE_TO_ID) + _FRAME_END


def random_crop(ids: Sequence[int], seq_len: int, rng: random.Random) -> list[int]:
    """Pretraining crop, as the original: a uniformly random window of ``seq_len`` tokens (or all of it; then
    nothing is drawn from ``rng``)."""
    if len(ids) <= seq_len:
        return list(ids)
    offset = rng.randint(0, len(ids) - seq_len)
    return list(ids[offset : offset + seq_len])


def pad(ids_list: Sequence[Sequence[int]], seq_len: int) -> torch.Tensor:
    """Right-pad token lists to ``seq_len`` with ``<PAD>``. Every list must already fit. -> (B, seq_len) int64."""
    out = torch.full((len(ids_list), seq_len), PAD_ID, dtype=torch.long)
    for row, ids in enumerate(ids_list):
        if len(ids) > seq_len:
            raise ValueError(f"row {row}: {len(ids)} tokens do not fit seq_len={seq_len}")
        out[row, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
    return out


def encode_batch(
    seqs: Sequence[str | bytes],
    records: Sequence[str] | None = None,
    *,
    max_len: int | None = None,
    on_too_long: TooLongPolicy = "error",
    pad_to_multiple_of: int = 1,
    unknown: UnknownPolicy = "other",
    stats: TokenStats | None = None,
) -> torch.Tensor:
    """Encode sequences for inference or fine-tuning. -> (B, L) int64, L = longest framed sequence.

    ``max_len`` counts tokens including ``<START>``/``<END>``. A longer sequence is an error naming the record
    unless ``on_too_long`` asks for an explicit crop (counted in ``stats.cropped``).
    """
    if records is not None and len(records) != len(seqs):
        raise ValueError(f"{len(seqs)} sequences but {len(records)} record names")
    encoded: list[list[int]] = []
    for i, seq in enumerate(seqs):
        rec = records[i] if records is not None else f"#{i}"
        ids = encode(seq, rec, unknown=unknown, stats=stats)
        if max_len is not None and len(ids) > max_len:
            if on_too_long == "error":
                raise SequenceTooLongError(
                    f"record {rec!r}: {len(ids) - 2} residues need {len(ids)} tokens, more than max_len={max_len}; "
                    "raise max_len (the model has no positional embeddings) or choose on_too_long='crop_start' "
                    "or 'crop_center'"
                )
            start = 0 if on_too_long == "crop_start" else (len(ids) - max_len) // 2
            ids = ids[start : start + max_len]
            if stats is not None:
                stats.cropped += 1
        encoded.append(ids)
    length = max(len(ids) for ids in encoded) if encoded else 0
    if pad_to_multiple_of > 1:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    return pad(encoded, length)
