"""Shards in real object storage (SeaweedFS from the session stack) and the streaming reader."""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict

import pytest
import torch

from pbp.cli.main import main
from pbp.data.episodes import Bucket, bucket_probabilities, choose_bucket
from pbp.data.formats import read_go_tsv
from pbp.data.reader import PretrainingStream, ReaderConfig, ShardError, StatefulLoader
from pbp.data.shards import BuildConfig, DatasetError, Inputs, build, inspect, load_manifest
from pbp.data.storage import Store, register_webdataset_opener
from pbp.data.synth import SynthConfig, generate, write_corpus

from ..conftest import SHARED_DATA

pytestmark = pytest.mark.timeout(600)
SWISSPROT = SHARED_DATA / "swissprot_go"
FASTA = SWISSPROT / "swissprot_2014_01_sample20k.fasta.gz"
GO_TSV = SWISSPROT / "swissprot_2014_01_sample20k_go.tsv.gz"
SMALL_BUCKETS = (Bucket(128, 16), Bucket(512, 8), Bucket(1024, 4))


@pytest.fixture(scope="module")
def swissprot(endpoints):
    url = f"s3://{endpoints.buckets['data']}/tests/swissprot-{random.randrange(10**9)}/"
    store = Store(url, endpoints)
    report = build(url, Inputs(fasta=FASTA, go_table=GO_TSV), BuildConfig(shard_size_mb=2), store=store)
    return url, store, report.manifest


def _exact(url, store, split, **kw):
    cfg = ReaderConfig(url=url, split=split, mode="exact", shuffle_buffer=kw.pop("shuffle_buffer", 0),
                       buckets=kw.pop("buckets", SMALL_BUCKETS), corrupt_inputs=False, **kw)  # fmt: skip
    return cfg


def test_round_trip_every_record_once_with_its_annotations(swissprot):
    url, store, manifest = swissprot
    vocab = manifest["go_vocabulary"]
    # The vocabulary matches an independent count: terms on >= 100 of the proteins.
    table = read_go_tsv(GO_TSV)
    counts = Counter(t for terms in table.values() for t in terms)
    assert vocab == sorted(t for t, n in counts.items() if n >= 100)
    seen: dict[str, list[int]] = {}
    for split in ("train", "valid"):
        for batch in PretrainingStream(_exact(url, store, split), store=store):
            for row, acc in enumerate(batch["accessions"]):
                assert acc not in seen, f"{acc} yielded twice"
                seen[acc] = torch.nonzero(batch["annotations"][row]).flatten().tolist()
    assert len(seen) == 20_000 == manifest["records"]
    index = {t: i for i, t in enumerate(vocab)}
    for acc in random.Random(0).sample(sorted(seen), 500):
        assert seen[acc] == sorted(index[t] for t in table.get(acc, ()) if t in index), acc


def test_split_is_by_accession_hash_and_shards_are_committed_by_the_manifest(swissprot):
    url, store, manifest = swissprot
    assert manifest["splits"]["valid"]["samples"] == pytest.approx(1000, rel=0.15)
    assert len(manifest["splits"]["train"]["shards"]) > 4
    for shard in manifest["splits"]["train"]["shards"]:
        assert shard["url"].startswith("s3://") and len(shard["sha256"]) == 64
    assert [i["sha256"] for i in manifest["inputs"]] and manifest["pbp_version"]
    info = inspect(url, store=store)
    assert info["problems"] == [] and info["records"] == 20_000


def test_two_ranks_times_two_workers_read_disjoint_shards_covering_the_split(swissprot):
    url, store, manifest = swissprot
    per_reader: dict[tuple[int, int], set[str]] = {}
    for rank in range(2):
        stream = PretrainingStream(_exact(url, store, "train"), rank=rank, world_size=2, store=store)
        loader = StatefulLoader(stream, num_workers=2)
        for batch in loader:
            per_reader.setdefault((rank, batch["reader"]), set()).update(batch["accessions"])
    assert len(per_reader) == 4
    sets = list(per_reader.values())
    assert all(a.isdisjoint(b) for i, a in enumerate(sets) for b in sets[i + 1 :])
    assert sum(map(len, sets)) == manifest["splits"]["train"]["samples"]


