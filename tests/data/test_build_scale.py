"""`pbp data build` at UniRef scale: bounded memory through hash partitions (the duplicate check and the GO join
hold one partition at a time), a bounded number of open files, a quarantine kept on disk. The partitioning must
not change the output: the same bytes as a build done in one partition. (Peak memory itself: `pbp bench build`.)"""

from __future__ import annotations

import gzip
import json
import random

import pytest

from pbp.data import shards
from pbp.data.records import ErrorLog, RecordError
from pbp.data.shards import BuildConfig, Inputs, build
from pbp.data.synth import SynthConfig, write_corpus


def _digests(manifest):
    return [(s["name"], s["sha256"]) for sp in ("train", "valid") for s in manifest["splits"][sp]["shards"]]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """800 synthetic proteins, then 60 of them again (duplicates, some far apart) and 5 bad records; the GO table
    shuffled, so one accession's rows are not adjacent."""
    d = tmp_path_factory.mktemp("corpus")
    fasta, table = write_corpus(d, SynthConfig(n_proteins=800, seed=3))
    text = gzip.decompress(fasta.read_bytes()).decode()
    records = [">" + r for r in text.split(">")[1:]]
    rng = random.Random(5)
    extra = [*rng.sample(records, 60), ">EMPTY1\n", ">BAD2\nMKÄV\n", ">EMPTY2\n", ">BAD3\nMKÖQ\n", ">BAD4 x\nMKüV\n"]
    rng.shuffle(extra)
    mixed = d / "mixed.fasta"
    mixed.write_text("".join(records + extra))
    rows = table.read_text().splitlines()
    rng.shuffle(rows)
    shuffled = d / "go_shuffled.tsv"
    shuffled.write_text("\n".join(rows) + "\n")
    return mixed, table, shuffled


def _build(tmp_path, name, fasta, table, **cfg):
    base = {"shard_size_mb": 0.05, "min_go_records": 5, "on_error": "skip"}
    return build(str(tmp_path / name), Inputs(fasta, table), BuildConfig(**{**base, **cfg}))


def test_many_partitions_give_the_bytes_of_one_and_find_every_duplicate(corpus, tmp_path, monkeypatch):
    fasta, table, shuffled = corpus
    one = _build(tmp_path, "one", fasta, table, partition_mb=1e6)
    # ~60 partitions for this input; and at most 3 shard spill files open at once (several routing passes).
    monkeypatch.setattr(shards, "max_open_files", lambda: 3)
    n_parts = []
    real = shards._check_and_join
    monkeypatch.setattr(shards, "_check_and_join", lambda records, *a: n_parts.append(records.n) or real(records, *a))
    many = _build(tmp_path, "many", fasta, shuffled, partition_mb=0.01)
    assert n_parts[0] > 10, n_parts
    assert len(_digests(one.manifest)) > 6
    assert _digests(many.manifest) == _digests(one.manifest)
    for key in ("records", "go_vocabulary", "records_without_vocabulary_annotation", "skipped"):
        assert many.manifest[key] == one.manifest[key], key
    assert one.manifest["records"] == 800
    counts = one.errors.counts
    assert counts["duplicate_accession"] == 60 and counts.total() == 65, counts
    # Every duplicate names the line of its accession's first record, in both builds.
    first_line = {}
    for n, line in enumerate(fasta.read_text().splitlines(), 1):
        if line.startswith(">"):
            first_line.setdefault(line[1:].split()[0], n)
    # The quarantine is the same bytes too: duplicates in input order whatever the partitioning.
    assert (tmp_path / "many" / "quarantine.jsonl").read_bytes() == (tmp_path / "one" / "quarantine.jsonl").read_bytes()
    for report in (one, many):
        q = [json.loads(x) for x in (tmp_path / ("one" if report is one else "many") / "quarantine.jsonl").open()]
        dups = [e for e in q if e["reason"] == "duplicate_accession"]
        assert len(dups) == 60 and len(q) == 65
        for e in dups:
            assert e["detail"] == f"duplicate accession (first at line {first_line[e['record']]})"
            assert e["line"] > first_line[e["record"]]


def test_the_build_spills_into_tmp_dir_and_leaves_nothing_there(corpus, tmp_path):
    fasta, table, _ = corpus
    spill = tmp_path / "spill"
    spill.mkdir()
    seen = []
    real = shards._check_and_join

    def spy(records, *a, **kw):
        seen.append(records.paths[0].parent.parent)
        return real(records, *a, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(shards, "_check_and_join", spy)
        _build(tmp_path, "out", fasta, table, tmp_dir=str(spill))
    assert seen == [spill] and list(spill.iterdir()) == []
    missing = tmp_path / "not-made"  # it was named as a random subfolder of it ("no such file .../pbp-build-x1y2")
    with pytest.raises(ValueError, match=rf"--tmp-dir {missing}: no such folder"):
        _build(tmp_path, "out2", fasta, table, tmp_dir=str(missing))
    assert not (tmp_path / "out2").exists()
    with pytest.raises(ValueError, match="partition_mb"):
        BuildConfig(partition_mb=0)


def test_the_quarantine_keeps_every_entry_while_memory_keeps_a_few():
    log = ErrorLog("skip", keep=2)
    for i in range(5):
        log.handle(RecordError("in.fasta", i + 1, f"R{i}", "empty_sequence", "empty"))
    assert len(log.entries) == 2 and log.total == 5
    lines = [json.loads(x) for x in log.quarantine_jsonl().decode().splitlines()]
    assert [x["record"] for x in lines] == ["R0", "R1", "R2", "R3", "R4"]
    log.handle(RecordError("in.fasta", 9, "R5", "empty_sequence", "empty"))  # still appends after a read
    assert [json.loads(x)["record"] for x in log.quarantine_jsonl().decode().splitlines()][-1] == "R5"


def test_raise_mode_names_the_first_duplicate_in_the_input_whatever_the_partitioning(tmp_path):
    text = "".join(f">P{i}\nMKV{'A' * (i % 7)}\n" for i in range(300))
    fasta = tmp_path / "dups.fasta"
    fasta.write_text(text + ">P250\nMKV\n>P7\nMKV\n>P123\nMKV\n")  # line 601 repeats P250: the first duplicate
    for mb in (1e6, 0.0005):
        with pytest.raises(
            RecordError, match=r"dups.fasta:601: record 'P250' duplicate accession \(first at line 501\)"
        ):
            build(str(tmp_path / f"out-{mb}"), Inputs(fasta), BuildConfig(min_go_records=1, partition_mb=mb))
        assert not (tmp_path / f"out-{mb}" / "manifest.json").exists()
