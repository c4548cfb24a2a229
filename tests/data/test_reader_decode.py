"""The reader's fast paths give what the straightforward code gives: tar members parsed in memory (against Python's
tarfile), batches collated from C-encoded bytes (against encode + random_crop + pad, the same random draws)."""

from __future__ import annotations

import io
import random
import tarfile

import pytest
import torch

from pbp.data.reader import ShardError, _tar_members, collate
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


def test_collate_matches_encode_crop_and_pad_with_the_same_draws():
    rng = random.Random(1)
    samples = [
        {"accession": f"P{i}", "sequence": "".join(rng.choices("ACDEFGHIKLMNPQRSTVWYXBUZO", k=rng.randrange(1, 900))),
         "go": sorted(rng.sample(range(50), rng.randrange(0, 6)))}
        for i in range(64)
    ]  # fmt: skip
    for seq_len in (16, 128, 1024):
        got = collate(samples, seq_len, 50, random.Random(seq_len))
        draws = random.Random(seq_len)
        want = pad([random_crop(encode(s["sequence"], s["accession"]), seq_len, draws) for s in samples], seq_len)
        assert torch.equal(got["tokens"], want) and got["tokens"].dtype == torch.long
        assert torch.equal(got["pad_mask"], want != 25)
        for row, s in enumerate(samples):
            assert torch.nonzero(got["annotations"][row]).flatten().tolist() == s["go"]
        assert got["accessions"] == [s["accession"] for s in samples]


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
