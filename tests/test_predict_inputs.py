"""`pbp predict` / `pbp embed` inputs (no model, no stack): what the input policy changes is counted and said;
``--strict`` skips records with characters outside the alphabet, naming them; bad records never stop the run."""

from __future__ import annotations

import json

import pytest

from pbp.predict.files import _write_errors, input_note, read_inputs


def _fasta(tmp_path):
    p = tmp_path / "in.fasta"
    p.write_text(">sp|P1|ok\nMKTAYIAKQR*\n>sp|P2|odd\nMKB*ZZA\n>sp|P3|empty\n*\n>sp|P1|again\nMK\n")
    return p


def test_characters_read_as_other_and_stop_codons_are_counted_and_said(tmp_path):
    inputs = read_inputs(str(_fasta(tmp_path)))
    assert inputs.ids == ["P1", "P2"] and inputs.seqs == ["MKTAYIAKQR", "MKB*ZZA"]
    assert dict(inputs.stats.other) == {"B": 1, "*": 1, "Z": 2}  # of the records used; P3 (empty) is not counted
    assert inputs.stats.stop_codons_removed == 1
    note = input_note(inputs.stats)
    assert note[0].startswith("read 4 character(s) outside the 22 amino-acid letters as <OTHER>")
    assert "'Z' x2" in note[0] and "--strict" in note[0]
    assert note[1] == "removed a trailing stop codon '*' from 1 sequence(s)"
    assert {e["record"]: e["reason"] for e in inputs.errors.entries} == {"P3": "empty_sequence",
                                                                          "P1": "duplicate_id"}  # fmt: skip
    assert input_note(read_inputs(str(_write(tmp_path, "id,seq\na,MKT\n"))).stats) == []


def test_strict_skips_records_with_other_characters_naming_record_character_and_position(tmp_path):
    inputs = read_inputs(str(_fasta(tmp_path)), unknown="error")
    assert inputs.ids == ["P1"] and input_note(inputs.stats) == ["removed a trailing stop codon '*' from 1 sequence(s)"]
    _write_errors(tmp_path / "out.csv", inputs.errors)
    errors = {e["record"]: e for e in map(json.loads, (tmp_path / "out.csv.errors.jsonl").read_text().splitlines())}
    assert "character 'B' at residue 3" in errors["P2"]["detail"] and "(4 such characters)" in errors["P2"]["detail"]
    with pytest.raises(ValueError, match=r"no usable sequences .*the first: line 2 a: .*character .B. at residue 1"):
        read_inputs(str(_write(tmp_path, "id,seq\na,BBB\n")), unknown="error")


def _write(tmp_path, text):
    p = tmp_path / "in.csv"
    p.write_text(text)
    return p


def test_files_from_other_tools_keep_their_ids_and_a_bad_id_is_one_bad_record(tmp_path):
    """A Latin-1 id made every prediction fail at the end (the CSV writer refused it), a byte-order mark hid the
    first column's name, and a gzipped CSV cut short was a bare EOFError."""
    import gzip

    latin = tmp_path / "latin.csv"
    latin.write_bytes("id,seq\ncaf\u00e9,MKTAYIAK\nok,MKV\n".encode("latin-1"))
    inputs = read_inputs(str(latin))
    assert inputs.ids == ["ok"]
    [e] = inputs.errors.entries
    assert (e["line"], e["reason"], e["record"]) == (2, "not_utf8", "caf\u00e9")
    assert "the id is not UTF-8 (byte 0xe9" in str(e["detail"])
    bom = tmp_path / "bom.csv"  # Excel's "CSV UTF-8"
    bom.write_bytes(b"\xef\xbb\xbfid,seq\np1,MKV\n")
    assert read_inputs(str(bom)).ids == ["p1"]
    bom_fasta = tmp_path / "bom.fasta"
    bom_fasta.write_bytes(b"\xef\xbb\xbf>sp|P1|X\nMKV\n")
    assert read_inputs(str(bom_fasta)).ids == ["P1"]
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(gzip.compress(("id,seq\n" + "".join(f"p{i},MKTAYIAK\n" for i in range(5000))).encode())[:-200])
    with pytest.raises(ValueError, match=r"cut\.csv\.gz:\d+: compressed input cut short"):
        read_inputs(str(cut))
