"""Fine-tuning tasks: CSV files with a header, read by column NAME, labels checked against the task kind.

Every sequence is encoded once (``<START> residues <END>``). Labels are kept aligned with the tokens:
  numeric                 float per protein
  binary                  0/1 per protein; or two named labels, ``task.positive_label`` the one that means 1
                          (the label set, [other, positive], is saved with the model)
  categorical             class index per protein; the label set (strings, e.g. fold letters, or integers) comes
                          from train, sorted (numerically when all are integers), and is saved with the model
  residue_binary          one 0/1 character per residue
  residue_categorical     one class character per residue (classes from train)
Residue labels are stored per TOKEN position: ``IGNORE_INDEX`` at <START>/<END>, so crops and padding keep them
aligned. Every error names the file and the CSV line (the header is line 1), or the config key.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pbp.data.records import RecordError, csv_rows, decode_text
from pbp.finetune.config import TaskConfig
from pbp.model.finetune import IGNORE_INDEX, TaskKind, TaskSpec
from pbp.model.tokenizer import SequenceError, encode

FLOAT32_MAX = float(np.finfo(np.float32).max)


class TaskDataError(ValueError):
    """A task file that cannot be used; the message names the file and the line or the key."""


class TaskFileNotFoundError(TaskDataError):
    """A task file that is not there (a local path, or an s3:// object)."""


class UnknownClassError(TaskDataError):
    """A labelled file scored with a trained model holds a class the model does not know."""


class UnseenLabelError(TaskDataError):
    """A valid or test row with a class the training file does not have (``task.unseen_labels``)."""

    def __init__(self, where: str, what: str, kind: TaskKind) -> None:
        self.where, self.what, self.kind = where, what, kind
        super().__init__(f"{where}: {what} does not occur in the training file (task.kind={kind.value}); "
                         "task.unseen_labels=drop leaves such rows out")  # fmt: skip


@dataclass
class Split:
    name: str
    """train | valid | test."""
    source: str
    """The file it came from (with ':split' when carved out of train)."""
    tokens: list[np.ndarray]
    """Per example, (L,) uint8 token ids incl. <START>/<END>."""
    labels: list[np.ndarray] | np.ndarray
    """Per-protein kinds: (N,) float32 or int64; residue kinds: per example (L,) int64 aligned with tokens."""
    records: list[str]
    """``file:line`` of each example, for error messages and predictions."""

    def __len__(self) -> int:
        return len(self.tokens)

    def lengths(self) -> np.ndarray:
        return np.array([len(t) for t in self.tokens], dtype=np.int64)

    def subset(self, idx: np.ndarray | list[int]) -> Split:
        idx = list(idx)
        labels = [self.labels[i] for i in idx] if isinstance(self.labels, list) else self.labels[idx]
        return Split(self.name, self.source, [self.tokens[i] for i in idx], labels, [self.records[i] for i in idx])


@dataclass
class TaskData:
    spec: TaskSpec
    train: Split
    valid: Split
    test: Split | None
    classes: list[str] = field(default_factory=list)
    """Label strings of the class indices (categorical kinds); empty otherwise."""
    digests: dict[str, str] = field(default_factory=dict)
    """sha256 of each input file, by role (train, valid, test)."""
    valid_from_train: bool = False
    dropped: dict[str, int] = field(default_factory=dict)
    """Rows left out per role (valid, test) for a class not in train (``task.unseen_labels=drop``)."""
    cut_short: frozenset[str] = frozenset()
    """Roles whose file has more rows than the ``task.max_rows`` read (a file of fewer rows was read whole)."""


def _read_bytes(url: str) -> bytes:
    if url.startswith("s3://"):
        from pbp.data.storage import Store

        parent, _, name = url.rpartition("/")
        try:
            return Store(parent).get_bytes(name)
        except FileNotFoundError:
            raise TaskFileNotFoundError(f"{url}: not found") from None
    p = Path(url).expanduser()
    if not p.is_file():
        raise TaskFileNotFoundError(f"{p}: task file not found")
    return p.read_bytes()


def _rows(url: str, data: bytes, cfg: TaskConfig, fix: str = "set task.seq_column / task.label_column"
          ) -> tuple[list[tuple[int, str, str]], bool]:  # fmt: skip
    """-> ([(line, seq, label)], whether ``task.max_rows`` left rows of the file out), columns found by name. Raises
    naming the file for a missing column or no rows."""
    try:
        return _task_rows(url, csv_rows(io.StringIO(decode_text(data, url), newline=""), url), cfg, fix)
    except RecordError as e:  # not UTF-8, or a record the csv module cannot read
        raise TaskDataError(str(e)) from None


def _task_rows(url: str, rows: Iterator[tuple[int, list[str]]], cfg: TaskConfig, fix: str
               ) -> tuple[list[tuple[int, str, str]], bool]:  # fmt: skip
    _, header = next(rows, (1, []))
    if not header or not any(h.strip() for h in header):
        raise TaskDataError(f"{url}: empty file (expected a header with columns {cfg.seq_column!r} and "
                            f"{cfg.label_column!r})")  # fmt: skip
    names = [h.strip() for h in header]
    for c in (cfg.seq_column, cfg.label_column):
        if c not in names:
            raise TaskDataError(f"{url}:1: no column {c!r} in the header {names} ({fix})")
        if names.count(c) > 1:
            raise TaskDataError(f"{url}:1: the header names column {c!r} {names.count(c)} times ({names}); "
                                "which one is meant? rename the others")  # fmt: skip
    si, li = names.index(cfg.seq_column), names.index(cfg.label_column)
    out = []
    for line, row in rows:
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(names):
            raise TaskDataError(f"{url}:{line}: {len(row)} fields, the header has {len(names)}")
        if not row[li].strip():
            raise TaskDataError(f"{url}:{line}: empty label (column {cfg.label_column!r}); every row needs one")
        out.append((line, row[si].strip(), row[li].strip()))
        if cfg.max_rows and len(out) >= cfg.max_rows:
            return out, any(row and any(c.strip() for c in row) for _, row in rows)
    if not out:
        raise TaskDataError(f"{url}: no data rows after the header")
    return out, False


def _class_order(values: set[str], url: str) -> list[str]:
    """The classes in order: by number when every label is an integer, else alphabetically. Two labels that are the
    same integer written two ways ("2" and "02") are refused: as classes they would be two."""
    try:
        numbers = {v: int(v) for v in values}
    except ValueError:
        return sorted(values)
    seen: dict[int, str] = {}
    for v in sorted(values):
        if numbers[v] in seen:
            raise TaskDataError(f"{url}: labels {seen[numbers[v]]!r} and {v!r} are the same number written two ways; "
                                "write each class one way (as two classes they would be learnt apart)")  # fmt: skip
        seen[numbers[v]] = v
    return sorted(values, key=numbers.__getitem__)


def _per_protein_label(kind: TaskKind, raw: str, where: str, index: dict[str, int]) -> float | int:
    if kind is TaskKind.NUMERIC:
        try:
            v = float(raw)
        except ValueError:
            v = math.nan
        if not math.isfinite(v):
            raise TaskDataError(f"{where}: label {raw!r} is not a finite number (task.kind=numeric)")
        if abs(v) > FLOAT32_MAX:
            raise TaskDataError(f"{where}: label {raw!r} is beyond float32's range (+-3.4e38) that training uses; "
                                "rescale the labels")  # fmt: skip
        return v
    if kind is TaskKind.BINARY and not index:
        if raw not in ("0", "1"):
            raise TaskDataError(f"{where}: label {raw!r} is not 0 or 1 (task.kind=binary; for named labels set "
                                "task.positive_label to the one that means 1)")  # fmt: skip
        return int(raw)
    if raw not in index:
        raise UnseenLabelError(where, f"label {raw!r}", kind)
    return index[raw]


def _residue_label(kind: TaskKind, raw: str, n_residues: int, where: str, index: dict[str, int]) -> np.ndarray:
    if len(raw) != n_residues:
        raise TaskDataError(
            f"{where}: the residue label string has {len(raw)} characters, the sequence has {n_residues} residues"
        )
    out = np.full(n_residues + 2, IGNORE_INDEX, dtype=np.int64)
    for j, ch in enumerate(raw):
        if kind is TaskKind.RESIDUE_BINARY:
            if ch not in "01":
                raise TaskDataError(f"{where}: residue {j + 1} has label {ch!r}, not 0 or 1 (task.kind=residue_binary)")
            out[j + 1] = int(ch)
        else:
            if ch not in index:
                raise UnseenLabelError(where, f"residue {j + 1}'s label {ch!r}", kind)
            out[j + 1] = index[ch]
    return out


def _split(name: str, url: str, rows: list[tuple[int, str, str]], kind: TaskKind, index: dict[str, int],
           dropped: dict[str, int] | None = None) -> Split:  # fmt: skip
    """``dropped``: rows with a class not in ``index`` are left out and counted there under ``name`` (else an
    error)."""
    tokens: list[np.ndarray] = []
    labels: list = []
    records: list[str] = []
    for line, seq, raw in rows:
        where = f"{url}:{line}"
        try:
            ids = encode(seq, where)
        except SequenceError as e:  # one error type for a task file that cannot be used
            raise TaskDataError(str(e)) from None
        try:
            if kind.per_residue:
                labels.append(_residue_label(kind, raw, len(ids) - 2, where, index))
            else:
                labels.append(_per_protein_label(kind, raw, where, index))
        except UnseenLabelError:
            if dropped is None:
                raise
            dropped[name] = dropped.get(name, 0) + 1
            continue
        tokens.append(np.asarray(ids, dtype=np.uint8))
        records.append(where)
    if not tokens:
        raise TaskDataError(f"{url}: no row's class occurs in the training file ({len(rows)} rows left out, "
                            "task.unseen_labels=drop)")  # fmt: skip
    if kind.per_residue:
        return Split(name, url, tokens, labels, records)
    dtype = np.float32 if kind is TaskKind.NUMERIC else np.int64
    return Split(name, url, tokens, np.asarray(labels, dtype=dtype), records)


def _binary_classes(cfg: TaskConfig, rows: list[tuple[int, str, str]]) -> list[str]:
    """[the other label, task.positive_label]: class 1 is the positive one; train must hold exactly these two."""
    labels = _class_order({lab for _, _, lab in rows}, cfg.train)
    named = ", ".join(map(repr, labels[:6])) + (f" and {len(labels) - 6} more" if len(labels) > 6 else "")
    if cfg.positive_label not in labels or len(labels) != 2:
        raise TaskDataError(f"{cfg.train}: task.kind=binary with task.positive_label={cfg.positive_label!r} needs "
                            f"that label and one other in the training file; it has {named}")  # fmt: skip
    return [next(lab for lab in labels if lab != cfg.positive_label), cfg.positive_label]


def _holdout(n: int, fraction: float, seed: int) -> np.ndarray:
    """Row i goes to valid when a hash of (seed, i) falls below ``fraction``: stable, documented, seeded."""
    h = [int.from_bytes(hashlib.sha256(f"pbp-valid:{seed}:{i}".encode()).digest()[:8], "big") for i in range(n)]
    return np.asarray(h, dtype=np.float64) / 2.0**64 < fraction


def load_task(cfg: TaskConfig, seed: int = 0) -> TaskData:
    kind = TaskKind(cfg.kind)
    raw = {role: _read_bytes(url) for role, url in (("train", cfg.train), ("valid", cfg.valid), ("test", cfg.test))
           if url}  # fmt: skip
    read = {role: _rows(getattr(cfg, role), data, cfg) for role, data in raw.items()}
    rows = {role: r for role, (r, _) in read.items()}
    classes: list[str] = []
    if kind is TaskKind.CATEGORICAL:
        classes = _class_order({lab for _, _, lab in rows["train"]}, cfg.train)
    elif kind is TaskKind.RESIDUE_CATEGORICAL:
        classes = _class_order({ch for _, _, lab in rows["train"] for ch in lab}, cfg.train)
    elif kind is TaskKind.BINARY and cfg.positive_label:
        classes = _binary_classes(cfg, rows["train"])
    index = {c: i for i, c in enumerate(classes)}
    if kind in (TaskKind.CATEGORICAL, TaskKind.RESIDUE_CATEGORICAL) and len(classes) < 2:
        raise TaskDataError(f"{cfg.train}: {len(classes)} distinct label(s); task.kind={kind.value} needs at least 2")
    train = _split("train", cfg.train, rows["train"], kind, index)
    dropped: dict[str, int] | None = {} if cfg.unseen_labels == "drop" else None
    from_train = "valid" not in rows
    if from_train:
        held = _holdout(len(train), cfg.valid_fraction, seed)
        if held.all() or not held.any():
            raise TaskDataError(f"{cfg.train}: too few rows ({len(train)}) to hold out task.valid_fraction="
                                f"{cfg.valid_fraction} for validation; give task.valid")  # fmt: skip
        valid = train.subset(np.flatnonzero(held))
        valid.name, valid.source = "valid", f"{cfg.train}:valid"
        train = train.subset(np.flatnonzero(~held))
    else:
        valid = _split("valid", cfg.valid, rows["valid"], kind, index, dropped)
    test = _split("test", cfg.test, rows["test"], kind, index, dropped) if "test" in rows else None
    spec = TaskSpec(kind, n_classes=max(len(classes), 1))
    digests = {role: hashlib.sha256(data).hexdigest() for role, data in raw.items()}
    cut = frozenset(role for role, (_, more) in read.items() if more)
    return TaskData(spec, train, valid, test, classes, digests, from_train, dropped or {}, cut)


def load_split(url: str, kind: TaskKind, classes: list[str], seq_column: str = "seq", label_column: str = "label",
               max_rows: int = 0, dropped: dict[str, int] | None = None) -> tuple[Split, str]:  # fmt: skip
    """One labelled file read with a trained model's label set (the registry's gate re-scores a model on a test
    split with it) -> (split, sha256 of the file). A label the model never saw is an error naming file:line, or with
    ``dropped`` given, the row is left out and counted there (under ``test``)."""
    data = _read_bytes(url)
    cfg = TaskConfig(kind=kind, train=url, seq_column=seq_column, label_column=label_column, max_rows=max_rows)
    try:
        fix = (
            f"this reads columns {seq_column!r} and {label_column!r}; pbp evaluate takes --seq-column / --label-column"
        )
        rows, _ = _rows(url, data, cfg, fix)
        split = _split("test", url, rows, kind, {c: i for i, c in enumerate(classes)}, dropped)
    except UnseenLabelError as e:
        raise UnknownClassError(f"{e.where}: {e.what} is not one of the {len(classes)} classes the model was "
                                f"trained on (task.kind={e.kind.value}); score it on a file of those classes "
                                "only") from None  # fmt: skip
    return split, hashlib.sha256(data).hexdigest()
