"""The reader's fast paths give what the straightforward code gives: tar members parsed in memory (against Python's
tarfile), batches collated from C-encoded bytes (against encode + random_crop + pad, the same random draws)."""

from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

import pytest
import torch

from pbp.data.reader import ShardError, _check_sample, _parse_member, _tar_members, collate
from pbp.data.shards import _tar_member
from pbp.model.tokenizer import encode, pad, random_crop


def _shard(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members.items():
            _tar_member(tar, name, data)
    return buf.getvalue()


def test_tar_members_match_tarfile_on_a_pbp_shard():
    rng = random.Random(0)
    members = {f"t{i:06d}_{j:07d}.json": rng.randbytes(rng.randrange(0, 3000)) for i in range(3) for j in range(40)}
    members["a/" * 60 + "long_name.json"] = b"{}"  # > 100 characters: ustar's prefix field
    data = _shard(members)
    got = [(name, bytes(body)) for name, body in _tar_members(data, "s3://b/x.tar")]
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        want = [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]
    assert got == want and len(got) == 121


def test_tar_members_name_the_shard_on_an_unreadable_header_a_cut_member_or_a_pax_extension():
    data = bytearray(_shard({"a.json": b"{}" * 400, "b.json": b"[]"}))
    bad = bytearray(data)
    bad[1536 + 124 : 1536 + 127] = b"9z9"  # the second member's size field
    with pytest.raises(ShardError, match=r"s3://b/x\.tar: corrupt shard \(unreadable tar header at byte 1536\)"):
        list(_tar_members(bytes(bad), "s3://b/x.tar"))
    with pytest.raises(ShardError, match=r"x\.tar: corrupt shard \(member a\.json runs past the end"):
        list(_tar_members(bytes(data[:700]), "s3://b/x.tar"))
    pax = io.BytesIO()
    with tarfile.open(fileobj=pax, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("é" * 120 + ".json")  # needs a PAX header
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(ShardError, match="tar extension 'x' is not a pbp shard's format"):
        list(_tar_members(pax.getvalue(), "s3://b/x.tar"))


def test_members_parse_as_json_loads_does_and_bad_ones_name_the_member():
    for text in ('{"accession": "A", "sequence": "MK", "go": [1, 2]}', ' \n{"a": [1.5, null, "\\u00e9"]}\n ', "[]"):
        assert _parse_member("s3://b/x.tar", "m.json", memoryview(text.encode())) == json.loads(text)
    for raw, why in ((b'{"a": 1} x', r"Extra data: line 1 column 10 \(char 9\)"), (b'{"a": ', r"Expecting value"), (b"\xff{}", "utf-8"),
                     (b"", "Expecting value")):  # fmt: skip
        with pytest.raises(ShardError, match=rf"s3://b/x\.tar: member m\.json: not JSON \(.*{why}"):
            _parse_member("s3://b/x.tar", "m.json", memoryview(raw))


@pytest.mark.parametrize(("sample", "why"), [
    ([], "not a JSON object"), ({"sequence": "M", "go": []}, "no 'accession' field"),
    ({"accession": "A", "sequence": 5, "go": []}, "'sequence' is int, not str"),
    ({"accession": "A", "sequence": "M", "go": [3, 1.0]}, "'go' holds an index outside the vocabulary"),
    ({"accession": "A", "sequence": "M", "go": [3, 10]}, r"'go' holds an index outside the vocabulary \(0\.\.9\)"),
    ({"accession": "A", "sequence": "M", "go": [-1]}, "'go' holds an index outside the vocabulary"),
    ({"accession": "A", "sequence": "M", "go": [True]}, "'go' holds an index outside the vocabulary"),
])  # fmt: skip
def test_a_sample_without_the_fields_the_reader_uses_names_the_member(sample, why):
    with pytest.raises(ShardError, match=rf"x\.tar: member m\.json: {why}"):
        _check_sample("s3://b/x.tar", "m.json", sample, 10)
    ok = {"accession": "A", "sequence": "M", "go": [0, 9], "extra": 1}
    assert _check_sample("s3://b/x.tar", "m.json", ok, 10) is ok


def test_collate_matches_encode_crop_and_pad_with_the_same_draws():
    rng = random.Random(1)
    samples = [
        {"accession": f"P{i}", "sequence": "".join(rng.choices("ACDEFGHIKLMNPQRSTVWYXBUZO", k=rng.randrange(1, 900))),
         "go": sorted(rng.sample(range(50), rng.randrange(0, 6)))}
        for i in range(64)
    ]  # fmt: skip
    samples[5]["go"], samples[6]["go"] = [], [3, 3]  # none, and a term twice
    for seq_len in (16, 128, 1024):
        got = collate(samples, seq_len, 50, random.Random(seq_len))
        draws = random.Random(seq_len)
        want = pad([random_crop(encode(s["sequence"], s["accession"]), seq_len, draws) for s in samples], seq_len)
        assert torch.equal(got["tokens"], want) and got["tokens"].dtype == torch.long
        assert torch.equal(got["pad_mask"], want != 25)
        for row, s in enumerate(samples):
            assert torch.nonzero(got["annotations"][row]).flatten().tolist() == sorted(set(s["go"]))
        assert got["accessions"] == [s["accession"] for s in samples]
    unannotated = [dict(s, go=[]) for s in samples[:4]]
    assert not collate(unannotated, 64, 50, random.Random(0))["annotations"].any()


def test_batches_from_dataloader_workers_are_the_in_process_batches(tmp_path):
    """Workers send compact arrays (a tensor per batch through shared memory made them 3.5x slower); the loader
    rebuilds the same tensors, dtypes included."""
    from pbp.data.episodes import Bucket
    from pbp.data.reader import PretrainingStream, ReaderConfig, StatefulLoader
    from pbp.data.shards import BuildConfig, Inputs, build
    from pbp.data.synth import SynthConfig, write_corpus

    fasta, table = write_corpus(tmp_path, SynthConfig(n_proteins=300, seed=4, max_len=400))
    url = str(tmp_path / "ds")
    build(url, Inputs(fasta, table), BuildConfig(shard_size_mb=0.05, min_go_records=5))

    def rows(workers):
        cfg = ReaderConfig(url=url, mode="exact", shuffle_buffer=0, buckets=(Bucket(512, 8),))
        out, dtypes = {}, set()
        for b in StatefulLoader(PretrainingStream(cfg), num_workers=workers):
            dtypes.add(tuple((k, b[k].dtype) for k in ("tokens", "input_tokens", "annotations", "pad_mask")))
            for i, acc in enumerate(b["accessions"]):
                out[acc] = (b["tokens"][i].tolist(), b["annotations"][i].tolist(), b["pad_mask"][i].tolist(),
                            b["input_annotations"][i].tolist())  # fmt: skip
        return out, dtypes

    (a, da), (b, db) = rows(0), rows(2)
    assert len(a) > 250 and a.keys() == b.keys() and da == db  # the train split (95 %)
    assert da == {(("tokens", torch.long), ("input_tokens", torch.long), ("annotations", torch.float32),
                   ("pad_mask", torch.bool))}  # fmt: skip
    assert all(a[k][:3] == b[k][:3] for k in a)  # corruption draws differ by reader; the clean batch may not


@pytest.fixture(scope="module")
def both_formats(tmp_path_factory):
    """The same proteins built as format 1 (JSON members only) and format 2 (plus the index member)."""
    from pbp.data.shards import BuildConfig, Inputs, build
    from pbp.data.synth import SynthConfig, write_corpus

    tmp = tmp_path_factory.mktemp("formats")
    fasta, table = write_corpus(tmp, SynthConfig(n_proteins=1500, seed=3))
    urls = {v: str(tmp / f"format{v}") for v in (1, 2)}
    for v, url in urls.items():
        build(url, Inputs(fasta, table), BuildConfig(shard_size_mb=0.3, min_go_records=5, format_version=v))
    return urls


def _stream(url, **kw):
    from pbp.data.reader import PretrainingStream, ReaderConfig

    return PretrainingStream(ReaderConfig(url=url, mode="exact", shuffle_buffer=100, **kw))


def test_format_2_gives_exactly_the_batches_of_format_1(both_formats):
    """The index holds what the JSON members hold: same batches, corruption and positions (bytes read aside)."""
    a, b = list(_stream(both_formats[1])), list(_stream(both_formats[2]))
    assert len(a) == len(b) > 5 and not _stream(both_formats[1]).indexed and _stream(both_formats[2]).indexed
    for x, y in zip(a, b, strict=True):
        assert x["accessions"] == y["accessions"]
        for k in ("tokens", "input_tokens", "annotations", "input_annotations", "pad_mask"):
            assert torch.equal(x[k], y[k]), k
        assert {**x["position"], "bytes_read": 0} == {**y["position"], "bytes_read": 0}


def test_the_readers_sparse_corruption_is_corrupt_on_the_dense_batch(both_formats):
    """The reader corrupts from what collation knows (real positions, present terms): the very draws ``corrupt``
    makes from the dense batch with the same generator."""
    from pbp.model.pretraining import CorruptionConfig, corrupt

    stream = _stream(both_formats[2])
    batches = list(stream)
    for k, b in enumerate(batches):
        c = corrupt(b["tokens"], b["annotations"], CorruptionConfig(), stream._generators(0, k)[1])
        assert torch.equal(c.tokens, b["input_tokens"]) and torch.equal(c.annotations, b["input_annotations"])
    changed = sum(int((b["input_tokens"] != b["tokens"]).sum()) for b in batches)
    assert changed > 0 and sum(int((b["input_annotations"] != b["annotations"]).sum()) for b in batches) > 0


def test_a_format_2_shard_whose_index_is_misplaced_or_damaged_is_a_shard_error_naming_it(both_formats):
    import shutil

    from pbp.data.reader import PretrainingStream, ReaderConfig

    src = Path(both_formats[2])
    manifest = json.loads((src / "manifest.json").read_text())
    shard = manifest["splits"]["train"]["shards"][0]
    cases = {
        "moved": (lambda m: m["index"].update(offset=m["index"]["offset"] - 512),
                  r"no __pbp_index__ member at byte \d+, where the manifest says it is"),
        "absent": (lambda m: m.pop("index"), "the manifest gives no index record for this format-2 shard"),
    }  # fmt: skip
    for case, (edit, why) in cases.items():
        dst = src.parent / f"damaged-{case}"
        shutil.copytree(src, dst)
        doc = json.loads((dst / "manifest.json").read_text())
        edit(doc["splits"]["train"]["shards"][0])
        (dst / "manifest.json").write_text(json.dumps(doc))
        with pytest.raises(ShardError, match=rf"{shard['name']}: {why}"):
            list(PretrainingStream(ReaderConfig(url=str(dst), mode="exact", shuffle_buffer=0)))


def test_index_member_round_trips_and_every_damage_is_named():
    from pbp.data.shard_index import decode_index, encode_index
    from pbp.model.tokenizer import encode_bytes

    rows = [(f"P{i}", encode_bytes("MKV" * i), list(range(i % 4))) for i in range(1, 30)]
    raw = encode_index(rows)
    assert encode_index(rows) == raw  # deterministic: byte-identical rebuilds
    index = decode_index(raw, len(rows), 10)
    assert [
        (index.sample(j)["accession"], index.sample(j)["ids"], index.sample(j)["go"]) for j in range(len(rows))
    ] == rows
    bad_go = encode_index([*rows[:5], ("Q", encode_bytes("MK"), [2, 10]), *rows[5:]])
    bad_ids = encode_index([*rows[:3], ("Q", bytes([1, 2, 200]), [])])
    for data, n, why in (
        (b"PBPINDE", 29, "does not start with"),
        (raw, 28, "29 samples, the manifest says 28"),
        (raw[: len(raw) // 2], 29, "runs past the member's end"),
        (bad_go, 30, r"sample 5: 'go' holds an index outside the vocabulary \(0\.\.9\)"),
        (bad_ids, 4, r"sample 3: a token id outside the vocabulary \(0\.\.25\)"),
        (raw.replace(b'"version": 1', b'"version": 7'), 29, "index version 7; this pbp reads 1"),
    ):
        with pytest.raises(ValueError, match=why):
            decode_index(data, n, 10)
