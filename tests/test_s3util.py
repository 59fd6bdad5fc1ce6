from __future__ import annotations

import json
import socket
import sys
import threading
from urllib.parse import quote

import pytest

from imageindex import s3util
from imageindex.errors import ConfigError, SourceError
from imageindex.s3util import get_s3_client, parse_s3_uri
from imageindex.sources import open_source


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://bucket", ("bucket", "")),
        ("s3://bucket/", ("bucket", "")),
        ("s3://bucket/a/b", ("bucket", "a/b")),
        ("s3://bucket/a/b/", ("bucket", "a/b/")),
        ("s3://bucket//a", ("bucket", "a")),
        ("s3://my.bucket-1/x?y#z%20", ("my.bucket-1", "x?y#z%20")),
    ],
)
def test_parse_s3_uri(uri, expected):
    assert parse_s3_uri(uri) == expected


@pytest.mark.parametrize("uri", ["s3://", "s3:///prefix", "bucket/prefix", "s3:/b/p", "s3://b a/p"])
def test_parse_s3_uri_malformed_names_the_uri(uri):
    with pytest.raises(ConfigError) as exc:
        parse_s3_uri(uri)
    assert repr(uri) in str(exc.value)


@pytest.fixture
def fresh_clients():
    s3util.clear_client_cache()
    yield
    s3util.clear_client_cache()


def test_client_through_s3hook_and_env_connection(seaweedfs, fresh_clients, monkeypatch):
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    calls = []
    real_get_conn = S3Hook.get_conn

    def spy(self):
        calls.append(self.aws_conn_id)
        return real_get_conn(self)

    monkeypatch.setattr(S3Hook, "get_conn", spy)
    client = get_s3_client(seaweedfs.conn_id)
    assert calls == [seaweedfs.conn_id]
    assert client.meta.endpoint_url == seaweedfs.endpoint_url
    bucket = seaweedfs.new_bucket("hook")
    client.put_object(Bucket=bucket, Key="k", Body=b"v")
    assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"v"
    # One client per connection and process.
    assert get_s3_client(seaweedfs.conn_id) is client
    assert calls == [seaweedfs.conn_id]


def test_default_conn_id_from_env(seaweedfs, fresh_clients, monkeypatch):
    monkeypatch.setenv("IMAGEINDEX_S3_CONN_ID", seaweedfs.conn_id)
    assert get_s3_client() is get_s3_client(seaweedfs.conn_id)
    monkeypatch.delenv("IMAGEINDEX_S3_CONN_ID")
    assert s3util.resolve_conn_id() == "aws_default"


def test_client_cache_is_thread_safe(seaweedfs, fresh_clients):
    got = []
    barrier = threading.Barrier(4)

    def work():
        barrier.wait()
        got.append(get_s3_client(seaweedfs.conn_id))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(c) for c in got}) == 1


def test_without_airflow_the_env_connection_is_read_directly(seaweedfs, fresh_clients, monkeypatch):
    # A None entry in sys.modules makes the import fail as if the package were not installed.
    monkeypatch.setitem(sys.modules, "airflow.providers.amazon.aws.hooks.s3", None)
    monkeypatch.setitem(sys.modules, "airflow.sdk", None)
    client = get_s3_client(seaweedfs.conn_id)
    assert client.meta.endpoint_url == seaweedfs.endpoint_url
    bucket = seaweedfs.new_bucket("noaf")
    client.put_object(Bucket=bucket, Key="k", Body=b"v")
    assert client.list_objects_v2(Bucket=bucket)["KeyCount"] == 1


@pytest.mark.parametrize("airflow", [True, False], ids=["airflow", "no-airflow"])
def test_env_connection_uri_form(seaweedfs, monkeypatch, airflow):
    if not airflow:
        monkeypatch.setitem(sys.modules, "airflow.sdk", None)
    uri = (
        f"aws://{quote(seaweedfs.access_key, safe='')}:{quote(seaweedfs.secret_key, safe='')}@/"
        f"?endpoint_url={quote(seaweedfs.endpoint_url, safe='')}&region_name=us-east-1"
    )
    monkeypatch.setenv("AIRFLOW_CONN_SEAWEED_URI", uri)
    client = s3util.client_from_connection("seaweed_uri")
    assert client.meta.endpoint_url == seaweedfs.endpoint_url
    client.list_buckets()


def test_bad_env_connection_json_does_not_echo_the_secret(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_BROKEN", '{"login": "k", "password": "hunter2-secret",')
    with pytest.raises(ConfigError, match="AIRFLOW_CONN_BROKEN") as exc:
        s3util.client_from_connection("broken")
    assert "hunter2" not in str(exc.value)


def test_wrong_credentials_give_access_denied_without_secrets(
    seaweedfs, fresh_clients, monkeypatch
):
    conn = seaweedfs.connection()
    conn["password"] = "wrong-secret-" + seaweedfs.secret_key[:6]
    conn["extra"]["config_kwargs"] = {"retries": {"max_attempts": 1}}
    monkeypatch.setenv("AIRFLOW_CONN_SEAWEED_BAD", json.dumps(conn))
    bucket = seaweedfs.new_bucket("denied")
    src = open_source(f"s3://{bucket}/x", s3_conn_id="seaweed_bad")
    with pytest.raises(SourceError, match="access denied") as exc:
        src.check_available()
    msg = str(exc.value)
    assert "seaweed_bad" in msg and bucket in msg
    assert conn["password"] not in msg and seaweedfs.access_key not in msg


def test_unreachable_endpoint(fresh_clients, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    conn = {
        "conn_type": "aws",
        "login": "k",
        "password": "s",
        "extra": {
            "endpoint_url": f"http://127.0.0.1:{port}",
            "region_name": "us-east-1",
            "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 2},
        },
    }
    monkeypatch.setenv("AIRFLOW_CONN_NOWHERE", json.dumps(conn))
    with pytest.raises(SourceError, match="unreachable") as exc:
        open_source("s3://some-bucket/p", s3_conn_id="nowhere").check_available()
    assert "endpoint_url" in str(exc.value) and "'nowhere'" in str(exc.value)
