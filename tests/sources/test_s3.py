from __future__ import annotations

import hashlib
import inspect
import time
from contextlib import contextmanager

import pytest

from imageindex.errors import SourceError
from imageindex.sources import S3Source, open_source

OBJECTS = {
    "photos/a.jpg": b"a",
    "photos/B.JPG": b"bb",
    "photos/notes.txt": b"not an image",
    "photos/sub/": b"",  # a folder marker, as consoles create them
    "photos/sub/c.png": b"ccc",
    "photos/sub/deep/": b"",
    "photos/sub/deep/d.webp": b"dddd",
    "photos/sub/deep/ünï côde 1.jpeg": b"eeeee",
    "photosx/e.jpg": b"sibling prefix",
    "other/f.gif": b"f",
}
PHOTO_KEYS = ["B.JPG", "a.jpg", "sub/c.png", "sub/deep/d.webp", "sub/deep/ünï côde 1.jpeg"]


@pytest.fixture(scope="module")
def bucket(seaweedfs) -> str:
    name = seaweedfs.new_bucket("src")
    client = seaweedfs.client()
    for key, body in OBJECTS.items():
        client.put_object(Bucket=name, Key=key, Body=body)
    return name


def source(seaweedfs, uri: str) -> S3Source:
    src = open_source(uri, s3_conn_id=seaweedfs.conn_id)
    assert isinstance(src, S3Source)
    return src


@contextmanager
def count_list_calls(client):
    """Count real ListObjectsV2 requests through botocore's event hooks."""
    calls: list[dict] = []

    def hook(params, **_):
        calls.append(dict(params))

    client.meta.events.register("before-parameter-build.s3.ListObjectsV2", hook)
    try:
        yield calls
    finally:
        client.meta.events.unregister("before-parameter-build.s3.ListObjectsV2", hook)


def test_lists_images_recursively_with_pagination(seaweedfs, bucket):
    src = source(seaweedfs, f"s3://{bucket}/photos")
    with count_list_calls(src.client) as calls:
        entries = list(src.iter_files(page_size=2))
    assert sorted(e.key for e in entries) == sorted(PHOTO_KEYS)
    # 8 objects under photos/ in pages of 2.
    assert len(calls) >= 4
    assert all(c["MaxKeys"] == 2 for c in calls)


@pytest.mark.parametrize("page_size", range(1, 10))
def test_every_page_size_lists_everything(seaweedfs, bucket, page_size):
    # SeaweedFS says "not truncated" when a full page ends on a folder marker ("photos/sub/")
    # whose folder has more objects; the listing must not stop there.
    src = source(seaweedfs, f"s3://{bucket}/photos")
    assert sorted(e.key for e in src.iter_files(page_size=page_size)) == sorted(PHOTO_KEYS)


def test_entry_fields(seaweedfs, bucket):
    entries = {e.key: e for e in source(seaweedfs, f"s3://{bucket}/photos/").iter_files()}
    e = entries["sub/deep/ünï côde 1.jpeg"]
    assert e.uri == f"s3://{bucket}/photos/sub/deep/ünï côde 1.jpeg"  # raw key, not encoded
    assert e.size == 5
    assert abs(e.mtime - time.time()) < 600
    assert e.fingerprint == "etag:" + hashlib.md5(b"eeeee").hexdigest()


def test_iter_files_streams_page_by_page(seaweedfs, bucket):
    src = source(seaweedfs, f"s3://{bucket}/photos")
    with count_list_calls(src.client) as calls:
        it = src.iter_files(page_size=2)
        assert inspect.isgenerator(it)
        next(it)
        assert len(calls) == 1
        it.close()


@pytest.mark.parametrize("suffix", ["photos", "photos/", "/photos/"])
def test_prefix_is_a_folder(seaweedfs, bucket, suffix):
    src = source(seaweedfs, f"s3://{bucket}/{suffix}")
    assert src.uri == f"s3://{bucket}/photos/"
    assert sorted(e.key for e in src.iter_files()) == sorted(PHOTO_KEYS)  # never photosx/


def test_bucket_root(seaweedfs, bucket):
    keys = {e.key for e in source(seaweedfs, f"s3://{bucket}").iter_files()}
    assert keys == {"other/f.gif", "photosx/e.jpg", *(f"photos/{k}" for k in PHOTO_KEYS)}


def test_etag_fingerprint_follows_content(seaweedfs):
    name = seaweedfs.new_bucket("etag")
    client = seaweedfs.client()
    client.put_object(Bucket=name, Key="x.png", Body=b"one")
    src = source(seaweedfs, f"s3://{name}")
    (before,) = src.iter_files()
    client.put_object(Bucket=name, Key="x.png", Body=b"one")
    (same,) = src.iter_files()
    client.put_object(Bucket=name, Key="x.png", Body=b"two")
    (after,) = src.iter_files()
    assert before.fingerprint == same.fingerprint
    assert after.fingerprint != before.fingerprint
    assert '"' not in after.fingerprint


def test_read_bytes(seaweedfs, bucket):
    src = source(seaweedfs, f"s3://{bucket}/photos")
    for e in src.iter_files():
        assert src.read_bytes(e.uri) == OBJECTS[f"photos/{e.key}"]


@pytest.mark.parametrize(
    "key",
    ["photosx/e.jpg", "other/f.gif", "photos/", "../photos/a.jpg", "photos/../other/f.gif"],
    ids=str,
)
def test_read_bytes_refuses_outside_root(seaweedfs, bucket, key):
    with pytest.raises(SourceError, match="outside the source"):
        source(seaweedfs, f"s3://{bucket}/photos").read_bytes(f"s3://{bucket}/{key}")


def test_read_bytes_refuses_other_bucket(seaweedfs, bucket):
    with pytest.raises(SourceError, match="outside the source"):
        source(seaweedfs, f"s3://{bucket}/photos").read_bytes("s3://elsewhere/photos/a.jpg")


def test_read_bytes_missing_object(seaweedfs, bucket):
    with pytest.raises(SourceError, match="no such object") as exc:
        source(seaweedfs, f"s3://{bucket}/photos").read_bytes(f"s3://{bucket}/photos/gone.jpg")
    assert "photos/gone.jpg" in str(exc.value)


def test_missing_bucket_names_it_without_secrets(seaweedfs):
    src = source(seaweedfs, "s3://no-such-bucket-4242/photos")
    with pytest.raises(SourceError) as exc:
        src.check_available()
    msg = str(exc.value)
    assert "'no-such-bucket-4242'" in msg and "does not exist" in msg
    assert seaweedfs.secret_key not in msg and seaweedfs.access_key not in msg
    with pytest.raises(SourceError, match="no-such-bucket-4242"):
        list(src.iter_files())


def test_available_bucket(seaweedfs, bucket):
    source(seaweedfs, f"s3://{bucket}/photos").check_available()
    # An empty (or not yet written) prefix in an existing bucket is available, just empty.
    empty = source(seaweedfs, f"s3://{bucket}/nothing-here")
    empty.check_available()
    assert list(empty.iter_files()) == []
