"""Qwen-VL smart tagging against the local fake DashScope."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from hosted_server import (
    BAD_IMAGE,
    GENERATION_PATH,
    KEY,
    jpeg,
    running,
    unauthorized,
    vl_text,
)

from imageindex.embedders.base import ImageEmbeddings
from imageindex.errors import AuthError, ConfigError
from imageindex.taggers import get_tagger, parse_tag_definitions
from imageindex.taggers.qwen_vl import QwenVLTagger
from imageindex.types import Tag

GUIDE = "You are a seasoned driver with extensive experience on both highways and urban roads."
DEFINITIONS = {
    "guide_prompt": GUIDE,
    "tags": {
        "Parking locks": "They can be raised to prevent a parking space from being occupied. If "
        "a parking lock is present, you must specify whether it is in the raised or lowered state.",
        "Speed bumps": "Narrow raised strips across the road.",
        "Cloudy": "Can only be identified if the sky is visible and there are clear clouds.",
    },
}


@pytest.fixture
def fake(monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    with running(monkeypatch) as server:
        yield server
    assert KEY not in caplog.text


@pytest.fixture
def definitions():
    return parse_tag_definitions(DEFINITIONS)


def tagger(fake, definitions, **kw) -> QwenVLTagger:
    options = {"conn_id": fake.dashscope_conn, "retry_base_delay": 0.001, **kw}
    return QwenVLTagger(definitions, **options)


def no_embeddings(n: int) -> ImageEmbeddings:
    return ImageEmbeddings(np.zeros((n, 4), np.float32))


def test_request_shape(fake, definitions):
    t = tagger(fake, definitions, model="qwen-vl-plus")
    assert t.wants_jpeg and t.definitions_hash == definitions.hash
    assert t.name == "qwen-vl/qwen-vl-plus+3-definitions"
    image = jpeg(3)
    assert t.tag_jpegs([image], no_embeddings(1)) == [[]]
    (sent,) = fake.requests
    assert sent.path == GENERATION_PATH
    assert sent.headers["Authorization"] == f"Bearer {KEY}"
    assert sent.body["model"] == "qwen-vl-plus"
    assert sent.body["parameters"]["result_format"] == "message"
    system, user = sent.body["input"]["messages"]
    assert system == {"role": "system", "content": [{"text": GUIDE}]}
    assert user["role"] == "user" and sent.images() == [image]
    prompt = user["content"][1]["text"]
    assert json.dumps(definitions.tags, ensure_ascii=False, indent=1) in prompt
    assert '"Parking locks": ["raised", "lowered"]' in prompt
    assert '{"tags": [{"name":' in prompt


def test_tags_states_and_unknown_names(fake, definitions):
    answers = {
        0: '{"tags": [{"name": "parking  LOCKS", "state": "Raised"}, {"name": "Cloudy"},'
        ' {"name": "Flying saucer"}, {"name": "Speed bumps", "state": "open"}]}',
        1: '```json\n{"tags": [{"name": "Parking locks", "state": "sideways"}]}\n```',
        2: 'Sure! Here you go: {"tags": []} Hope that helps.',
    }
    fake.vl_answer = lambda image, prompt: answers[image[-1]]
    t = tagger(fake, definitions, concurrency=3)
    images = [jpeg(i) + bytes([i]) for i in range(3)]
    tags = t.tag_jpegs(images, no_embeddings(3))
    assert t.last_errors is None
    assert tags[0] == [
        Tag("Parking locks", 1.0, "definition", "raised"),
        Tag("Cloudy", 1.0, "definition", None),
        Tag("Speed bumps", 1.0, "definition", None),  # a state for a tag without states: dropped
    ]
    assert tags[1] == [Tag("Parking locks", 1.0, "definition", None)]  # not one of its states
    assert tags[2] == []
    stats = t.stats
    assert stats["unknown_tags"] == 1 and stats["invalid_states"] == 1
    assert stats["images"] == 3 and stats["requests"] == 3


def test_malformed_answer_is_asked_again(fake, definitions):
    fake.script("generation", vl_text("I see a parking lock."))
    fake.vl_answer = lambda image, prompt: '{"tags": [{"name": "Cloudy", "state": null}]}'
    t = tagger(fake, definitions)
    assert t.tag_jpegs([jpeg(0)], no_embeddings(1)) == [[Tag("Cloudy", 1.0, "definition")]]
    assert t.last_errors is None and t.stats["malformed"] == 1 and len(fake.requests) == 2


def test_malformed_twice_is_that_files_error(fake, definitions):
    fake.script("generation", vl_text("no json"), vl_text('{"labels": 1}'))
    fake.vl_answer = lambda image, prompt: '{"tags": ["Cloudy"]}'
    t = tagger(fake, definitions, concurrency=1)
    tags = t.tag_jpegs([jpeg(0), jpeg(1)], no_embeddings(2))
    assert tags == [[], [Tag("Cloudy", 1.0, "definition")]]
    assert t.last_errors[1] is None
    assert "did not answer with the requested JSON (twice)" in t.last_errors[0]
    assert t.stats["failures"] == 1


def test_400_for_one_image(fake, definitions):
    fake.vl_answer = lambda image, prompt: '{"tags": [{"name": "Cloudy"}]}'
    t = tagger(fake, definitions)
    tags = t.tag_jpegs([jpeg(0), jpeg(1, BAD_IMAGE), jpeg(2)], no_embeddings(3))
    assert tags[0] == tags[2] == [Tag("Cloudy", 1.0, "definition")] and tags[1] == []
    assert t.last_errors[0] is None and t.last_errors[2] is None
    assert "refused the image: HTTP 400 InvalidParameter" in t.last_errors[1]


def test_401_after_one_request(fake, definitions):
    fake.script("generation", unauthorized())
    t = tagger(fake, definitions, concurrency=5)
    with pytest.raises(AuthError, match=f"connection '{fake.dashscope_conn}'") as info:
        t.tag_jpegs([jpeg(i) for i in range(10)], no_embeddings(10))
    assert KEY not in str(info.value) and len(fake.requests) == 1


def test_images_the_embedder_failed_are_not_sent(fake, definitions):
    t = tagger(fake, definitions)
    emb = ImageEmbeddings(np.zeros((3, 4), np.float32), errors=[None, "refused", None])
    assert t.tag_jpegs([jpeg(0), jpeg(1), jpeg(2)], emb) == [[], [], []]
    assert sorted(r.images()[0] for r in fake.requests) == sorted([jpeg(0), jpeg(2)])
    assert t.last_errors is None


def test_registry_spec(fake, tmp_path):
    path = tmp_path / "tags.json"
    path.write_text(json.dumps(DEFINITIONS), encoding="utf-8")
    t = get_tagger(
        {
            "type": "qwen_vl",
            "model": "qwen-vl-max",
            "conn_id": fake.dashscope_conn,
            "definitions": "tags.json",
        },
        embedder=None,
        base_dir=tmp_path,
    )
    assert (
        isinstance(t, QwenVLTagger)
        and t.definitions_hash == parse_tag_definitions(DEFINITIONS).hash
    )
    with pytest.raises(ConfigError, match="needs 'definitions'"):
        get_tagger({"type": "qwen_vl"}, embedder=None)
    with pytest.raises(ConfigError, match="call tag_jpegs"):
        t.tag(no_embeddings(1))
