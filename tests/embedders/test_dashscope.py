"""DashScope multimodal embedding against the local fake service."""

from __future__ import annotations

import json
import logging
from collections import Counter

import numpy as np
import pytest
from hosted_server import (
    BAD_IMAGE,
    EMBED_PATH,
    KEY,
    NO_EMBEDDING,
    decode_data_uri,
    fake_vector,
    jpeg,
    malformed,
    running,
    server_error,
    slow,
    throttle,
    unauthorized,
)

from imageindex.connections import Credentials
from imageindex.embedders import clear_embedder_cache, get_embedder
from imageindex.embedders.dashscope import DashScopeEmbedder, dashscope_base_url
from imageindex.errors import AuthError, ConfigError, ProviderError


@pytest.fixture
def fake(monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    with running(monkeypatch) as server:
        yield server
    # Whatever happened in the test, the key was never logged.
    assert KEY not in caplog.text


def embedder(fake, **kw) -> DashScopeEmbedder:
    options = {"conn_id": fake.dashscope_conn, "retry_base_delay": 0.001, **kw}
    return DashScopeEmbedder(**options)


def expected(data: bytes, dim: int = 1152) -> np.ndarray:
    return np.asarray(fake_vector(data, dim), dtype=np.float32)


def test_embeds_jpegs_in_batches_with_the_key_and_data_uris(fake):
    fake.reverse_order = True  # the reply's "index", not its order, places each vector
    e = embedder(fake)
    assert (e.name, e.dim, e.wants_jpeg) == ("dashscope/tongyi-embedding-vision-plus", 1152, True)
    jpegs = [jpeg(i) for i in range(19)]
    out = e.embed_jpegs(jpegs)
    assert out.errors is None and out.vectors.shape == (19, 1152)
    for i, data in enumerate(jpegs):
        np.testing.assert_allclose(out.vectors[i], expected(data), atol=1e-6)
    sent = fake.requests_to("embedding")
    # The tongyi models take 8 images a request; batches run in parallel, in any order.
    assert sorted(len(r.contents) for r in sent) == [3, 8, 8]
    for r in sent:
        assert r.path == EMBED_PATH
        assert r.headers["Authorization"] == f"Bearer {KEY}"
        assert r.body["model"] == "tongyi-embedding-vision-plus"
        assert "dimension" not in r.body.get("parameters", {})
        assert all(c["image"].startswith("data:image/jpeg;base64,") for c in r.contents)
    assert Counter(img for r in sent for img in r.images()) == Counter(jpegs)
    assert e.stats == {"requests": 3, "retries": 0, "throttles": 0, "failures": 0, "images": 19}


def test_arrays_are_sent_as_jpeg(fake):
    e = embedder(fake, model="tongyi-embedding-vision-flash")
    out = e.embed_images([np.full((224, 224, 3), 200, np.uint8)])
    (sent,) = fake.requests_to("embedding")
    image = sent.images()[0]
    assert image[:2] == b"\xff\xd8" and out.vectors.shape == (1, 768)
    np.testing.assert_allclose(out.vectors[0], expected(image, 768), atol=1e-6)


def test_texts_for_queries_and_chosen_dimension(fake):
    e = embedder(fake, dimension=512)
    assert e.name == "dashscope/tongyi-embedding-vision-plus-512"
    vectors = e.embed_texts(["a red car", "a cat"])
    assert vectors.shape == (2, 512)
    np.testing.assert_allclose(vectors[1], expected(b"a cat", 512), atol=1e-6)
    (sent,) = fake.requests_to("embedding")
    assert sent.contents == [{"text": "a red car"}, {"text": "a cat"}]
    assert sent.body["parameters"] == {"dimension": 512}


def test_429s_then_success_embed_every_image_once(fake):
    fake.script("embedding", throttle("0"), throttle(None, code="Throttling.AllocationQuota"))
    e = embedder(fake, concurrency=3)
    jpegs = [jpeg(i) for i in range(20)]
    out = e.embed_jpegs(jpegs)
    assert out.errors is None
    for i, data in enumerate(jpegs):
        np.testing.assert_allclose(out.vectors[i], expected(data), atol=1e-6)
    answered = fake.requests_to("embedding")[2:]  # the first two were throttled
    assert Counter(img for r in answered for img in r.images()) == Counter(jpegs)
    stats = e.stats
    assert stats["throttles"] == 2 and stats["retries"] == 2 and stats["requests"] == 5


def test_500_and_timeout_are_retried(fake):
    fake.script("embedding", server_error(500), slow(1.0))
    e = embedder(fake, timeout=0.3)
    out = e.embed_jpegs([jpeg(1)])
    np.testing.assert_allclose(out.vectors[0], expected(jpeg(1)), atol=1e-6)
    assert e.stats["retries"] == 2 and len(fake.requests_to("embedding")) == 3


def test_401_is_an_auth_error_after_one_request(fake):
    fake.script("embedding", unauthorized())
    e = embedder(fake, concurrency=5)
    with pytest.raises(AuthError) as info:
        e.embed_jpegs([jpeg(i) for i in range(40)])
    message = str(info.value)
    assert f"check the API key in Airflow connection '{fake.dashscope_conn}'" in message
    assert "InvalidApiKey" in message and KEY not in message and KEY not in repr(info.value)
    assert len(fake.requests) == 1
    with pytest.raises(AuthError):  # and later calls do not try again
        e.embed_texts(["x"])
    assert len(fake.requests) == 1


def test_wrong_key_in_connection(fake, monkeypatch):
    conn = fake.dashscope_conn + "_wrong"
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{conn.upper()}", json.dumps({"host": fake.url, "password": "sk-wrong-key"})
    )
    with pytest.raises(AuthError, match=conn) as info:
        embedder(fake, conn_id=conn).embed_jpegs([jpeg(0)])
    assert "sk-wrong-key" not in str(info.value)


