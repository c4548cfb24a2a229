"""Readers of real formats, on real files from ../shared/data and small bad-input fixtures."""

import gzip
import json
from collections import Counter

import pytest

from pbp.data.formats import (
    fasta_accession,
    read_benchmark_csv,
    read_fasta,
    read_gaf,
    read_go_table,
    read_go_tsv,
    read_uniprot_flat,
)
from pbp.data.go import build_vocabulary, read_obo
from pbp.data.records import ErrorLog, RecordError

from ..conftest import SHARED_DATA

SWISSPROT = SHARED_DATA / "swissprot_go"
FIXTURES = SHARED_DATA / "uniprot_fixtures"


def test_swissprot_fasta_streams_every_record():
    recs = list(read_fasta(SWISSPROT / "swissprot_2014_01_sample20k.fasta.gz"))
    assert len(recs) == 20_000
    assert recs[0].accession == "A0A317" and recs[0].sequence.startswith("MLKLRLKRCGRKQRAVF")
    assert len({r.accession for r in recs}) == 20_000


def test_uniprot_style_headers():
    assert fasta_accession("tr|W0FSK4|W0FSK4_9FLAV Genome polyprotein OS=Dengue") == "W0FSK4"
    assert fasta_accession("sp|P12345|NAME_HUMAN") == "P12345"
    assert fasta_accession("UniRef90_P12345 Cluster: x") == "UniRef90_P12345"
    recs = read_fasta(SHARED_DATA / "uniprot_sample/uniprotkb_sample20k.fasta.gz")
    first = next(recs)
    assert first.accession == "W0FSK4" and first.sequence.startswith("MNNQRKKTGKPS")


def test_uniprot_flat_files_with_go_cross_references():
    recs = list(read_uniprot_flat(FIXTURES / "SwissProt/multi_ex.txt"))
    assert len(recs) == 8
    first = recs[0]
    assert first.accession == "P00750"
    assert len(first.sequence) == 562
    assert "GO:0009986" in first.go_terms and "GO:0007596" in first.go_terms
    single = list(read_uniprot_flat(FIXTURES / "SwissProt/P60137.txt"))
    assert [r.accession for r in single] == ["P60137"]


def test_gzipped_flat_file(tmp_path):
    gz = tmp_path / "multi.dat.gz"
    gz.write_bytes(gzip.compress((FIXTURES / "SwissProt/multi_ex.txt").read_bytes()))
    assert len(list(read_uniprot_flat(gz))) == 8


def test_go_tables_tsv_and_gaf(tmp_path):
    tsv = read_go_tsv(SWISSPROT / "swissprot_2014_01_sample20k_go.tsv.gz")
    assert sum(len(v) for v in tsv.values()) == 176_211
    assert {"GO:0003735", "GO:0005622", "GO:0005840"} <= tsv["A0A317"]
    gaf = read_go_table(FIXTURES / "UniProt/goa_yeast.gaf")
    assert gaf["A0A023PXA5"] >= {"GO:0003674", "GO:0005575", "GO:0008150"}
    # NOT-qualified annotations are negative statements and are excluded.
    row = "UniProtKB\tP1\tX\t{q}\tGO:0000001\tREF\tIDA\t\tF\tname\t\tprotein\ttaxon:1\t20200101\tUniProt\t\t\n"
    f = tmp_path / "t.gaf"
    f.write_text("!gaf-version: 2.2\n" + row.format(q="enables") + row.format(q="NOT|enables").replace("0001", "0002"))
    assert read_gaf(f) == {"P1": {"GO:0000001"}}


def test_go_table_errors_name_file_and_line(tmp_path):
    f = tmp_path / "go.tsv"
    f.write_text("P1\tGO:0000001\nP2\tGO:12\n")
    with pytest.raises(RecordError, match=r"go.tsv:2: record 'P2' 'GO:12' is not a GO id"):
        read_go_tsv(f)


BAD_FASTA = (
    ">OK1 fine\r\nmkta yiak\r\nqr12*\r\n"  # CRLF, lowercase, spaces, digits, stop codon: all normalised
    ">EMPTY\n\n"
    ">NONASCII\nMKÅV\n"
    ">OK1 again\nMKV\n"
    ">OTHERS\nMKBZV\n"
)


def test_bad_records_raise_naming_file_line_and_record(tmp_path):
    f = tmp_path / "bad.fasta"
    f.write_text(BAD_FASTA)
    recs = read_fasta(f)
    assert next(recs).sequence == "MKTAYIAKQR"
    with pytest.raises(RecordError, match=r"bad.fasta:4: record 'EMPTY' header without a sequence"):
        next(recs)


def test_bad_records_skipped_and_counted(tmp_path):
    from pbp.data.shards import _dedup

    f = tmp_path / "bad.fasta"
    f.write_text(BAD_FASTA)
    errors = ErrorLog("skip")
    recs = list(_dedup(read_fasta(f, errors), errors.handle))
    assert [r.accession for r in recs] == ["OK1", "OTHERS"]
    assert errors.counts == Counter({"missing_sequence": 1, "non_ascii": 1, "duplicate_accession": 1})
    lines = [json.loads(x) for x in errors.quarantine_jsonl().decode().splitlines()]
    assert {x["record"] for x in lines} == {"EMPTY", "NONASCII", "OK1"}
    assert all(x["file"] == str(f) and x["line"] > 0 for x in lines)


