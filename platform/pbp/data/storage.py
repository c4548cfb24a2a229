"""One interface over local directories and S3 prefixes (SeaweedFS locally, AWS S3 in the cloud), with retries.

    store = Store("s3://pbp-data/swissprot/v1/")     # or "file:///data/v1/" or "/data/v1/"
    store.put("manifest.json", b"...")               # local writes are atomic (temp file + rename)
    with store.open("train-000000.tar") as f: ...

S3 goes through s3fs with the endpoints of :mod:`pbp.stack.endpoints` (environment first, local stack second).
``register_webdataset_opener()`` teaches webdataset to read ``s3://`` URLs the same way (it has no opener of its own).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar

from pbp.errors import UserError
from pbp.stack.endpoints import Endpoints, resolve, s3_bucket_and_key
from pbp.stack.state import atomic_write

T = TypeVar("T")
log = logging.getLogger("pbp.storage")
RETRIES = 4
SMALL_READ_RETRIES = 9
"""For pyarrow reads of small objects: pyarrow hands the AWS SDK a buffer the size of the requested range, a 503's
XML error body does not fit in it, and the SDK then reports a non-retryable INTERNAL_FAILURE ("Failed to flush response
stream") instead of retrying the 503 itself (the same bug as apache/doris#66557). At 30 % 503s one attempt of a small
read fails with p=0.3, so ten attempts fail together with p=6e-6."""
MAX_BACKOFF_S = 5.0
SLOW_ATTEMPT_S = 10.0
"""A retried I/O call that has taken longer than this is said at each further failure (storage down, not a blip)."""


def is_s3(url: str) -> bool:
    return url.startswith("s3://")


def with_retries(what: str, fn: Callable[[], T], retries: int = RETRIES) -> T:
    """Run ``fn``; on transient I/O errors retry with exponential backoff (0.2 s, 0.4 s, ... at most 5 s). An attempt
    that fails after a while (storage down: each attempt waits out the SDK's own retries) is said, with the count, so
    a stalled upload or read is not silent for minutes."""
    t0 = time.monotonic()
    for attempt in range(retries + 1):
        try:
            return fn()
        except FileNotFoundError:
            raise
        except (OSError, TimeoutError, ConnectionError) as e:
            if attempt == retries:
                raise OSError(f"{what}: failed after {retries + 1} attempts: {e}") from e
            if time.monotonic() - t0 > SLOW_ATTEMPT_S:
                log.warning("%s: attempt %d of %d failed after %.0f s (%s: %s); trying again", what, attempt + 1,
                            retries + 1, time.monotonic() - t0, type(e).__name__, e)  # fmt: skip
            time.sleep(min(0.2 * 2**attempt, MAX_BACKOFF_S))
    raise AssertionError("unreachable")


class StorageUnavailableError(UserError, RuntimeError):
    """Object storage does not answer, or a bucket a run needs is not there; the message names it and the way out."""


def check_object_storage(*urls: str, endpoints: Endpoints | None = None) -> None:
    """On a driver, before anything starts: the S3 endpoint answers and the bucket of each ``s3://`` URL exists. In
    seconds: without it a run found out after a minute of retries, in a pyarrow traceback."""
    wanted: dict[str, set[str]] = {}
    for u in urls:
        if is_s3(u):
            bucket, prefix = s3_bucket_and_key(u)
            wanted.setdefault(bucket, set()).add(prefix)
    if not wanted:
        return
    ep = endpoints or resolve()
    client = _probe_client(ep)
    for bucket in sorted(wanted):
        if not _bucket_reachable(client, bucket, sorted(wanted[bucket]), ep):
            raise StorageUnavailableError(f"s3://{bucket}/: no such bucket at {ep.s3_endpoint or 'AWS S3'}: create "
                                          "it, or give a URL in a bucket that exists")  # fmt: skip


_REFUSED = ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken")
_MISSING = ("404", "NoSuchBucket")
_HEAD_UNCLEAR = ("400", *_REFUSED)
"""HeadBucket's answers that a listing decides: a HEAD response has no body, so S3's 400 for an expired or invalid
session token reaches botocore as a bare "400"; the listing names it (ExpiredToken)."""


def _probe_client(ep: Endpoints) -> Any:
    """A boto3 client for quick checks: a dead endpoint is said in seconds, not after minutes of the SDK's retries."""
    return ep.boto3_client(attempts=2, connect_timeout=5, read_timeout=15)


def _bucket_reachable(client: Any, bucket: str, prefixes: list[str], ep: Endpoints) -> bool:
    """Whether ``bucket`` exists (False: it does not), these credentials reaching it; else StorageUnavailableError
    naming what is wrong. HeadBucket needs s3:ListBucket on the whole bucket: a role allowed to list only under a
    prefix (common on shared buckets) is refused it yet can do all pbp does there, so a refused HeadBucket is decided
    by a listing of each prefix pbp uses."""
    import botocore.exceptions as bex

    where = ep.s3_endpoint or "AWS S3"

    def code_of(e: Any) -> str:
        return str(e.response.get("Error", {}).get("Code", ""))

    try:
        try:
            client.head_bucket(Bucket=bucket)
            return True
        except bex.ClientError as e:
            if code_of(e) not in _HEAD_UNCLEAR:
                raise
        for prefix in prefixes or [""]:
            client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
        return True
    except (bex.EndpointConnectionError, bex.ConnectTimeoutError, bex.ReadTimeoutError) as e:
        raise StorageUnavailableError(f"object storage at {where} does not answer ({e}): start it (`pbp stack up` "
                                      "for the local stack) or point AWS_ENDPOINT_URL at yours") from None  # fmt: skip
    except bex.ClientError as e:
        code = code_of(e)
        if code in _MISSING:
            return False
        if code in _REFUSED:
            raise StorageUnavailableError(f"s3://{bucket}/: access refused at {where} ({code}): check "
                                          "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or the role of this machine "
                                          "(pbp lists runs and datasets: it needs s3:ListBucket, under the prefixes "
                                          "it uses at least, besides reading and writing objects)") from None  # fmt: skip
        raise


_FS_CACHE: dict[tuple, Any] = {}


def s3_filesystem(endpoints: Endpoints | None = None):
    import s3fs

    ep = endpoints or resolve()
    opts = ep.s3fs_options()
    key = (ep.s3_endpoint, ep.s3_access_key, ep.s3_session_token, ep.s3_region, os.getpid())
    fs = _FS_CACHE.get(key)
    if fs is None:
        fs = _FS_CACHE[key] = s3fs.S3FileSystem(**opts, skip_instance_cache=True)
    return fs


class Store:
    """A directory-like location: ``/path``, ``file:///path`` or ``s3://bucket/prefix``."""

    def __init__(self, url: str, endpoints: Endpoints | None = None) -> None:
        if url.startswith("file://"):
            url = url[len("file://") :]
        self.s3 = is_s3(url)
        self.url = url.rstrip("/") + "/"
        self.endpoints = endpoints
        """The endpoints and credentials given; None: resolved where used (environment, then the local stack)."""
        if not self.s3:
            self.root = Path(url).expanduser().resolve()

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    def join(self, name: str) -> str:
        return f"{self.url}{name}" if self.s3 else str(self.root / name)

    @property
    def fs(self):
        return s3_filesystem(self.endpoints)

    def _key(self, name: str) -> str:
        return self.join(name)[len("s3://") :]

    def bucket_exists(self) -> bool:
        """S3 only: does this URL's bucket exist? Credentials it refuses (even under this URL's prefix) are a
        StorageUnavailableError naming the bucket, not a "no such bucket"."""
        bucket, prefix = s3_bucket_and_key(self.url)
        ep = self.endpoints or resolve()
        return _bucket_reachable(_probe_client(ep), bucket, [prefix], ep)

    def exists(self, name: str) -> bool:
        if not self.s3:
            return (self.root / name).exists()
        return with_retries(f"exists {self.join(name)}", lambda: self.fs.exists(self._key(name)))

    def names(self) -> list[str]:
        """The names of the files directly under this location (none if it does not exist)."""
        if not self.s3:
            return sorted(p.name for p in self.root.iterdir() if p.is_file()) if self.root.is_dir() else []

        def ls() -> list[str]:
            try:
                entries = self.fs.ls(self._key(""), detail=True, refresh=True)
            except FileNotFoundError:
                return []
            return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "file")

        return with_retries(f"list {self.url}", ls)

    def size(self, name: str) -> int:
        if not self.s3:
            return (self.root / name).stat().st_size
        return int(with_retries(f"stat {self.join(name)}", lambda: self.fs.info(self._key(name))["size"]))

    def put_bytes(self, name: str, data: bytes) -> None:
        if not self.s3:
            atomic_write(self.root / name, data)
            return
        with_retries(f"put {self.join(name)}", lambda: self.fs.pipe_file(self._key(name), data))

    def put_file(self, name: str, local: Path) -> None:
        if not self.s3:
            dest = self.root / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.tmp")
            shutil.copyfile(local, tmp)
            os.replace(tmp, dest)
            return
        with_retries(f"upload {self.join(name)}", lambda: self.fs.put_file(str(local), self._key(name)))

    def get_bytes(self, name: str) -> bytes:
        if not self.s3:
            path = self.root / name
            if not path.exists():
                raise FileNotFoundError(f"{path}: not found")
            return path.read_bytes()
        key = self._key(name)
        try:
            return with_retries(f"get {self.join(name)}", lambda: self.fs.cat_file(key))
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.join(name)}: not found") from None

    @contextlib.contextmanager
    def open(self, name: str):
        """Open for streaming reads (S3: a buffered s3fs file, ranged GETs with retries)."""
        if not self.s3:
            with open(self.root / name, "rb") as f:
                yield f
            return
        stream: IO[bytes] = with_retries(
            f"open {self.join(name)}", lambda: self.fs.open(self._key(name), "rb", block_size=8 * 2**20)
        )
        try:
            yield stream
        finally:
            stream.close()


def register_webdataset_opener(endpoints: Endpoints | None = None) -> None:
    """Make ``webdataset`` read ``s3://`` URLs through s3fs with retries (it has no S3 opener of its own)."""
    import importlib

    gopen = importlib.import_module("webdataset.gopen")  # `webdataset.gopen` the attribute is the function

    def s3_opener(url: str, mode: str = "rb", bufsize: int = 8192, **_kw: Any):
        if "r" not in mode:
            raise ValueError(f"{url}: pbp's s3 opener is read-only")
        fs = s3_filesystem(endpoints)
        return with_retries(f"open {url}", lambda: fs.open(url[len("s3://") :], "rb", block_size=8 * 2**20))

    gopen.gopen_schemes["s3"] = s3_opener
