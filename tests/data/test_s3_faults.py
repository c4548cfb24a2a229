"""Object storage that fails often: 30 % of S3 requests answered 503 SlowDown by a proxy in front of SeaweedFS.
Data build, reading and checkpointing finish with results identical to the same work done directly."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest
import torch

from pbp.data.reader import PretrainingStream, ReaderConfig
from pbp.data.shards import BuildConfig, DatasetError, Inputs, build
from pbp.data.storage import Store
from pbp.data.synth import SynthConfig, write_corpus
from pbp.train import checkpoint as ckpt

from ..faultproxy import FaultProxy

RATE = 0.3


def _read_all(url, store):
    cfg = ReaderConfig(url=url, split="train", mode="exact", shuffle_buffer=50, seed=1)
    return [(b["accessions"], b["input_tokens"]) for b in PretrainingStream(cfg, store=store)]


def _checkpoint(local, rank_files: dict[str, bytes]):
    for rel, data in rank_files.items():
        (local / rel).parent.mkdir(parents=True, exist_ok=True)
        (local / rel).write_bytes(data)


def test_build_read_and_checkpoint_survive_30_percent_503s_with_identical_results(endpoints, tmp_path, monkeypatch):
    # boto's backoff waits up to 2^(attempt-1) s (random) after each 503, most of this test's time: shortened here.
    # What is tested stays: every refused request is retried and the work finishes with identical results.
    import botocore.retries.standard

    monkeypatch.setattr(botocore.retries.standard.ExponentialBackoff, "delay_amount", lambda self, context: 0.01)
    fasta, table = write_corpus(tmp_path, SynthConfig(n_proteins=400, seed=7))
    bucket = endpoints.buckets["data"]
    base = f"tests/s3-faults-{random.randrange(10**9)}"
    cfg = BuildConfig(shard_size_mb=0.03, min_go_records=5)
    direct_url, faulty_url = f"s3://{bucket}/{base}/direct/", f"s3://{bucket}/{base}/faulty/"
    direct = build(direct_url, Inputs(fasta, table), cfg, store=Store(direct_url, endpoints)).manifest
    files = {"ds/mp_rank_00_model_states.pt": random.randbytes(300_000), "trainer.json": b'{"epoch": 2}'}

    with FaultProxy(endpoints.s3_endpoint, rate=RATE, seed=11) as proxy:
        ep = dataclasses.replace(endpoints, s3_endpoint=proxy.url)
        faulty = build(faulty_url, Inputs(fasta, table), cfg, store=Store(faulty_url, ep)).manifest
        read_faulty = _read_all(faulty_url, Store(faulty_url, ep))
        # A checkpoint uploaded as Checkpointer.save does (each file hashed on the way), found complete, downloaded and verified, all through the proxy.
        _checkpoint(tmp_path / "ckpt", files)
        run = ckpt.StorageDir(ep.pyarrow_fs(), f"{endpoints.buckets['runs']}/{base}/run")
        ckpt.upload(tmp_path / "ckpt", run, ckpt.checkpoint_name(10), 0, 10, {"0": {"batches": 3}},
                    {"world_size": 1, "schedule": {"step": 10}})  # fmt: skip
        assert ckpt.newest_complete(run) == ckpt.checkpoint_name(10)
        commit, mine = ckpt.download(run, ckpt.checkpoint_name(10), tmp_path / "back", 0)
    print(f"\n503 SlowDown answered to {proxy.injected} of {proxy.injected + proxy.forwarded} S3 requests "
          f"({proxy.by_method}); every one was retried and the work finished")  # fmt: skip
    assert proxy.injected >= 30 and {"GET", "PUT", "HEAD"} <= set(proxy.by_method), proxy.by_method

    def shards(m):
        return [(s["name"], s["bytes"], s["sha256"]) for sp in ("train", "valid") for s in m["splits"][sp]["shards"]]

    assert len(shards(direct)) > 5 and shards(faulty) == shards(direct)
    assert faulty["go_vocabulary"] == direct["go_vocabulary"] and faulty["records"] == direct["records"]
    read_direct = _read_all(direct_url, Store(direct_url, endpoints))
    assert len(read_faulty) == len(read_direct) >= 5
    for (a1, t1), (a2, t2) in zip(read_faulty, read_direct, strict=True):
        assert a1 == a2 and torch.equal(t1, t2)
    for rel, data in files.items():
        assert (tmp_path / "back" / rel).read_bytes() == data
    assert commit["schedule"] == {"step": 10} and mine["reader"] == {"0": {"batches": 3}}


def test_a_reader_without_shards_is_a_clear_error(endpoints, tmp_path):
    """More readers (ranks x DataLoader workers) than shards in exact mode: one reader would read nothing, and a
    distributed evaluation would hang waiting for it. Refused, naming the split, the counts and the fix."""
    fasta, table = write_corpus(tmp_path, SynthConfig(n_proteins=120, seed=8))
    url = f"s3://{endpoints.buckets['data']}/tests/few-shards-{random.randrange(10**9)}/"
    store = Store(url, endpoints)
    manifest = build(url, Inputs(fasta, table), BuildConfig(min_go_records=5), store=store).manifest
    n = len(manifest["splits"]["valid"]["shards"])
    cfg = ReaderConfig(url=url, split="valid", mode="exact", shuffle_buffer=0)
    with pytest.raises(DatasetError, match=rf"'valid' split has {n} shard\(s\) for {n + 1} readers.*reader {n} "):
        next(iter(PretrainingStream(cfg, rank=n, world_size=n + 1, store=store)))
    # An empty shard list in the manifest is refused when the stream is made.
    doc = json.loads(store.get_bytes("manifest.json"))
    doc["splits"]["valid"]["shards"] = []
    empty_url = url.rstrip("/") + "-empty/"
    Store(empty_url, endpoints).put_bytes("manifest.json", json.dumps(doc).encode())
    with pytest.raises(DatasetError, match="no 'valid' shards in the manifest"):
        PretrainingStream(cfg.__class__(url=empty_url, split="valid"), store=Store(empty_url, endpoints))


def test_a_run_finds_out_in_seconds_that_storage_is_down_a_bucket_missing_or_its_keys_wrong(endpoints):
    """Before: `pbp finetune` with SeaweedFS down retried for 68 s and ended in a pyarrow traceback; a storage_path
    in a bucket that does not exist went on to the workers."""
    import socket
    import time

    from pbp.data.storage import StorageUnavailableError, check_object_storage

    check_object_storage("s3://pbp-runs/finetune", "s3://pbp-data/x/", "/a/local/path.csv", "none", endpoints=endpoints)
    with pytest.raises(StorageUnavailableError, match=r"s3://no-such-bucket-\d+/: no such bucket at http://"):
        check_object_storage(f"s3://no-such-bucket-{random.randrange(10**6)}/runs", endpoints=endpoints)
    with pytest.raises(StorageUnavailableError, match=r"s3://pbp-runs/: access refused at .* check AWS_ACCESS_KEY_ID"):
        check_object_storage("s3://pbp-runs/x", endpoints=dataclasses.replace(endpoints, s3_secret_key="wrong"))
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    t0 = time.monotonic()
    with pytest.raises(StorageUnavailableError, match=rf"object storage at {dead} does not answer .*`pbp stack up`"):
        check_object_storage("s3://pbp-runs/x", endpoints=dataclasses.replace(endpoints, s3_endpoint=dead))
    assert time.monotonic() - t0 < 30  # not a minute of retries


def test_a_role_allowed_to_list_only_under_a_prefix_is_not_refused(endpoints, monkeypatch):
    """HeadBucket needs s3:ListBucket on the whole bucket; shared buckets often grant it only under a prefix
    (``s3:prefix`` condition), and such a role can do all pbp does there. pbp refused every run with such a role
    ("access refused ... check AWS_ACCESS_KEY_ID") and `pbp data build` said its bucket did not exist. The refused
    HeadBucket is injected (SeaweedFS's one identity may do everything); the listings go to the real server."""
    import botocore.exceptions as bex

    from pbp.data.storage import StorageUnavailableError, Store, check_object_storage
    from pbp.stack.endpoints import Endpoints

    real = Endpoints.boto3_client

    def scoped(self, *args, **kwargs):
        client = real(self, *args, **kwargs)

        def head_bucket(**_kw):
            raise bex.ClientError({"Error": {"Code": "403", "Message": "Forbidden"}}, "HeadBucket")

        client.head_bucket = head_bucket
        return client

    monkeypatch.setattr(Endpoints, "boto3_client", scoped)
    check_object_storage("s3://pbp-runs/team-a/finetune", "s3://pbp-data/team-a/", endpoints=endpoints)
    assert Store("s3://pbp-data/team-a/v1/", endpoints).bucket_exists()
    gone = f"s3://no-such-bucket-{random.randrange(10**6)}/team-a/"
    assert not Store(gone, endpoints).bucket_exists()  # a missing bucket is still told apart
    with pytest.raises(StorageUnavailableError, match=r"s3://pbp-runs/: access refused at .*the role of this"):
        check_object_storage("s3://pbp-runs/x", endpoints=dataclasses.replace(endpoints, s3_secret_key="wrong"))
    with pytest.raises(StorageUnavailableError, match=r"s3://pbp-data/: access refused"):  # not "does not exist"
        Store("s3://pbp-data/x/", dataclasses.replace(endpoints, s3_secret_key="wrong")).bucket_exists()


def test_an_expired_session_token_is_said_as_such(endpoints, monkeypatch):
    """S3 answers a HEAD with an expired (or invalid) session token by a bare 400, no body: the check ended in
    botocore's "An error occurred (400) when calling the HeadBucket operation: Bad Request". The listing that follows
    names the reason. Both answers are injected: SeaweedFS ignores session tokens."""
    import botocore.exceptions as bex

    from pbp.data.storage import StorageUnavailableError, check_object_storage
    from pbp.stack.endpoints import Endpoints

    real = Endpoints.boto3_client

    def expired(self, *args, **kwargs):
        client = real(self, *args, **kwargs)

        def head_bucket(**_kw):
            raise bex.ClientError({"Error": {"Code": "400", "Message": "Bad Request"}}, "HeadBucket")

        def list_objects_v2(**_kw):
            raise bex.ClientError({"Error": {"Code": "ExpiredToken", "Message": "The provided token has expired."}},
                                  "ListObjectsV2")  # fmt: skip

        client.head_bucket, client.list_objects_v2 = head_bucket, list_objects_v2
        return client

    monkeypatch.setattr(Endpoints, "boto3_client", expired)
    with pytest.raises(StorageUnavailableError, match=r"s3://pbp-runs/: access refused at .* \(ExpiredToken\)"):
        check_object_storage("s3://pbp-runs/x", endpoints=endpoints)


def test_an_io_call_failing_for_a_while_says_each_further_attempt(monkeypatch, caplog):
    """A chaos run: SeaweedFS killed during a checkpoint upload; after Ray's own 60 s warning (which blamed the user's
    upload function) nothing was said for about 4 minutes while pbp's retries waited on the SDK's."""
    import logging

    from pbp.data import storage

    clock = iter(range(0, 1000, 7))  # each attempt takes 7 s
    monkeypatch.setattr(storage.time, "monotonic", lambda: float(next(clock)))
    monkeypatch.setattr(storage.time, "sleep", lambda s: None)

    def down():
        raise OSError("When initiating multiple part upload: AWS Error NETWORK_CONNECTION: Could not connect")

    with caplog.at_level(logging.WARNING, "pbp.storage"), pytest.raises(OSError, match="failed after 5 attempts"):
        storage.with_retries("upload s3://pbp-runs/r/checkpoint-000000400/ds/x.pt", down, retries=4)
    said = [r.getMessage() for r in caplog.records]
    assert len(said) >= 2 and all("checkpoint-000000400" in m and "Could not connect" in m for m in said), said
    assert "attempt 4 of 5 failed after" in said[-1]

    def timed_out():  # what an s3fs call raises when storage hangs: no text at all
        raise TimeoutError()

    clock = iter(range(0, 1000, 7))
    with pytest.raises(OSError, match="failed after 3 attempts"):  # the I/O error, not an IndexError of the warning
        storage.with_retries("read s3://pbp-data/x", timed_out, retries=2)
