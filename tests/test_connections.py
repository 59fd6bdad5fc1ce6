"""One resolver for connection ids: Airflow when installed, else ``AIRFLOW_CONN_*`` (JSON or URI);
secrets never shown; importable without Airflow."""

from __future__ import annotations

import json
import logging
import pickle
import subprocess
import sys
import textwrap
from urllib.parse import quote

import pytest

from imageindex.connections import (
    Credentials,
    SecretsFilter,
    base_url,
    find_connection,
    get_credentials,
    parse_connection,
    redact,
    register_secret,
)
from imageindex.errors import ConfigError

SECRET = "sk-policy-S3CRET-abcdef012345"


@pytest.fixture
def no_airflow(monkeypatch):
    """As if Airflow were not installed: ``from airflow.sdk import ...`` raises ImportError."""
    monkeypatch.setitem(sys.modules, "airflow.sdk", None)


# ------------------------------------------------------------------------------------------------
# resolving


def test_credentials_from_env_json(monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_POLICY_JSON",
        json.dumps(
            {"conn_type": "generic", "host": "https://example.test/api/v1", "password": SECRET}
        ),
    )
    creds = get_credentials("policy_json")
    assert creds.api_key == SECRET and creds.host == "https://example.test/api/v1"
    assert SECRET not in repr(creds) and SECRET not in str(creds)
    with pytest.raises(TypeError):
        pickle.dumps(creds)
    assert redact(f"key={SECRET}!") == "key=***!"


