"""Storage against moto's S3 server on 127.0.0.1 over real HTTP."""

from __future__ import annotations

import pytest

from tasks.core.storage import Conflict, StorageError, head, list_objects, put_bytes, read_bytes, split_s3, upload_file


def test_split_s3():
    assert split_s3("s3://bucket/a/b.csv") == ("bucket", "a/b.csv")
    with pytest.raises(StorageError, match="not an s3"):
        split_s3("/tmp/x")


def test_round_trip_and_listing(s3_bucket, tmp_path):
    put_bytes(f"s3://{s3_bucket}/landing/1.csv", b"text,label\n")
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * (9 * 1024 * 1024))  # over the multipart threshold
    upload_file(big, f"s3://{s3_bucket}/landing/2.bin")
    assert read_bytes(f"s3://{s3_bucket}/landing/1.csv") == b"text,label\n"
    assert read_bytes(f"s3://{s3_bucket}/landing/2.bin") == big.read_bytes()
    assert [o.uri.rsplit("/", 1)[1] for o in list_objects(f"s3://{s3_bucket}/landing/")] == ["1.csv", "2.bin"]
    assert head(f"s3://{s3_bucket}/nope") is None


def test_missing_object_is_a_clear_error(s3_bucket):
    with pytest.raises(StorageError, match="cannot read s3://.*/missing.csv"):
        read_bytes(f"s3://{s3_bucket}/missing.csv")


def test_conditional_writes_refuse_a_stale_writer(s3_bucket):
    uri = f"s3://{s3_bucket}/aliases.json"
    first = put_bytes(uri, b"{}", if_none_match=True)
    with pytest.raises(Conflict):
        put_bytes(uri, b"{}", if_none_match=True)
    second = put_bytes(uri, b'{"production": "v0001"}', if_match=first)
    with pytest.raises(Conflict):
        put_bytes(uri, b'{"production": "v0002"}', if_match=first)  # stale ETag
    assert head(uri).etag == second


def test_interleaved_writers_never_lose_an_update(s3_bucket):
    """Two writers read the same ETag; the slower one is refused and must re-read.
    (Interleaved deterministically: moto checks If-Match without a lock, so truly
    simultaneous requests can both pass there; real S3 serialises them.)"""
    uri = f"s3://{s3_bucket}/counter"
    put_bytes(uri, b"0")
    seen_a = head(uri).etag
    seen_b = head(uri).etag
    put_bytes(uri, b"1", if_match=seen_a)
    with pytest.raises(Conflict):
        put_bytes(uri, b"1", if_match=seen_b)
    retry = head(uri)
    put_bytes(uri, str(int(read_bytes(uri)) + 1).encode(), if_match=retry.etag)
    assert read_bytes(uri) == b"2"