def test_batches_come_from_one_bucket_and_are_corrupted(swissprot):
    url, store, manifest = swissprot
    cfg = ReaderConfig(url=url, buckets=SMALL_BUCKETS, shuffle_buffer=64, seed=3)
    stream = PretrainingStream(cfg, store=store)
    lens = Counter()
    for i, batch in zip(range(30), stream, strict=False):
        L = batch["seq_len"]
        assert batch["input_tokens"].shape == batch["tokens"].shape == (len(batch["accessions"]), L)
        assert L in (128, 512, 1024) and len(batch["accessions"]) == {128: 16, 512: 8, 1024: 4}[L]
        assert batch["annotations"].shape[1] == len(manifest["go_vocabulary"])
        lens[L] += 1
        if i == 0:
            changed = (batch["input_tokens"] != batch["tokens"]) & batch["pad_mask"]
            assert 0 < changed.float().sum() / batch["pad_mask"].sum() < 0.1
    assert len(lens) >= 2


def test_resume_is_exact_without_buffers(swissprot):
    url, store, _ = swissprot
    one = (Bucket(128, 1),)
    cfg = ReaderConfig(url=url, split="valid", mode="exact", shuffle_buffer=0, buckets=one, corrupt_inputs=False)
    full = [b["accessions"][0] for b in PretrainingStream(cfg, store=store)]
    loader = StatefulLoader(PretrainingStream(cfg, store=store))
    first = []
    for batch in loader:
        first.append(batch["accessions"][0])
        if len(first) == 300:
            break
    state = json.loads(json.dumps(loader.state_dict()))  # what a checkpoint stores
    rest = [b["accessions"][0] for b in PretrainingStream(cfg, state=state, store=store)]
    assert first + rest == full


def _batches(stream, n=None, loader=None):
    """(accessions, corrupted input tokens, input annotations) of ``n`` batches (all if None)."""
    out = []
    for batch in loader or stream:
        out.append((batch["accessions"], batch["input_tokens"], batch["input_annotations"]))
        if n is not None and len(out) == n:
            break
    return out


def _same(a, b):
    assert len(a) == len(b)
    for i, ((acc1, tok1, ann1), (acc2, tok2, ann2)) in enumerate(zip(a, b, strict=True)):
        assert acc1 == acc2, f"batch {i}"
        assert torch.equal(tok1, tok2) and torch.equal(ann1, ann2), f"batch {i}: corruption differs"


@pytest.mark.parametrize("mode", ["exact", "resampled"])
def test_resume_with_buffers_and_corruption_is_exact(swissprot, mode):
    """Shuffle buffer, three buckets' partial batches and the corruption's random draws all survive a resume: the
    resumed stream yields exactly the batches the uninterrupted one does (what the stop-and-go test relies on)."""
    url, store, _ = swissprot
    cfg = ReaderConfig(url=url, split="valid", mode=mode, shuffle_buffer=100, buckets=SMALL_BUCKETS, seed=4)
    n = None if mode == "exact" else 120
    full = _batches(PretrainingStream(cfg, store=store), n)
    for cut, workers in ((37, 0), (len(full) - 3, 0), (37, 1)):  # mid-stream, draining; from a DataLoader worker
        loader = StatefulLoader(PretrainingStream(cfg, store=store), num_workers=workers)
        first = _batches(None, cut, loader)
        state = json.loads(json.dumps(loader.state_dict()))  # what a checkpoint stores
        assert state["0"]["batches"] == cut and (state["0"]["buffer"] or cut != 37)
        rest = _batches(PretrainingStream(cfg, state=state, store=store), None if n is None else n - cut)
        _same(first + rest, full)