def test_400_for_one_image_fails_that_file_only(fake):
    jpegs = [jpeg(0), jpeg(1, BAD_IMAGE), jpeg(2), jpeg(3)]
    e = embedder(fake)
    out = e.embed_jpegs(jpegs)
    assert out.errors[0] is None and out.errors[2] is None and out.errors[3] is None
    assert "refused the image: HTTP 400 InvalidParameter" in out.errors[1]
    assert not out.vectors[1].any()
    for i in (0, 2, 3):
        np.testing.assert_allclose(out.vectors[i], expected(jpegs[i]), atol=1e-6)
    # The refused batch was asked again one image per request.
    assert [len(r.contents) for r in fake.requests_to("embedding")] == [4, 1, 1, 1, 1]
    assert e.stats["failures"] == 1 and out.n_failed == 1


def test_none_embedding_is_asked_again_then_that_files_error(fake):
    jpegs = [jpeg(0), jpeg(1, NO_EMBEDDING), jpeg(2)]
    out = embedder(fake).embed_jpegs(jpegs)
    assert out.errors == [None, "DashScope returned no embedding", None]
    sent = fake.requests_to("embedding")
    assert [len(r.contents) for r in sent] == [3, 1]
    assert sent[1].images() == [jpegs[1]]


def test_malformed_reply_is_asked_again(fake):
    fake.script("embedding", malformed())
    e = embedder(fake)
    out = e.embed_jpegs([jpeg(0), jpeg(1)])
    assert out.errors is None and e.stats["malformed"] == 1


def test_malformed_twice_fails_those_files(fake):
    fake.script("embedding", malformed(), malformed())
    out = embedder(fake).embed_jpegs([jpeg(0), jpeg(1)])
    assert all("reply malformed twice" in e for e in out.errors)


def test_inconsistent_dimension_is_a_clear_error(fake):
    fake.dim_override = 768
    with pytest.raises(ProviderError, match="768-dimensional vector .* expected 1152"):
        embedder(fake).embed_jpegs([jpeg(0)])


def test_full_endpoint_in_connection_host(fake, monkeypatch):
    conn = fake.dashscope_conn + "_full"
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{conn.upper()}",
        json.dumps({"host": fake.url + EMBED_PATH, "password": KEY}),
    )
    out = embedder(fake, conn_id=conn).embed_jpegs([jpeg(5)])
    assert out.errors is None and fake.requests[0].path == EMBED_PATH


def test_dashscope_base_url():
    def creds(host):
        return Credentials("c", host=host)

    assert dashscope_base_url(creds(None)) == "https://dashscope.aliyuncs.com/api/v1"
    assert dashscope_base_url(creds("dashscope-intl.aliyuncs.com")) == (
        "https://dashscope-intl.aliyuncs.com/api/v1"
    )
    full = "https://dashscope.aliyuncs.com/api/v1/services/embeddings/multimodal-embedding/x"
    assert dashscope_base_url(creds(full)) == "https://dashscope.aliyuncs.com/api/v1"


def test_registry_spec(fake):
    clear_embedder_cache()
    e = get_embedder(
        {
            "type": "dashscope",
            "model": "multimodal-embedding-v1",
            "conn_id": fake.dashscope_conn,
            "retry_base_delay": 0.001,
        }
    )
    assert isinstance(e, DashScopeEmbedder) and e.dim == 1024 and e.batch_size == 1
    out = e.embed_jpegs([jpeg(0), jpeg(1)])
    assert out.errors is None and len(fake.requests) == 2
    assert decode_data_uri(fake.requests[0].contents[0]["image"]) == jpeg(0)
    clear_embedder_cache()


def test_spec_errors():
    with pytest.raises(ConfigError, match="gives 1152, 1024"):
        DashScopeEmbedder(dimension=300)
    with pytest.raises(ConfigError, match="give its 'dimension'"):
        DashScopeEmbedder(model="some-new-model")
    assert DashScopeEmbedder(model="some-new-model", dimension=256).batch_size == 1
    with pytest.raises(ConfigError, match="concurrency"):
        DashScopeEmbedder(concurrency=0)
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['api_key'\]"):
        get_embedder({"type": "dashscope", "api_key": "x"})


def test_missing_connection_is_a_config_error(fake, monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_NO_SUCH_DASHSCOPE", raising=False)
    e = embedder(fake, conn_id="no_such_dashscope")
    with pytest.raises(ConfigError, match="AIRFLOW_CONN_NO_SUCH_DASHSCOPE"):
        e.embed_jpegs([jpeg(0)])
    assert fake.requests == [] and e.stats["requests"] == 0
