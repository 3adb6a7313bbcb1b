"""Storage: the one place that knows local paths from `s3://bucket/key` URIs.

Landing zones, the registry mirror and the DVC remote may all live on S3-compatible
storage. Every stage that reads or writes such a location goes through these functions,
so endpoint and credentials are resolved in one way: boto3's standard settings
(`AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_S3`, `AWS_ACCESS_KEY_ID`, ...), optionally an
explicit endpoint URL from params.yaml. Creating no client at import time.

Conditional writes (`put_bytes(..., if_match=ETAG)` / `if_none_match=True`) are how two
writers avoid silently overwriting each other: S3 answers 412 and we raise `Conflict`.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

S3_PREFIX = "s3://"
MULTIPART_THRESHOLD = 8 * 1024 * 1024
# Every S3 call is retried by botocore's "standard" mode: connection errors, timeouts,
# throttling and 5xx, up to S3_ATTEMPTS attempts with truncated exponential backoff and
# full jitter (rand(0, 1) * 2**attempt seconds, at most 20 s), so an endpoint that is away
# for a few seconds costs a pause, not a failed run. Past that, the call raises
# StorageError naming the URI and the cause. A black-holed endpoint fails the connect
# after S3_CONNECT_TIMEOUT seconds per attempt instead of botocore's 60.
S3_ATTEMPTS = 5
S3_CONNECT_TIMEOUT = 10
S3_READ_TIMEOUT = 60


class StorageError(RuntimeError):
    """A storage location could not be read or written; the message names it."""


class Conflict(StorageError):
    """A conditional write lost: someone else changed the object first."""


@dataclass(frozen=True)
class S3Object:
    uri: str
    size: int
    etag: str
    last_modified: float


def is_s3(uri: str | Path) -> bool:
    return str(uri).startswith(S3_PREFIX)


def split_s3(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/key` -> ("bucket", "some/key")."""
    if not is_s3(uri):
        raise StorageError(f"not an s3:// URI: {uri}")
    bucket, _, key = uri[len(S3_PREFIX):].partition("/")
    if not bucket:
        raise StorageError(f"s3 URI without a bucket: {uri}")
    return bucket, key


# settings that change which client boto3 builds; a cached client is reused only while
# they are the same (tests and tools may change them at run time)
_CLIENT_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
               "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_REGION")


def s3_client(endpoint_url: str | None = None):
    """A boto3 S3 client; endpoint and credentials from the standard AWS settings unless
    `endpoint_url` is given (params.yaml may name one for S3-compatible stores). Cached:
    building one costs ~0.2 s, and a registry push makes dozens of calls."""
    return _cached_client(endpoint_url or None, tuple(os.environ.get(k) for k in _CLIENT_ENV))


@functools.lru_cache(maxsize=8)
def _cached_client(endpoint_url: str | None, _settings: tuple):
    import boto3
    from botocore.config import Config

    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"
    return boto3.client("s3", endpoint_url=endpoint_url, region_name=region,
                        config=Config(retries={"max_attempts": S3_ATTEMPTS, "mode": "standard"},
                                      connect_timeout=S3_CONNECT_TIMEOUT, read_timeout=S3_READ_TIMEOUT))


def _error_code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def read_bytes(uri: str | Path, *, endpoint_url: str | None = None) -> bytes:
    """The bytes at a local path or an s3:// URI."""
    if not is_s3(uri):
        return Path(uri).read_bytes()
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3(str(uri))
    try:
        return s3_client(endpoint_url).get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        raise StorageError(f"cannot read {uri}: {_error_code(exc) or exc}") from exc
    except BotoCoreError as exc:
        raise StorageError(f"cannot read {uri}: {exc}") from exc


def put_bytes(uri: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False,
              endpoint_url: str | None = None) -> str:
    """Write bytes to s3:// (or a local path); returns the new ETag (local: ""). With
    `if_match` the write succeeds only while the object still has that ETag; with
    `if_none_match` only when no object exists yet. A lost race raises `Conflict`."""
    if not is_s3(uri):
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        Path(uri).write_bytes(data)
        return ""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3(uri)
    extra = {}
    if if_match:
        extra["IfMatch"] = if_match
    if if_none_match:
        extra["IfNoneMatch"] = "*"
    try:
        return s3_client(endpoint_url).put_object(Bucket=bucket, Key=key, Body=data, **extra)["ETag"]
    except ClientError as exc:
        if _error_code(exc) in {"PreconditionFailed", "412", "ConditionalRequestConflict"}:
            raise Conflict(f"{uri} changed under us (conditional write refused)") from exc
        raise StorageError(f"cannot write {uri}: {_error_code(exc) or exc}") from exc
    except BotoCoreError as exc:  # unreachable endpoint, no credentials, ...
        raise StorageError(f"cannot write {uri}: {exc}") from exc