def test_resume_refuses_other_buckets(swissprot):
    url, store, _ = swissprot
    cfg = ReaderConfig(url=url, split="valid", shuffle_buffer=10, buckets=SMALL_BUCKETS)
    loader = StatefulLoader(PretrainingStream(cfg, store=store))
    _batches(None, 3, loader)
    cfg.buckets = (Bucket(128, 4),)
    with pytest.raises(DatasetError, match="saved reader state has 3 buckets, the config 1"):
        next(iter(PretrainingStream(cfg, state=loader.state_dict(), store=store)))


def test_resampled_mode_resumes_the_same_shard_draws(swissprot):
    url, store, _ = swissprot
    cfg = ReaderConfig(url=url, buckets=(Bucket(128, 4),), shuffle_buffer=0, corrupt_inputs=False, seed=5)
    ref = [b["accessions"] for _, b in zip(range(400), PretrainingStream(cfg, store=store), strict=False)]
    loader = StatefulLoader(PretrainingStream(cfg, store=store))
    got = []
    for batch in loader:
        got.append(batch["accessions"])
        if len(got) == 150:
            break
    resumed = PretrainingStream(cfg, state=loader.state_dict(), store=store)
    got += [b["accessions"] for _, b in zip(range(250), resumed, strict=False)]
    assert got == ref


def test_manifest_missing_is_refused(endpoints):
    url = f"s3://{endpoints.buckets['data']}/tests/not-a-dataset/"
    store = Store(url, endpoints)
    store.put_bytes("train-000000.tar", b"\0" * 1024)
    with pytest.raises(DatasetError, match=r"no manifest, so .*not-a-dataset/ is not a \(complete\) pbp dataset"):
        load_manifest(url, store)
    with pytest.raises(DatasetError, match="no manifest"):
        PretrainingStream(ReaderConfig(url=url), store=store)


@pytest.fixture
def small_dataset(endpoints, tmp_path):
    fasta, table = write_corpus(tmp_path / "synth", SynthConfig(n_proteins=600, seed=1))
    url = f"s3://{endpoints.buckets['data']}/tests/small-{random.randrange(10**9)}/"
    store = Store(url, endpoints)
    manifest = build(url, Inputs(fasta, table), BuildConfig(shard_size_mb=0.2, min_go_records=5), store=store).manifest
    return url, store, manifest


def test_altered_shard_is_refused_naming_it(small_dataset):
    url, store, manifest = small_dataset
    shard = manifest["splits"]["train"]["shards"][1]
    data = bytearray(store.get_bytes(shard["name"]))
    data[700] ^= 0xFF  # same size, different bytes
    store.put_bytes(shard["name"], bytes(data))
    info = inspect(url, store=store)
    assert len(info["problems"]) == 1 and shard["name"] in info["problems"][0] and "sha256" in info["problems"][0]
    cfg = ReaderConfig(url=url, mode="exact", shuffle_buffer=0, corrupt_inputs=False, buckets=(Bucket(1024, 1),))
    seen = []
    with pytest.raises(ShardError, match=shard["name"]):
        for batch in PretrainingStream(cfg, store=store):
            seen += batch["accessions"]
    # the next shard is fetched and verified while this one is read: its error comes after this one's samples
    assert len(seen) == manifest["splits"]["train"]["shards"][0]["samples"]


def test_no_sample_of_an_altered_shard_is_used_even_by_a_read_that_stops_early(small_dataset):
    """Before: the digest was checked at the shard's end, so `pbp evaluate --max-proteins 32` used an altered shard's
    first samples and exited 0."""
    url, store, manifest = small_dataset
    shard = manifest["splits"]["valid"]["shards"][0]
    data = bytearray(store.get_bytes(shard["name"]))
    data[-2000] ^= 0x01  # one bit, late in the shard: a streaming check would have yielded samples first
    store.put_bytes(shard["name"], bytes(data))
    cfg = ReaderConfig(url=url, split="valid", mode="exact", shuffle_buffer=0, buckets=(Bucket(128, 1),))
    with pytest.raises(ShardError, match=rf"{shard['name']}: sha256 .* differs from the manifest's \(altered"):
        next(iter(PretrainingStream(cfg, store=store)))