def test_strict_policy_rejects_unknown_residues(tmp_path):
    f = tmp_path / "x.fasta"
    f.write_text(">P1\nMKBZV\n")
    with pytest.raises(RecordError, match="record 'P1'.*'B' at residue 3"):
        list(read_fasta(f, unknown="error"))


def test_sequence_before_header_and_truncated_flat_file(tmp_path):
    f = tmp_path / "x.fasta"
    f.write_text("MKV\n>P1\nMK\n")
    with pytest.raises(RecordError, match="x.fasta:1: .*before the first '>'"):
        list(read_fasta(f))
    dat = tmp_path / "x.dat"
    dat.write_text((FIXTURES / "SwissProt/P60137.txt").read_text().replace("//", ""))
    with pytest.raises(RecordError, match="no '//' terminator"):
        list(read_uniprot_flat(dat))


def test_benchmark_csvs():
    stab = read_benchmark_csv(SHARED_DATA / "proteinbert_benchmarks/stability.train.csv")
    assert (stab.name, stab.split, len(stab.seqs)) == ("stability", "train", 53_614)
    float(stab.labels[0])
    ss = read_benchmark_csv(SHARED_DATA / "proteinbert_benchmarks/secondary_structure.valid.csv")
    assert len(ss.seqs) == 2170 and all(len(s) == len(lab) for s, lab in zip(ss.seqs, ss.labels, strict=True))


def test_benchmark_csv_label_first_and_errors(tmp_path):
    f = tmp_path / "toy.valid.csv"
    f.write_text("label,seq\n1,MKV\n")
    b = read_benchmark_csv(f)
    assert b.seqs == ["MKV"] and b.labels == ["1"]
    f.write_text("seq,label\nMKV\n")
    with pytest.raises(ValueError, match=r"toy.valid.csv:2: expected 2 columns"):
        read_benchmark_csv(f)
    with pytest.raises(ValueError, match="NAME.train"):
        read_benchmark_csv(tmp_path / "toy.csv")


def test_obo_propagation_and_vocabulary():
    onto = read_obo(SWISSPROT / "go-basic_2022-07-01.obo.gz")
    # mitochondrial ribosome (GO:0005761) is_a ribosome-ish terms and part_of mitochondrion
    anc = onto.ancestors("GO:0005761")
    assert "GO:0005575" in anc  # cellular_component root
    stats = Counter()
    out = onto.propagate(["GO:0005761"], stats)
    assert "GO:0005761" in out and set(anc) <= set(out)
    assert build_vocabulary(Counter({"a": 3, "b": 1, "c": 5}), 3) == ["a", "c"]


def test_flat_file_bad_inputs_crlf_missing_sequence_and_lowercase(tmp_path):
    entry = (FIXTURES / "SwissProt/P60137.txt").read_text()
    no_seq = "ID   X_Y   Reviewed;  1 AA.\nAC   Q00001;\n//\n"
    lower = entry.replace("P60137;", "Q00002;", 1)
    lower = "\n".join(ln.lower() if ln.startswith("     ") else ln for ln in lower.splitlines()) + "\n"
    f = tmp_path / "mixed.dat"
    f.write_bytes((entry + no_seq + lower).replace("\n", "\r\n").encode())
    errors = ErrorLog("skip")
    recs = list(read_uniprot_flat(f, errors))
    assert [r.accession for r in recs] == ["P60137", "Q00002"]
    assert recs[0].sequence == recs[1].sequence and recs[0].sequence.isupper()
    assert errors.counts == Counter({"missing_sequence": 1})
    with pytest.raises(RecordError, match=r"mixed.dat:\d+: record 'Q00001' entry without a sequence"):
        list(read_uniprot_flat(f))


def test_build_with_go_propagation(tmp_path):
    from pbp.data.shards import BuildConfig, Inputs, build

    fasta = tmp_path / "p.fasta"
    fasta.write_text(">P1\nMKV\n>P2\nMKVL\n")
    table = tmp_path / "go.tsv"
    table.write_text("P1\tGO:0005761\nP2\tGO:0005761\n")
    plain = build(str(tmp_path / "a"), Inputs(fasta, table), BuildConfig(min_go_records=2)).manifest
    prop = build(
        str(tmp_path / "b"),
        Inputs(fasta, table),
        BuildConfig(min_go_records=2, go_obo=str(SWISSPROT / "go-basic_2022-07-01.obo.gz")),
    ).manifest
    assert plain["go_vocabulary"] == ["GO:0005761"] and not plain["go"]["propagated"]
    assert prop["go"]["propagated"] and "GO:0005575" in prop["go_vocabulary"]
    assert len(prop["go_vocabulary"]) > 5


