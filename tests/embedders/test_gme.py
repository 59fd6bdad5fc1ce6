"""GME on PAI-EAS against the local fake service."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from hosted_server import (
    BAD_IMAGE,
    EAS_TOKEN,
    GME_PATH,
    NO_EMBEDDING,
    Action,
    fake_vector,
    jpeg,
    running,
    server_error,
    throttle,
)

from imageindex.embedders import clear_embedder_cache, get_embedder
from imageindex.embedders.gme import GmeEmbedder
from imageindex.errors import AuthError, ConfigError, ProviderError


@pytest.fixture
def fake(monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    with running(monkeypatch) as server:
        yield server
    assert EAS_TOKEN not in caplog.text


def embedder(fake, **kw) -> GmeEmbedder:
    return GmeEmbedder(**{"conn_id": fake.gme_conn, "retry_base_delay": 0.001, **kw})


def expected(data: bytes, dim: int = 1536) -> np.ndarray:
    return np.asarray(fake_vector(data, dim), dtype=np.float32)


def test_request_shape_and_vectors(fake):
    fake.reverse_order = True
    e = embedder(fake, batch_size=4)
    assert (e.name, e.dim) == ("pai-eas/gme-2b", 1536)
    jpegs = [jpeg(i) for i in range(6)]
    out = e.embed_jpegs(jpegs)
    assert out.errors is None
    for i, data in enumerate(jpegs):
        np.testing.assert_allclose(out.vectors[i], expected(data), atol=1e-6)
    sent = fake.requests_to("gme")
    assert sorted(len(r.contents) for r in sent) == [2, 4]
    for r in sent:
        assert r.path == GME_PATH
        # The EAS token goes as it is, without "Bearer".
        assert r.headers["Authorization"] == EAS_TOKEN
        assert list(r.body) == ["input"] and list(r.body["input"]) == ["contents"]
        assert all(c["image"].startswith("data:image/jpeg;base64,") for c in r.contents)


def test_texts(fake):
    vectors = embedder(fake).embed_texts(["silver sedan", "night"])
    np.testing.assert_allclose(vectors[0], expected(b"silver sedan"), atol=1e-6)
    assert fake.requests[0].contents == [{"text": "silver sedan"}, {"text": "night"}]


def test_partial_success_fails_only_the_refused_file(fake):
    jpegs = [jpeg(0), jpeg(1, BAD_IMAGE), jpeg(2)]
    e = embedder(fake)
    out = e.embed_jpegs(jpegs)
    assert out.errors[0] is None and out.errors[2] is None
    assert "Internal execute error" in out.errors[1]
    np.testing.assert_allclose(out.vectors[2], expected(jpegs[2]), atol=1e-6)
    assert not out.vectors[1].any()
    # 204 for the batch, then the failed image once more on its own (status_code 400 there).
    assert [len(r.contents) for r in fake.requests_to("gme")] == [3, 1]
    assert e.stats["failures"] == 1


def test_status_code_400_for_a_batch_is_split(fake):
    fake.script(
        "gme", Action(200, {"status_code": 400, "message": ["Invalid input data"], "output": {}})
    )
    out = embedder(fake).embed_jpegs([jpeg(0), jpeg(1)])
    assert out.errors is None
    assert [len(r.contents) for r in fake.requests_to("gme")] == [2, 1, 1]


def test_none_embedding(fake):
    out = embedder(fake).embed_jpegs([jpeg(0, NO_EMBEDDING), jpeg(1)])
    assert out.errors == ["PAI-EAS GME returned no embedding", None]


def test_throttled_and_unavailable_are_retried(fake):
    fake.script("gme", throttle("0"), server_error(503))
    e = embedder(fake)
    out = e.embed_jpegs([jpeg(0)])
    assert out.errors is None
    assert e.stats["throttles"] == 1 and e.stats["retries"] == 2 and e.stats["requests"] == 3


def test_bad_token_is_an_auth_error_after_one_request(fake, monkeypatch):
    conn = fake.gme_conn + "_bad"
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{conn.upper()}",
        json.dumps({"host": fake.url + GME_PATH, "password": "wrong-eas-token"}),
    )
    with pytest.raises(AuthError, match=f"Airflow connection '{conn}'") as info:
        embedder(fake, conn_id=conn, concurrency=4).embed_jpegs([jpeg(i) for i in range(30)])
    assert "HTTP 401: Authorization failed" in str(info.value)
    assert "wrong-eas-token" not in str(info.value)
    assert len(fake.requests) == 1


def test_wrong_dimension(fake):
    fake.dim_override = 3584
    with pytest.raises(ProviderError, match="3584-dimensional vector from 'gme-2b', expected 1536"):
        embedder(fake).embed_jpegs([jpeg(0)])


def test_registry_and_dims(fake):
    clear_embedder_cache()
    e = get_embedder({"type": "gme", "model": "gme-7b", "conn_id": fake.gme_conn})
    assert isinstance(e, GmeEmbedder) and e.dim == 3584 and e.name == "pai-eas/gme-7b"
    clear_embedder_cache()
    with pytest.raises(ConfigError, match="give the deployment's 'dimension'"):
        GmeEmbedder(model="my-finetune")
    assert GmeEmbedder(model="my-finetune", dimension=1536).name == "pai-eas/my-finetune"