def test_a_member_missing_a_field_is_a_shard_error_naming_the_member(small_dataset, endpoints):
    import hashlib
    import io
    import tarfile

    url, store, _ = small_dataset
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, doc in (("v0_0.json", {"accession": "A1", "sequence": "MKV", "go": []}),
                          ("v0_1.json", {"accession": "A2", "sequence": "MKV"})):  # fmt: skip
            raw = json.dumps(doc).encode()
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    data = buf.getvalue()
    bad_url = url.rstrip("/") + "-schema/"
    bad = Store(bad_url, endpoints)
    bad.put_bytes("valid-000000.tar", data)
    doc = json.loads(store.get_bytes("manifest.json"))
    doc["format_version"] = 1  # read from its JSON members (format 2's index is checked in test_reader_decode.py)
    doc["splits"]["valid"]["shards"] = [{"name": "valid-000000.tar", "url": bad.join("valid-000000.tar"), "samples": 2,
                                         "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}]  # fmt: skip
    bad.put_bytes("manifest.json", json.dumps(doc).encode())
    cfg = ReaderConfig(url=bad_url, split="valid", mode="exact", shuffle_buffer=0, buckets=(Bucket(128, 1),))
    with pytest.raises(ShardError, match=r"valid-000000\.tar: member v0_1\.json: no 'go' field"):
        list(PretrainingStream(cfg, store=bad))


def test_truncated_shard_errors_or_is_skipped(small_dataset):
    url, store, manifest = small_dataset
    shard = manifest["splits"]["train"]["shards"][0]
    store.put_bytes(shard["name"], store.get_bytes(shard["name"])[:3000])
    cfg = ReaderConfig(url=url, mode="exact", shuffle_buffer=0, corrupt_inputs=False)
    with pytest.raises(ShardError, match=rf"{shard['name']}: .*manifest says"):
        list(PretrainingStream(cfg, store=store))
    cfg.on_shard_error = "skip"
    batches = list(PretrainingStream(cfg, store=store))
    n = sum(len(b["accessions"]) for b in batches)
    assert n == manifest["splits"]["train"]["samples"] - shard["samples"]
    assert batches[-1]["shard_errors"] == 1


def test_rebuilding_the_same_input_gives_the_same_shards(small_dataset, endpoints, tmp_path):
    _, _, manifest = small_dataset
    fasta, table = write_corpus(tmp_path / "again", SynthConfig(n_proteins=600, seed=1))
    again = build(str(tmp_path / "ds"), Inputs(fasta, table), BuildConfig(shard_size_mb=0.2, min_go_records=5))
    digests = lambda m: [s["sha256"] for sp in ("train", "valid") for s in m["splits"][sp]["shards"]]  # noqa: E731
    assert digests(again.manifest) == digests(manifest)
    with pytest.raises(DatasetError, match="already exists"):
        build(str(tmp_path / "ds"), Inputs(fasta, table), BuildConfig(shard_size_mb=0.2, min_go_records=5))


def test_a_build_never_overwrites_files_silently_nor_creates_a_bucket(endpoints, tmp_path, capsys):
    """Before: same-named shards in a local --out were overwritten, and a missing bucket was created."""
    fasta, table = write_corpus(tmp_path / "synth", SynthConfig(n_proteins=150, seed=2))
    out = tmp_path / "out"
    out.mkdir()
    (out / "train-000000.tar").write_bytes(b"someone else's shard")
    (out / "notes.txt").write_text("unrelated files are fine")
    cfg = BuildConfig(min_go_records=5)
    with pytest.raises(
        DatasetError,
        match=r"holds 1 file\(s\) named as this build names its files \(train-000000\.tar\) and no manifest\.json, "
        r"as an interrupted build leaves it .*--force",
    ):
        build(str(out), Inputs(fasta, table), cfg)
    assert (out / "train-000000.tar").read_bytes() == b"someone else's shard"  # nothing was touched
    assert build(str(out), Inputs(fasta, table), cfg, overwrite=True).manifest["records"] == 150
    # The CLI: refused without --force, naming the directory.
    assert main(["data", "build", "--fasta", str(fasta), "--go-table", str(table), "--out", str(tmp_path / "out2"),
                 "--no-progress", "--min-go-records", "5"]) == 0  # fmt: skip
    (tmp_path / "out2" / "manifest.json").unlink()  # an interrupted build's leftovers
    assert main(["data", "build", "--fasta", str(fasta), "--go-table", str(table), "--out", str(tmp_path / "out2"),
                 "--no-progress", "--min-go-records", "5"]) != 0  # fmt: skip
    assert "named as this build names its files" in capsys.readouterr().err
    # The same in S3 (a chaos run: a build interrupted at 69 of 212 shards, then another corpus built into the same
    # prefix, was accepted and left the old shards beside the new dataset).
    prefix = f"s3://pbp-data/tests-leftovers-{random.randrange(10**6)}/"
    Store(prefix, endpoints).put_bytes("train-000069.tar", b"an interrupted build's shard")
    with pytest.raises(DatasetError, match=r"s3://pbp-data/tests-leftovers-\d+/: holds 1 file\(s\) named as this "
                       r"build names its files \(train-000069\.tar\).*build into an empty prefix"):  # fmt: skip
        build(prefix, Inputs(fasta, table), cfg, store=Store(prefix, endpoints))
    assert Store(prefix, endpoints).names() == ["train-000069.tar"]  # nothing written
    # A bucket that does not exist is named, not created.
    url = f"s3://no-such-bucket-{random.randrange(10**6)}/x/"
    with pytest.raises(DatasetError, match=r"bucket 'no-such-bucket-\d+' does not exist; pbp does not create"):
        build(url, Inputs(fasta, table), cfg, store=Store(url, endpoints))
    assert not Store(url, endpoints).bucket_exists()


def test_an_output_that_is_a_file_or_a_names_file_that_is_missing_fails_before_anything_is_written(tmp_path):
    """`--out` naming an existing file (arguments swapped) failed with a FileExistsError traceback at the first
    shard; a mistyped --go-names was found after every shard was written, leaving a directory a rerun refused."""
    fasta, table = write_corpus(tmp_path / "synth", SynthConfig(n_proteins=50, seed=3))
    before = fasta.read_bytes()
    with pytest.raises(DatasetError, match=r"an existing file, not a directory; --out names the directory"):
        build(str(fasta), Inputs(fasta, table), BuildConfig(min_go_records=5))
    assert fasta.read_bytes() == before
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match=r"typo\.tsv"):
        build(str(out), Inputs(fasta, table), BuildConfig(min_go_records=5, go_names=str(tmp_path / "typo.tsv")))
    assert not out.exists() or not any(out.iterdir())  # no shard written


def test_a_go_table_that_annotates_no_record_is_refused_and_an_empty_vocabulary_is_said(tmp_path, capsys):
    """Before: a GO table of another organism (or another accession scheme) built a dataset with 0 GO terms and
    exit 0; the summary line was the only hint."""
    fasta = tmp_path / "in.fasta"
    fasta.write_text(">sp|P12345|X_HUMAN\nMKTAYIAKQR\n>sp|Q99999|Y_HUMAN\nMKVLAAGIVG\n")
    table = tmp_path / "other.tsv"
    table.write_text("YAL001C\tGO:0003677\tF\nYAL002W\tGO:0005524\tF\n")
    out = tmp_path / "ds"
    with pytest.raises(DatasetError, match=r"other\.tsv: none of its annotations is for an accession of .*in\.fasta "
                       r"\(2 records; accessions there look like 'P12345', in the table like 'YAL001C'\)"):  # fmt: skip
        build(str(out), Inputs(fasta, table), BuildConfig(min_go_records=1))
    assert not out.exists()  # nothing written
    # Annotated records, but no term common enough: built, and the CLI says what that means.
    table.write_text("P12345\tGO:0003677\tF\n")
    assert main(["data", "build", "--fasta", str(fasta), "--go-table", str(table), "--out", str(out),
                 "--no-progress", "--min-go-records", "2"]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "0 GO terms (>= 2 proteins), on 0 records" in text and "lower --min-go-records (now 2)" in text


def test_webdataset_reads_s3_through_the_registered_opener(small_dataset, endpoints):
    import webdataset as wds

    _url, store, manifest = small_dataset
    register_webdataset_opener(endpoints)
    shard = manifest["splits"]["valid"]["shards"][0]
    samples = list(wds.WebDataset(store.join(shard["name"]), shardshuffle=False).decode())
    # every sample is a protein with its fields; format 2's index member (__pbp_index__) is skipped by webdataset
    assert len(samples) == shard["samples"] and all(x.keys() == {"__key__", "__url__", "json"} for x in samples)
    assert {"accession", "sequence", "go"} == samples[0]["json"].keys() and manifest["format_version"] == 2


def test_cli_build_skip_mode_writes_quarantine_and_inspect(tmp_path, capsys):
    f = tmp_path / "in.fasta"
    f.write_text(">A1\nMKV\n>A2\n\n>A1\nMKV\n>A3\nMKTAYIAKQR\n")
    out = tmp_path / "ds"
    assert main(["data", "build", "--fasta", str(f), "--out", str(out), "--no-progress", "--min-go-records", "1"]) == 2
    assert "record 'A2' header without a sequence" in capsys.readouterr().err
    assert not (out / "manifest.json").exists()  # nothing committed
    rc = main(["data", "build", "--fasta", str(f), "--out", str(out), "--no-progress", "--on-error", "skip"])
    assert rc == 0
    assert "skipped 2 bad records" in capsys.readouterr().out
    q = [json.loads(x) for x in (out / "quarantine.jsonl").read_text().splitlines()]
    assert {x["reason"] for x in q} == {"missing_sequence", "duplicate_accession"}
    assert main(["data", "inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "verified (size + sha256): ok" in text and "GO terms, format 2, built by pbp" in text
    v1 = tmp_path / "ds-v1"
    assert main(["data", "build", "--fasta", str(f), "--out", str(v1), "--no-progress", "--on-error", "skip",
                 "--format-version", "1"]) == 0  # fmt: skip
    assert main(["data", "inspect", str(v1)]) == 0 and "format 1," in capsys.readouterr().out
    assert "index" not in json.loads((v1 / "manifest.json").read_text())["splits"]["train"]["shards"][0]


def test_episode_assignment_follows_the_original_formula():
    probs = bucket_probabilities(126, [128, 512, 1024])
    assert probs[0] > probs[1] > probs[2] and sum(probs) == pytest.approx(1)
    rng = random.Random(0)
    long = Counter(choose_bucket(1500, [128, 512, 1024], rng) for _ in range(5000))
    assert long[2] > long[1] > long[0]


def test_synthetic_corpus_is_deterministic_and_motif_driven():
    a, b = generate(SynthConfig(n_proteins=200, seed=4)), generate(SynthConfig(n_proteins=200, seed=4))
    assert a == b
    annotated = [p for p in a if p[2]]
    assert 0.6 < len(annotated) / len(a) < 0.95
    by_term = defaultdict(list)
    for _, seq, terms in a:
        for t in terms:
            by_term[t].append(seq)
    assert any(t.startswith("GO:98") for t in by_term)  # family terms exist