def _truncated_gz(path, text: str, keep: float = 0.6):
    data = gzip.compress(text.encode())
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def test_a_cut_short_gzip_fasta_names_the_file_and_the_last_complete_record(tmp_path):
    """Before: a bare EOFError traceback that named nothing."""
    import random

    rng = random.Random(0)
    text = "".join(f">sp|P{i:05d}|X\n{''.join(rng.choices('ACDEFGHIKLMNPQRSTVWY', k=300))}\n" for i in range(200))
    path = _truncated_gz(tmp_path / "cut.fasta.gz", text)
    with pytest.raises(RecordError) as e:
        list(read_fasta(path))
    msg = str(e.value)
    assert str(path) in msg and "cut short or corrupt" in msg and "the last complete record is 'P" in msg
    errors = ErrorLog("skip")  # --on-error skip: every complete record before the cut is kept, the cut counted
    got = [r.accession for r in read_fasta(path, errors)]
    assert got and got == [f"P{i:05d}" for i in range(len(got))] and len(got) < 200
    assert errors.counts == Counter({"truncated_input": 1}) and errors.entries[0]["file"] == str(path)
    assert f"'{got[-1]}'" in errors.entries[0]["detail"]


def test_a_cut_short_gzip_go_table_and_flat_file_name_the_file(tmp_path):
    rows = "".join(f"P{i:05d}\tGO:{i:07d}\tF\n" for i in range(5000))
    path = _truncated_gz(tmp_path / "go.tsv.gz", rows)
    with pytest.raises(RecordError, match=r"go\.tsv\.gz:\d+: compressed input cut short"):
        read_go_table(path)
    entry = "ID   X   Reviewed; 10 AA.\nAC   P{0:05d};\nSQ   SEQUENCE   10 AA;\n     MKTAYIAKQR\n//\n"
    flat = _truncated_gz(tmp_path / "u.dat.gz", "".join(entry.format(i) for i in range(2000)))
    errors = ErrorLog("skip")
    got = list(read_uniprot_flat(flat, errors))
    assert got and errors.counts["truncated_input"] == 1 and got[-1].accession in errors.entries[0]["detail"]


def test_inputs_from_other_tools_read_or_fail_naming_file_line_and_record(tmp_path):
    """A Latin-1 accession failed when the shards were written (even with --on-error skip), a byte-order mark made
    a FASTA 'sequence data before the first header' and a GO table's first accession unmatched, a malformed GO
    cross-reference in a flat file was dropped silently, and a file that is no OBO was taken as an empty ontology."""
    latin = tmp_path / "latin.fasta"
    latin.write_bytes(">caf\u00e9 x\nMKTAYIAK\n>P2\nMKV\n".encode("latin-1"))
    with pytest.raises(RecordError, match=r"latin\.fasta:1: record 'caf\u00e9' the accession is not UTF-8"):
        list(read_fasta(latin))
    errors = ErrorLog("skip")
    assert [r.accession for r in read_fasta(latin, errors)] == ["P2"] and errors.counts == Counter({"not_utf8": 1})
    bom = tmp_path / "bom.fasta"
    bom.write_bytes(b"\xef\xbb\xbf>P1\nMKV\n")
    assert [r.accession for r in read_fasta(bom)] == ["P1"]
    table = tmp_path / "go.tsv"
    table.write_bytes(b"\xef\xbb\xbfP1\tGO:0005761\n")
    assert read_go_tsv(table) == {"P1": {"GO:0005761"}}
    entry = (FIXTURES / "SwissProt/P60137.txt").read_text()
    bad = tmp_path / "bad_go.dat"
    bad.write_text(entry.replace("DR   GO; GO:", "DR   GO; GO:X", 1))
    with pytest.raises(RecordError, match=r"bad_go\.dat:\d+: record 'P60137' 'GO:X\d+' is not a GO id"):
        list(read_uniprot_flat(bad))
    errors = ErrorLog("skip")  # skipped means skipped: not kept without the term
    assert list(read_uniprot_flat(bad, errors)) == [] and errors.counts == Counter({"bad_go_id": 1})
    for other, what in (("uni.xml", "but XML"), ("uni.fasta", "but FASTA \\(give it as --fasta\\)")):
        path = tmp_path / other
        path.write_text('<?xml version="1.0"?>\n<uniprot>\n' if other.endswith("xml") else ">P1\nMKV\n")
        with pytest.raises(RecordError, match=rf"{other}:1: not a UniProt flat file \(\.dat/\.txt\) {what}"):
            list(read_uniprot_flat(path))
    with pytest.raises(RecordError, match=r"go_graph_2014_01\.tsv\.gz:1: no \[Term\] stanza"):
        read_obo(SWISSPROT / "go_graph_2014_01.tsv.gz")
    obo = tmp_path / "cut.obo"
    obo.write_text("[Term]\nid: GO:0000001\nname: x\nis_a: \n")
    with pytest.raises(RecordError, match=r"cut\.obo:4: record 'GO:0000001' 'is_a: ': is_a without its parent"):
        read_obo(obo)
