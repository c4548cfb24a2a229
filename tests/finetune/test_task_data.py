"""Fine-tuning task files and config, no cluster: columns by name, labels checked against the task kind, every
error naming the file and line (or the config key); the paper's benchmark files in ../shared."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from pbp.config import ConfigError, load_config
from pbp.finetune.config import FinetuneConfig, TaskConfig
from pbp.finetune.data import TaskDataError, load_task
from pbp.model.finetune import IGNORE_INDEX, TaskKind
from pbp.model.tokenizer import END_ID, START_ID, encode

from ..conftest import REPO, SHARED_DATA

BENCH = SHARED_DATA / "proteinbert_benchmarks"
TINY = REPO / "configs/finetune/tiny.yaml"


def _csv(tmp_path: Path, name: str, text: str | bytes) -> str:
    p = tmp_path / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(p)


def _task(kind: str, train: str, valid: str = "", test: str = "", **kw) -> TaskConfig:
    return TaskConfig(kind=TaskKind(kind), train=train, valid=valid, test=test, **kw)


def _rows(n: int, label=lambda i: f"{i / 10:.2f}") -> str:
    residues = "ACDEFGHIKLMNPQRSTVWY"
    return "seq,label\n" + "".join(f"{residues[i % 20] * (5 + i % 7)}M,{label(i)}\n" for i in range(n))


# ---- bad inputs: TaskDataError naming the file and line -------------------------------------------------------


def test_missing_column_names_the_column_and_the_file(tmp_path):
    train = _csv(tmp_path, "t.csv", "sequence,label\nMKV,1.0\n")
    with pytest.raises(TaskDataError, match=r"t\.csv:1: no column 'seq'") as e:
        load_task(_task("numeric", train))
    assert train in str(e.value)
    train2 = _csv(tmp_path, "t2.csv", "seq,target\nMKV,1.0\n")
    with pytest.raises(TaskDataError, match=r"t2\.csv:1: no column 'label'"):
        load_task(_task("numeric", train2))


def test_non_numeric_label_names_file_line_and_value(tmp_path):
    train = _csv(tmp_path, "t.csv", "seq,label\nMKV,1.0\nMKVL,high\nMKT,2\n")
    with pytest.raises(TaskDataError, match=r"t\.csv:3: label 'high' is not a finite number") as e:
        load_task(_task("numeric", train))
    assert f"{train}:3" in str(e.value)
    nan = _csv(tmp_path, "nan.csv", "seq,label\nMKV,nan\n")
    with pytest.raises(TaskDataError, match=r"nan\.csv:2: label 'nan'"):
        load_task(_task("numeric", nan))


def test_empty_and_header_only_files(tmp_path):
    empty = _csv(tmp_path, "empty.csv", "")
    with pytest.raises(TaskDataError, match=r"empty\.csv: empty file"):
        load_task(_task("numeric", empty))
    header = _csv(tmp_path, "header.csv", "seq,label\n\n")
    with pytest.raises(TaskDataError, match=r"header\.csv: no data rows after the header"):
        load_task(_task("numeric", header))
    # A test file that is empty is named as such too (not only train).
    train = _csv(tmp_path, "t.csv", _rows(30))
    with pytest.raises(TaskDataError, match=r"header\.csv: no data rows"):
        load_task(_task("numeric", train, test=header))


def test_missing_file_is_named(tmp_path):
    with pytest.raises(TaskDataError, match=r"nope\.csv: task file not found"):
        load_task(_task("numeric", str(tmp_path / "nope.csv")))


def test_residue_label_length_must_match_the_sequence(tmp_path):
    train = _csv(tmp_path, "t.csv", "seq,label\nMKV,012\nMKVL,0120\nMKT,01\n")
    with pytest.raises(TaskDataError, match=r"t\.csv:4: the residue label string has 2 characters, the sequence "
                                            r"has 3 residues"):  # fmt: skip
        load_task(_task("residue_categorical", train))


@pytest.mark.parametrize("kind", ["categorical", "residue_categorical"])
def test_valid_or_test_label_unseen_in_train(tmp_path, kind):
    if kind == "categorical":
        train = _csv(tmp_path, "t.csv", "seq,label\nMKV,a\nMKVL,b\nMKT,a\n")
        other = "seq,label\nMKV,a\nMKVL,z\n"
        bad = "label 'z' does not occur in the training file"
    else:
        train = _csv(tmp_path, "t.csv", "seq,label\nMKV,HEC\nMKVL,HHEE\nMKT,CCC\n")
        other = "seq,label\nMKV,HEC\nMKVL,HHXE\n"
        bad = "residue 3's label 'X' does not occur in the training file"
    valid = _csv(tmp_path, "v.csv", other)
    with pytest.raises(TaskDataError, match=rf"v\.csv:3: {bad} \(task.kind=\w+\); task.unseen_labels=drop leaves"):
        load_task(_task(kind, train, valid=valid))
    ok_valid = _csv(tmp_path, "ok.csv", "seq,label\nMKV,a\n" if kind == "categorical" else "seq,label\nMKV,HEC\n")
    with pytest.raises(TaskDataError, match=rf"te\.csv:3: {bad}"):
        load_task(_task(kind, train, valid=ok_valid, test=_csv(tmp_path, "te.csv", other)))
    # task.unseen_labels=drop: such rows are left out and counted per role (a smoke run on a subset of classes)
    data = load_task(_task(kind, train, valid=valid, test=_csv(tmp_path, "te.csv", other), unseen_labels="drop"))
    assert (len(data.valid), len(data.test)) == (1, 1) and data.dropped == {"valid": 1, "test": 1}
    assert data.valid.records == [f"{valid}:2"]
    with pytest.raises(TaskDataError, match=r"only\.csv: no row's class occurs in the training file \(1 rows left"):
        load_task(_task(kind, train, valid=_csv(tmp_path, "only.csv", other.splitlines()[0] + "\n" + other.splitlines()[2]),
                        unseen_labels="drop"))  # fmt: skip


def test_binary_labels_are_0_or_1(tmp_path):
    train = _csv(tmp_path, "t.csv", "seq,label\nMKV,0\nMKVL,1\nMKT,2\n")
    with pytest.raises(TaskDataError, match=r"t\.csv:4: label '2' is not 0 or 1"):
        load_task(_task("binary", train))
    res = _csv(tmp_path, "r.csv", "seq,label\nMKV,010\nMKT,012\n")
    with pytest.raises(TaskDataError, match=r"r\.csv:3: residue 3 has label '2', not 0 or 1"):
        load_task(_task("residue_binary", res))


def test_binary_labels_may_be_two_names_with_the_positive_one_given(tmp_path):
    named = "seq,label\nMKV,no\nMKVL,yes\nMKT,no\n"
    with pytest.raises(TaskDataError, match=r"t\.csv:2: label 'no' is not 0 or 1 .*set task.positive_label"):
        load_task(_task("binary", _csv(tmp_path, "t.csv", named)))
    test = _csv(tmp_path, "test.csv", "seq,label\nMKV,yes\nMKW,no\n")
    data = load_task(_task("binary", _csv(tmp_path, "t.csv", named), valid=test, test=test, positive_label="yes"))
    assert data.classes == ["no", "yes"]  # class 1 is the positive label, whatever the sort order
    assert data.train.labels.tolist() == [0, 1, 0] and data.test is not None and data.test.labels.tolist() == [1, 0]
    data = load_task(_task("binary", _csv(tmp_path, "t.csv", named), valid=test, positive_label="no"))
    assert data.classes == ["yes", "no"] and data.train.labels.tolist() == [1, 0, 1]

    unseen = _csv(tmp_path, "u.csv", "seq,label\nMKV,yes\nMKW,maybe\n")
    with pytest.raises(TaskDataError, match=r"u\.csv:3: label 'maybe' does not occur in the training file"):
        load_task(_task("binary", _csv(tmp_path, "t.csv", named), valid=unseen, positive_label="yes"))
    with pytest.raises(
        TaskDataError,
        match=r"t\.csv: task.kind=binary with task.positive_label='stable' needs that "
        r"label and one other in the training file; it has 'no', 'yes'",
    ):
        load_task(_task("binary", _csv(tmp_path, "t.csv", named), positive_label="stable"))
    three = _csv(tmp_path, "3.csv", named + "MKY,maybe\n")
    with pytest.raises(TaskDataError, match=r"it has 'maybe', 'no', 'yes'"):
        load_task(_task("binary", three, positive_label="yes"))
    with pytest.raises(ValueError, match="task.positive_label is for task.kind=binary, not categorical"):
        _task("categorical", three, positive_label="yes")


def test_bad_sequence_names_file_and_line(tmp_path):
    train = _csv(tmp_path, "t.csv", "seq,label\nMKV,1.0\nMKéV,2.0\n")
    with pytest.raises(TaskDataError, match=r"t\.csv:3.*non-ASCII character 'é'") as e:
        load_task(_task("numeric", train))
    assert f"{train}:3" in str(e.value)


def test_a_row_with_the_wrong_number_of_fields(tmp_path):
    train = _csv(tmp_path, "t.csv", "seq,label\nMKV,1.0\nMKV,1.0,extra\n")
    with pytest.raises(TaskDataError, match=r"t\.csv:3: 3 fields, the header has 2"):
        load_task(_task("numeric", train))


def test_a_single_class_is_refused(tmp_path):
    train = _csv(tmp_path, "t.csv", "seq,label\nMKV,a\nMKVL,a\n")
    with pytest.raises(TaskDataError, match=r"t\.csv: 1 distinct label\(s\); task.kind=categorical needs at least 2"):
        load_task(_task("categorical", train))


def test_a_class_number_written_two_ways_is_refused(tmp_path):
    train = _csv(tmp_path, "t.csv", "seq,label\nMKV,2\nMKT,02\nMKL,1\n")
    with pytest.raises(TaskDataError, match=r"t\.csv: labels '02' and '2' are the same number written two ways"):
        load_task(_task("categorical", train))


# ---- good inputs ------------------------------------------------------------------------------------------------


def test_columns_are_read_by_name_label_first(tmp_path):
    train = _csv(tmp_path, "t.csv", "label,extra,seq\n1.5,x,MKV\n-2,y,MKVLA\n")
    data = load_task(_task("numeric", train, valid=train))
    assert [len(t) for t in data.train.tokens] == [5, 7]
    assert list(data.train.tokens[0]) == encode("MKV")
    np.testing.assert_array_equal(data.train.labels, np.array([1.5, -2.0], dtype=np.float32))
    assert data.train.records == [f"{train}:2", f"{train}:3"]
    # Custom column names.
    other = _csv(tmp_path, "o.csv", "y,protein\n0,MKV\n1,MKT\n")
    data = load_task(_task("binary", other, valid=other, seq_column="protein", label_column="y"))
    assert list(data.train.labels) == [0, 1] and data.train.labels.dtype == np.int64


def test_categorical_classes_sorted_letters_and_numbers(tmp_path):
    letters = _csv(tmp_path, "l.csv", "seq,label\nMKV,c.1\nMKT,a.2\nMKL,b.3\nMKA,a.2\n")
    data = load_task(_task("categorical", letters, valid=letters))
    assert data.classes == ["a.2", "b.3", "c.1"]
    assert list(data.train.labels) == [2, 0, 1, 0] and data.spec.n_classes == 3
    numbers = _csv(tmp_path, "n.csv", "seq,label\nMKV,10\nMKT,2\nMKL,1\nMKA,10\n")
    data = load_task(_task("categorical", numbers, valid=numbers))
    assert data.classes == ["1", "2", "10"]  # numerically, not as strings ('10' < '2')
    assert list(data.train.labels) == [2, 1, 0, 2]


def test_residue_labels_sit_at_token_positions(tmp_path):
    train = _csv(tmp_path, "t.csv", "seq,label\nMKVL,HECH\nMKT,CCE\n")
    data = load_task(_task("residue_categorical", train, valid=train))
    assert data.classes == ["C", "E", "H"]
    tokens, labels = data.train.tokens[0], data.train.labels[0]
    assert len(tokens) == len(labels) == 6
    assert tokens[0] == START_ID and tokens[-1] == END_ID
    assert labels[0] == IGNORE_INDEX and labels[-1] == IGNORE_INDEX
    assert list(labels[1:-1]) == [2, 1, 0, 2]  # H E C H: residue j at token j + 1
    assert list(tokens[1:-1]) == encode("MKVL")[1:-1]
    binary = _csv(tmp_path, "b.csv", "seq,label\nMKV,011\nMKT,100\n")
    data = load_task(_task("residue_binary", binary, valid=binary))
    assert list(data.valid.labels[1]) == [IGNORE_INDEX, 1, 0, 0, IGNORE_INDEX] and data.classes == []


def test_valid_carved_from_train_is_seeded_disjoint_and_deterministic(tmp_path):
    train = _csv(tmp_path, "t.csv", _rows(200))
    cfg = _task("numeric", train, valid_fraction=0.2)
    a, b, c = load_task(cfg, seed=1), load_task(cfg, seed=1), load_task(cfg, seed=2)
    assert a.valid_from_train and a.valid.source == f"{train}:valid"
    assert a.valid.records == b.valid.records and a.train.records == b.train.records
    assert not set(a.valid.records) & set(a.train.records)
    assert len(a.valid) + len(a.train) == 200 and 20 <= len(a.valid) <= 60
    assert a.valid.records != c.valid.records
    # Labels travel with their rows.
    line = int(a.valid.records[0].rsplit(":", 1)[1])
    assert a.valid.labels[0] == pytest.approx((line - 2) / 10, abs=1e-6)


def test_too_few_rows_to_hold_out_validation(tmp_path):
    train = _csv(tmp_path, "t.csv", "seq,label\nMKV,1\n")
    with pytest.raises(TaskDataError, match=r"t\.csv: too few rows \(1\).*give task.valid"):
        load_task(_task("numeric", train))


def test_digests_are_the_files_sha256_and_max_rows(tmp_path):
    train, test = _csv(tmp_path, "t.csv", _rows(50)), _csv(tmp_path, "te.csv", _rows(30))
    data = load_task(_task("numeric", train, valid=test, test=test, max_rows=7))
    for role, path in (("train", train), ("valid", test), ("test", test)):
        assert data.digests[role] == hashlib.sha256(Path(path).read_bytes()).hexdigest()
    assert len(data.train) == len(data.valid) == len(data.test) == 7
    assert data.train.records[-1] == f"{train}:8"
    assert data.cut_short == {"train", "valid", "test"}
    # a limit above a file's rows reads it whole (the registry then names the whole file, not 'first 40 rows');
    # trailing blank lines are no rows
    short = _csv(tmp_path, "s.csv", _rows(7) + "\n,\n")
    data = load_task(_task("numeric", train, valid=short, test=test, max_rows=7))
    assert data.cut_short == {"train", "test"}
    assert load_task(_task("numeric", train, valid=short, test=short, max_rows=40)).cut_short == {"train"}


# ---- the paper's benchmark files --------------------------------------------------------------------------------


def test_secondary_structure_file():
    path = str(BENCH / "secondary_structure.valid.csv")
    data = load_task(_task("residue_categorical", path, max_rows=50), seed=0)
    assert data.classes == ["0", "1", "2"] and data.spec.n_classes == 3
    assert len(data.train) + len(data.valid) == 50
    for tokens, labels in zip(data.train.tokens, data.train.labels, strict=True):
        assert len(tokens) == len(labels)
        assert labels[0] == labels[-1] == IGNORE_INDEX and (labels[1:-1] >= 0).all()


def test_remote_homology_files():
    cfg = _task("categorical", str(BENCH / "remote_homology.train.csv"), valid=str(BENCH / "remote_homology.valid.csv"),
                test=str(BENCH / "remote_homology.test.csv"), max_rows=200)  # fmt: skip
    # 200 rows of 1,195 fold classes: the first valid row whose class train never showed is named.
    with pytest.raises(TaskDataError, match=r"remote_homology\.valid\.csv:\d+: label '\d+' does not occur"):
        load_task(cfg)
    # All of train covers every class of valid and test.
    full = load_task(_task("categorical", cfg.train, valid=cfg.valid, test=cfg.test))
    assert len(full.classes) > 1000 and full.classes == sorted(full.classes, key=int)
    assert (len(full.valid), len(full.test)) == (736, 718)


# ---- the config ---------------------------------------------------------------------------------------------------


def test_stage_override_by_index():
    cfg = load_config(FinetuneConfig, TINY, ["stages.0.lr=0.5"])
    assert cfg.stages[0].lr == 0.5 and cfg.stages[1].lr == 0.001
    with pytest.raises(ConfigError, match=r"'9' is not an index of the 3-item list 'stages'"):
        load_config(FinetuneConfig, TINY, ["stages.9.lr=1"])


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("run_name=a'b", "run_name"),
        ("stages.0.lr=-1", r"stages\[frozen\]\.lr"),
        ("head_dropout=1.0", "head_dropout"),
        ("schedule.plateau_factor=2", r"schedule\.plateau_factor"),
        ("task.valid_fraction=0", r"task\.valid_fraction"),
        ("scaling.num_workers=0", r"scaling.num_workers must be a finite number >= 1"),
        ("task.colum=x", r"unknown key 'task\.colum'"),
        ("too_long=cut", "too_long"),
    ],
)
def test_bad_config_values_name_the_key(override, named):
    with pytest.raises(ConfigError, match=named):
        load_config(FinetuneConfig, TINY, [override])


def test_shipped_finetune_configs_load():
    for path in sorted((REPO / "configs/finetune").glob("*.yaml")):
        cfg = load_config(FinetuneConfig, path)
        assert cfg.task.train and cfg.stages, path


def test_scoring_a_model_on_a_file_with_a_class_it_was_not_trained_on_says_so(tmp_path):
    from pbp.finetune.data import load_split

    path = _csv(tmp_path, "te.csv", "seq,label\nMKV,a\nMKVL,z\n")
    with pytest.raises(TaskDataError, match=r"te\.csv:3: label 'z' is not one of the 2 classes the model was trained"):
        load_split(path, TaskKind.CATEGORICAL, ["a", "b"])
    path = _csv(tmp_path, "ss.csv", "seq,label\nMKV,HXC\n")
    with pytest.raises(TaskDataError, match=r"ss\.csv:2: residue 2's label 'X' is not one of the 3 classes"):
        load_split(path, TaskKind.RESIDUE_CATEGORICAL, ["C", "E", "H"])
    # pbp evaluate --unseen-labels drop: such rows are left out and counted
    dropped: dict[str, int] = {}
    split, _ = load_split(_csv(tmp_path, "te2.csv", "seq,label\nMKV,a\nMKVL,z\nMKT,b\n"), TaskKind.CATEGORICAL,
                          ["a", "b"], dropped=dropped)  # fmt: skip
    assert len(split) == 2 and dropped == {"test": 1} and split.records[1].endswith("te2.csv:4")


def test_csv_files_from_other_tools_read_or_fail_naming_the_line(tmp_path):
    """Old-Mac CR line ends and a quote never closed were bare csv.Error tracebacks; an empty label made a class '';
    a repeated column name took the first silently; a label beyond float32 became inf in training."""
    cr = load_task(_task("numeric", _csv(tmp_path, "cr.csv", _rows(30).replace("\n", "\r"))))
    assert len(cr.train) + len(cr.valid) == 30
    cases = [  # (file, content, kind, max_rows, the error)
        ("q.csv", 'seq,label\n"MKV",1.0\nMKT,"2.0\n"\nMKL,high\n', "numeric", 0,
         r"q\.csv:5: label 'high'"),  # the line after a record spanning lines 3-4
        ("stray.csv", 'seq,label\n"MKTAAA,1.0\n' + "MKTAYIAKQRQISFVKSHFSRQA,0.1\n" * 8000, "numeric", 10,
         r"stray\.csv:2: not readable as CSV from this line .*never closed"),
        ("blank.csv", "seq,label\nMKV,a\nMKL,\nMKT,b\n", "categorical", 0, r"blank\.csv:3: empty label \(column 'label'\)"),
        ("twice.csv", "seq,label,label\nMKV,1,2\n", "numeric", 0, r"twice\.csv:1: the header names column 'label' 2 times"),
        ("huge.csv", "seq,label\nMKV,1.0\nMKL,1e39\n", "numeric", 0, r"huge\.csv:3: label '1e39' is beyond float32's"),
        ("latin.csv", "seq,label\nMKV,1.0\nMKL,caf\u00e9\n".encode("latin-1"), "categorical", 0,
         r"latin\.csv:3: not UTF-8 text \(byte 0xe9"),
    ]  # fmt: skip
    for name, content, kind, max_rows, error in cases:
        with pytest.raises(TaskDataError, match=error):
            load_task(_task(kind, _csv(tmp_path, name, content), max_rows=max_rows))