def upload_file(path: Path, uri: str, *, endpoint_url: str | None = None) -> None:
    """Upload one file; boto3 switches to multipart above MULTIPART_THRESHOLD."""
    from boto3.exceptions import S3UploadFailedError
    from boto3.s3.transfer import TransferConfig
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3(uri)
    try:
        s3_client(endpoint_url).upload_file(str(path), bucket, key,
                                            Config=TransferConfig(multipart_threshold=MULTIPART_THRESHOLD))
    except (S3UploadFailedError, ClientError, BotoCoreError) as exc:
        raise StorageError(f"cannot write {uri}: {exc}") from exc


def head(uri: str, *, endpoint_url: str | None = None) -> S3Object | None:
    """Size and ETag of an s3:// object, or None when it does not exist."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3(uri)
    try:
        got = s3_client(endpoint_url).head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if _error_code(exc) in {"404", "NoSuchKey", "NotFound"}:
            return None
        raise StorageError(f"cannot stat {uri}: {_error_code(exc) or exc}") from exc
    except BotoCoreError as exc:
        raise StorageError(f"cannot stat {uri}: {exc}") from exc
    return S3Object(uri, got["ContentLength"], got["ETag"], got["LastModified"].timestamp())


def list_objects(prefix_uri: str, *, endpoint_url: str | None = None) -> list[S3Object]:
    """Every object under an s3:// prefix, oldest first (arrival order), then by key."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = split_s3(prefix_uri)
    pages = s3_client(endpoint_url).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    try:
        found = [S3Object(f"{S3_PREFIX}{bucket}/{o['Key']}", o["Size"], o["ETag"], o["LastModified"].timestamp())
                 for page in pages for o in page.get("Contents", [])]
    except ClientError as exc:
        raise StorageError(f"cannot list {prefix_uri}: {_error_code(exc) or exc}") from exc
    except BotoCoreError as exc:
        raise StorageError(f"cannot list {prefix_uri}: {exc}") from exc
    return sorted(found, key=lambda o: (o.last_modified, o.uri))


def size_of(uri: str | Path, *, endpoint_url: str | None = None) -> int:
    """Bytes at a local path (stat) or an s3:// URI (HEAD, the Content-Length): nothing is read."""
    if not is_s3(uri):
        try:
            return Path(uri).stat().st_size
        except OSError as exc:
            raise StorageError(f"cannot stat {uri}: {exc.strerror}") from exc
    found = head(str(uri), endpoint_url=endpoint_url)
    if found is None:
        raise StorageError(f"cannot read {uri}: NoSuchKey")
    return found.size


def sha256_of(uri: str | Path, *, endpoint_url: str | None = None) -> str:
    """SHA-256 of a local file or an s3:// object, streamed in chunks (constant memory)."""
    import hashlib

    if not is_s3(uri):
        with open(uri, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3(str(uri))
    digest = hashlib.sha256()
    try:
        body = s3_client(endpoint_url).get_object(Bucket=bucket, Key=key)["Body"]
        for chunk in body.iter_chunks(1024 * 1024):
            digest.update(chunk)
    except ClientError as exc:
        raise StorageError(f"cannot read {uri}: {_error_code(exc) or exc}") from exc
    except BotoCoreError as exc:
        raise StorageError(f"cannot read {uri}: {exc}") from exc
    return digest.hexdigest()


def download_file(uri: str, path: Path, *, endpoint_url: str | None = None) -> None:
    """Download one s3:// object to a local file (multipart ranges above the threshold),
    without holding it in memory."""
    from boto3.s3.transfer import TransferConfig
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3(uri)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        s3_client(endpoint_url).download_file(bucket, key, str(path),
                                              Config=TransferConfig(multipart_threshold=MULTIPART_THRESHOLD))
    except ClientError as exc:
        raise StorageError(f"cannot read {uri}: {_error_code(exc) or exc}") from exc
    except BotoCoreError as exc:
        raise StorageError(f"cannot read {uri}: {exc}") from exc