def test_missing_connection_says_what_to_set(monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_NOPE_NOT_DEFINED", raising=False)
    with pytest.raises(ConfigError, match="AIRFLOW_CONN_NOPE_NOT_DEFINED") as info:
        get_credentials("nope_not_defined", service="DashScope")
    assert "DashScope" in str(info.value)
    # find_connection answers None instead: S3 then uses boto3's default credential chain.
    assert find_connection("nope_not_defined") is None


@pytest.mark.parametrize("conn_id", ["", "  ", None, 3])
def test_conn_id_must_be_a_name(conn_id):
    with pytest.raises(ConfigError, match="conn_id must be a non-empty string"):
        find_connection(conn_id)


def test_broken_env_connection_never_quotes_the_value(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_POLICY_BROKEN", '{"password": "' + SECRET + '", ')
    with pytest.raises(ConfigError) as info:
        get_credentials("policy_broken")
    assert SECRET not in str(info.value) and "AIRFLOW_CONN_POLICY_BROKEN" in str(info.value)


def test_connection_without_key(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_POLICY_NOKEY", json.dumps({"host": "https://x.test"}))
    creds = get_credentials("policy_nokey")
    with pytest.raises(ConfigError, match="password field"):
        creds.require_key("DashScope")


def test_key_from_extra_when_the_password_is_empty(monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_EXTRA_KEY", json.dumps({"host": "h.test", "extra": {"token": SECRET + "t"}})
    )
    creds = find_connection("extra_key")
    assert creds.password is None and creds.require_key("GME") == SECRET + "t"
    assert redact(SECRET + "t") == "***"


def test_uri_form_without_airflow(no_airflow, monkeypatch):
    # The S3 shape: no host, the access key pair as login/password, options as the query.
    endpoint = "http://127.0.0.1:8333"
    monkeypatch.setenv(
        "AIRFLOW_CONN_URI_S3",
        f"aws://AK%2FID:{quote(SECRET + '@/', safe='')}@/"
        f"?endpoint_url={quote(endpoint, safe='')}&region_name=us-east-1",
    )
    creds = find_connection("uri_s3")
    assert (creds.conn_type, creds.login, creds.password, creds.host) == (
        "aws",
        "AK/ID",
        SECRET + "@/",
        None,
    )
    assert creds.extra == {"endpoint_url": endpoint, "region_name": "us-east-1"}
    assert redact(f"x {SECRET}@/ y") == "x *** y"
    # The hosted shape: the key as the password, the service URL as host (path kept) and port.
    monkeypatch.setenv(
        "AIRFLOW_CONN_URI_HOSTED", f"https://:{SECRET}@svc.test:8443/api/v1/?timeout=5"
    )
    creds = get_credentials("uri_hosted")
    assert (creds.host, creds.port, creds.api_key) == ("svc.test/api/v1", 8443, SECRET)
    assert base_url(creds) == "https://svc.test:8443/api/v1"


def test_uri_extra_as_json(no_airflow, monkeypatch):
    extra = {"endpoint_url": "http://e.test", "config_kwargs": {"retries": {"max_attempts": 1}}}
    monkeypatch.setenv(
        "AIRFLOW_CONN_URI_EXTRA", f"aws://k:s@/?__extra__={quote(json.dumps(extra), safe='')}"
    )
    assert find_connection("uri_extra").extra == extra


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("aws://k:s@/?__extra__=%7Bnot-json", "'__extra__' is not valid JSON"),
        ("just-a-token", "neither a JSON connection nor a URI"),
        ("http://h.test:port/", "port is not a number"),
        ('{"host": "h", "port": "x"}', "'port' must be an integer"),
        ('{"host": "h", "extra": "{oops"}', "'extra' is a string but not valid JSON"),
        ('{"host": "h", "extra": [1]}', "'extra' must be a JSON object"),
        ('["h"]', "neither a JSON connection nor a URI"),
    ],
)
def test_malformed_values_name_the_variable(value, message):
    with pytest.raises(ConfigError, match=message) as info:
        parse_connection(value, "AIRFLOW_CONN_BAD")
    assert "AIRFLOW_CONN_BAD" in str(info.value)


def test_json_extra_given_as_a_string():
    conn = parse_connection(
        json.dumps({"login": "k", "port": "9200", "extra": json.dumps({"use_ssl": True})}), "V"
    )
    assert conn["extra"] == {"use_ssl": True} and conn["port"] == 9200


def test_airflow_is_asked_first_when_installed(monkeypatch):
    from airflow.sdk import BaseHook

    asked = []
    real = BaseHook.get_connection.__func__

    def spy(cls, conn_id):
        asked.append(conn_id)
        return real(cls, conn_id)

    monkeypatch.setattr(BaseHook, "get_connection", classmethod(spy))
    monkeypatch.setenv(
        "AIRFLOW_CONN_VIA_AIRFLOW",
        json.dumps({"conn_type": "generic", "host": "a.test", "password": SECRET, "port": 81}),
    )
    creds = get_credentials("via_airflow")
    assert asked == ["via_airflow"]
    assert (creds.host, creds.port, creds.api_key, creds.conn_type) == (
        "a.test",
        81,
        SECRET,
        "generic",
    )


def test_importable_and_usable_without_airflow(tmp_path):
    """Importing the library loads no Airflow; without Airflow installed, env connections work."""
    probe = textwrap.dedent(
        """
        import json, os, sys
        import imageindex.connections, imageindex.s3util, imageindex.hosted
        loaded = sorted(m for m in sys.modules if m == "airflow" or m.startswith("airflow."))
        assert not loaded, loaded

        class NoAirflow:
            def find_spec(self, name, path=None, target=None):
                if name == "airflow" or name.startswith("airflow."):
                    raise ImportError(f"{name} is not installed here")

        sys.meta_path.insert(0, NoAirflow())
        os.environ["AIRFLOW_CONN_PROBE"] = json.dumps(
            {"login": "k", "password": "probe-secret", "extra": {"endpoint_url": "http://e.test"}}
        )
        from imageindex.connections import find_connection, redact
        c = find_connection("probe")
        client = imageindex.s3util.get_s3_client("probe")
        print(json.dumps([c.login, redact("probe-secret"), client.meta.endpoint_url]))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["k", "***", "http://e.test"]


# ------------------------------------------------------------------------------------------------
# service URLs and masking


def test_base_urls():
    def creds(host, **kw):
        return Credentials("c", host=host, **kw)

    assert base_url(creds("https://a.test/x")) == "https://a.test/x"
    assert base_url(creds("a.test")) == "https://a.test"
    assert base_url(creds("127.0.0.1", port=8080)) == "http://127.0.0.1:8080"
    assert base_url(creds("a.test", schema="http")) == "http://a.test"
    assert base_url(creds(None, extra={"base_url": "https://b.test"})) == "https://b.test"
    assert base_url(creds(None), default="https://d.test") == "https://d.test"
    with pytest.raises(ConfigError, match="no host"):
        base_url(creds(None))


def test_secrets_filter_rewrites_records():
    register_secret(SECRET)
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "key %s here", (SECRET,), None)
    assert SecretsFilter().filter(record)
    assert SECRET not in record.getMessage() and "***" in record.getMessage()
    try:
        raise RuntimeError(f"boom {SECRET}")
    except RuntimeError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    SecretsFilter().filter(record)
    assert SECRET not in record.exc_text


# ------------------------------------------------------------------------------------------------
# OpenSearch reads its connection here too


def test_opensearch_client_from_an_env_connection_without_airflow(no_airflow, monkeypatch):
    pytest.importorskip("opensearchpy")
    from imageindex.stores.opensearch import client_for_conn_id

    monkeypatch.setenv(
        "AIRFLOW_CONN_OS_ENV",
        json.dumps(
            {
                "conn_type": "opensearch",
                "host": "os.test",
                "port": 9201,
                "login": "admin",
                "password": SECRET + "os",
                "extra": {"use_ssl": True, "verify_certs": False},
            }
        ),
    )
    client = client_for_conn_id("os_env", timeout=7)
    host = client.transport.hosts[0]
    assert (host["host"], host["port"]) == ("os.test", 9201)
    assert client.transport.kwargs["use_ssl"] is True
    assert redact(SECRET + "os") == "***"
    monkeypatch.delenv("AIRFLOW_CONN_OS_ENV")
    with pytest.raises(ConfigError, match="AIRFLOW_CONN_OS_ENV") as info:
        client_for_conn_id("os_env")
    assert "OpenSearch" in str(info.value)
