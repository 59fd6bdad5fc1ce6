"""``dag.test()`` end to end with the hosted models (DashScope embedder, Qwen-VL tagger) against
the local fake service: a real throwaway Airflow (SQLite), LanceDB in a tmp folder.

The fake runs in this process; the DAG runs in a child process (``run_dag``) that reaches it
through ``AIRFLOW_CONN_*`` connections in its environment.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml
from hosted_server import (
    KEY,
    ROUTES,
    FakeServices,
    Recorded,
    fake_vector,
    running,
    throttle,
)

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
from airflow_local import airflow_env, migrate, run_dag  # noqa: E402

pytestmark = pytest.mark.slow

N_IMAGES = 15
EMBED_MODEL = "tongyi-embedding-vision-plus"
EMBEDDER_NAME = f"dashscope/{EMBED_MODEL}"
DIM = 1152
VL_MODEL = "qwen-vl-plus"
RETRIES = 1  # IMAGEINDEX_RETRIES for the child: a task runs at most twice
WRONG_KEY = "sk-wrong-S3CRET-fedcba9876543210"
CONF = {"shard_size": 8}  # 15 images: two mapped shards

GUIDE = "You are curating a general photo collection."
DEFINITIONS = {
    "guide_prompt": GUIDE,
    "tags": {
        "Animal": "A photo of an animal such as a cat, dog or bird.",
        "Vehicle": "A vehicle such as a car, motorcycle or rocket.",
        "Texture": "A close-up texture such as bricks, grass or gravel.",
        "Interior": "The inside of a room with furniture.",
        "Door": "A door. If a door is present, you must specify whether it is in the open or "
        "closed state.",
    },
}
UNKNOWN_TAG = "Flying saucer"
PLAIN_TAGS = ["Animal", "Vehicle", "Texture", "Interior"]


def vl_tags(image: bytes) -> tuple[list[str], str | None]:
    """The defined tags (sorted) and the Door state the fake answers for an image."""
    h = hashlib.sha256(image).digest()
    names = {PLAIN_TAGS[h[0] % 4], PLAIN_TAGS[h[1] % 4]}
    state = ("open", "closed")[h[3] % 2] if h[2] % 2 == 0 else None
    if state:
        names.add("Door")
    return sorted(names), state


def vl_answer(image: bytes, prompt: str) -> str:
    names, state = vl_tags(image)
    entries = [{"name": n} for n in names if n != "Door"]
    entries.append({"name": UNKNOWN_TAG})  # not defined: dropped
    if state:
        # Spelled loosely, as models do; the tagger matches it to the definition's state.
        entries.append({"name": "door", "state": state.upper()})
    return json.dumps({"tags": entries})


@dataclass
class Hosted:
    fake: FakeServices
    env: dict[str, str]
    var: Path
    samples: Path
    good_conn: str
    bad_conn: str
    throttle_every: int = 0  # 0: no injected 429s
    throttled: set[int] = field(default_factory=set)  # indexes into fake.requests

    def run(self, dataset: str) -> tuple[str, float, str, list[Recorded]]:
        start = len(self.fake.requests)
        state, seconds, output = run_dag(self.env, dataset, CONF, timeout=300)
        return state, seconds, output, self.fake.requests[start:]


def _inject_throttles(hosted: Hosted) -> None:
    """Answer every ``throttle_every``-th request 429 (Retry-After 0), remembering which.

    Requests are answered one at a time, so the scripted 429 is this very request's answer.
    """
    fake = hosted.fake
    handle = fake._handle
    lock = threading.Lock()
    seen = [0]

    def handle_with_throttles(handler):
        with lock:
            seen[0] += 1
            every = hosted.throttle_every
            inject = bool(every) and seen[0] % every == 0
            if inject:
                fake.script(ROUTES.get(handler.path.split("?", 1)[0], "embedding"), throttle("0"))
            handle(handler)
            if inject:
                hosted.throttled.add(len(fake.requests) - 1)

    fake._handle = handle_with_throttles


def _dataset(ds_id: str, samples: Path, defs: Path, conn_id: str) -> dict:
    return {
        "id": ds_id,
        "versions": {"v1": {"source": str(samples)}},
        "embedder": {
            "type": "dashscope",
            "model": EMBED_MODEL,
            "conn_id": conn_id,
            "retry_base_delay": 0.01,
        },
        "tagger": {
            "type": "qwen_vl",
            "model": VL_MODEL,
            "conn_id": conn_id,
            "definitions": str(defs),
            "retry_base_delay": 0.01,
        },
        "tasks": {"tag_embed": {"pool": "default_pool"}},
    }


@pytest.fixture(scope="module")
def hosted(tmp_path_factory):
    var = tmp_path_factory.mktemp("hosted")
    base_env = airflow_env(var)
    collected = var / "collected"
    out = subprocess.run(
        [sys.executable, "-m", "imageindex.cli", "samples", str(collected)],
        env=base_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    files = sorted(p for p in collected.rglob("*") if p.is_file())
    assert len(files) >= N_IMAGES
    samples = var / "samples"
    samples.mkdir()
    for p in files[: N_IMAGES - 1]:
        shutil.copy2(p, samples / f"{p.parent.name}-{p.name}")
    # One exact copy: equal content must get an equal vector.
    first = files[0]
    shutil.copy2(first, samples / f"copy-{first.parent.name}-{first.name}")
    shutil.rmtree(collected)

    defs = var / "tags.json"
    defs.write_text(json.dumps(DEFINITIONS), encoding="utf-8")

    with pytest.MonkeyPatch.context() as mp, running(mp) as fake:
        fake.vl_answer = vl_answer
        bad_conn = fake.dashscope_conn + "_badkey"
        mp.setenv(
            f"AIRFLOW_CONN_{bad_conn.upper()}",
            json.dumps({"conn_type": "generic", "host": fake.url, "password": WRONG_KEY}),
        )
        registry = {
            "defaults": {"store": {"type": "lancedb", "uri": str(var / "lancedb")}},
            "datasets": [
                _dataset("hosted", samples, defs, fake.dashscope_conn),
                _dataset("hosted_throttled", samples, defs, fake.dashscope_conn),
                _dataset("hosted_badkey", samples, defs, bad_conn),
            ],
        }
        reg = var / "registry.yaml"
        reg.write_text(yaml.safe_dump(registry, sort_keys=False), encoding="utf-8")
        env = airflow_env(
            var,
            IMAGEINDEX_REGISTRY=str(reg),
            IMAGEINDEX_RETRY_DELAY_S="0",
            IMAGEINDEX_RETRIES=str(RETRIES),
        )
        migrate(env)
        h = Hosted(fake, env, var, samples, fake.dashscope_conn, bad_conn)
        _inject_throttles(h)
        yield h


# ------------------------------------------------------------------------------------------------
# helpers


def store_rows(var: Path, dataset: str) -> list[dict]:
    import lancedb

    table = lancedb.connect(str(var / "lancedb")).open_table(f"images_{dataset}")
    return table.to_arrow().to_pylist()


def report_of(var: Path, dataset: str) -> dict:
    reports = list((var / "staging" / "runs" / dataset / "v1").glob("*/report.json"))
    assert len(reports) == 1, reports
    return json.loads(reports[0].read_text())


def thumbnail(row: dict) -> bytes:
    return Path(row["thumbnail_uri"]).read_bytes()


def check_key_hygiene(output: str, var: Path, *keys: str) -> None:
    for key in keys:
        assert key not in output
    needles = [k.encode() for k in keys]
    for path in var.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for needle in needles:
                assert needle not in data, f"an API key is written in {path}"


def check_indexed(h: Hosted, dataset: str) -> list[dict]:
    """One ok document per image, dashscope vectors of the thumbnails, tags from definitions."""
    rows = store_rows(h.var, dataset)
    sources = sorted(str(p) for p in h.samples.iterdir())
    assert len(rows) == N_IMAGES == len(sources)
    assert len({r["id"] for r in rows}) == N_IMAGES
    assert sorted(r["uri"].removeprefix("file://") for r in rows) == sources
    defined = set(DEFINITIONS["tags"])
    for r in rows:
        assert r["status"] == "ok", (r["uri"], r["error"])
        assert (r["model"], r["dim"]) == (EMBEDDER_NAME, DIM)
        image = thumbnail(r)
        np.testing.assert_allclose(r["vector"], fake_vector(image, DIM), atol=1e-6)
        names, state = vl_tags(image)
        assert set(r["tags_ai"]) <= defined and UNKNOWN_TAG not in r["tags_ai"]
        assert sorted(r["tags_ai"]) == names
        detail = {d["name"]: d for d in json.loads(r["tags_detail"])}
        assert set(detail) == set(names)
        assert all(d["source"] == "definition" and d["score"] == 1.0 for d in detail.values())
        assert detail.get("Door", {}).get("state") == state
        assert all("state" not in d for n, d in detail.items() if n != "Door")
    # The copied file: same content, same thumbnail, same vector and tags.
    by_name = {r["file_name"]: r for r in rows}
    copies = [n for n in by_name if n.startswith("copy-")]
    assert len(copies) == 1
    original = by_name[copies[0].removeprefix("copy-")]
    copy = by_name[copies[0]]
    assert thumbnail(original) == thumbnail(copy) and original["id"] != copy["id"]
    assert original["vector"] == copy["vector"] and original["tags_ai"] == copy["tags_ai"]
    # At least one image carries a state, so the state path was exercised.
    assert any("Door" in r["tags_ai"] for r in rows)
    return rows


def check_requests(sent: list[Recorded], key: str = KEY) -> None:
    for r in sent:
        assert r.headers["Authorization"] == f"Bearer {key}"
        if r.route == "embedding":
            assert r.body["model"] == EMBED_MODEL
            assert "dimension" not in (r.body.get("parameters") or {})
            assert all(c["image"].startswith("data:image/jpeg;base64,") for c in r.contents)
        else:
            assert r.route == "generation", r.path
            assert r.body["model"] == VL_MODEL
            system, user = r.body["input"]["messages"]
            assert system["content"] == [{"text": GUIDE}]
            assert user["content"][0]["image"].startswith("data:image/jpeg;base64,")
            assert '"Door": ["open", "closed"]' in user["content"][1]["text"]


# ------------------------------------------------------------------------------------------------
# tests


def test_dag_with_dashscope_embedder_and_qwen_vl_tagger(hosted):
    state, seconds, output, sent = hosted.run("hosted")
    assert state == "success", output[-5000:]
    rows = check_indexed(hosted, "hosted")
    check_requests(sent)
    thumbs = Counter(thumbnail(r) for r in rows)
    embed = [r for r in sent if r.route == "embedding"]
    gen = [r for r in sent if r.route == "generation"]
    # Two shards of 8 and 7: one request of up to 8 images each; one conversation per image.
    assert sorted(len(r.contents) for r in embed) == [7, 8]
    assert Counter(img for r in embed for img in r.images()) == thumbs
    assert Counter(img for r in gen for img in r.images()) == thumbs

    report = report_of(hosted.var, "hosted")
    assert report["listed"] == report["indexed_ok"] == N_IMAGES and report["failed"] == 0
    providers = report["providers"]
    assert providers[f"embedder:{EMBEDDER_NAME}"]["requests"] == 2
    tagger_stats = providers[f"tagger:qwen-vl/{VL_MODEL}+5-definitions"]
    assert tagger_stats["requests"] == N_IMAGES and tagger_stats["unknown_tags"] == N_IMAGES
    check_key_hygiene(output, hosted.var, KEY)


def test_429s_are_retried_and_every_image_indexed_once(hosted):
    hosted.throttle_every = 3
    first = len(hosted.fake.requests)
    try:
        state, seconds, output, sent = hosted.run("hosted_throttled")
    finally:
        hosted.throttle_every = 0
    assert state == "success", output[-5000:]
    rows = check_indexed(hosted, "hosted_throttled")
    check_requests(sent)
    throttled = {i - first for i in hosted.throttled if i >= first}
    assert len(throttled) >= len(sent) // 3 - 1 and throttled
    answered = [r for i, r in enumerate(sent) if i not in throttled]
    thumbs = Counter(thumbnail(r) for r in rows)
    for route in ("embedding", "generation"):
        # Every image was answered exactly once per model...
        ok = [r for r in answered if r.route == route]
        assert Counter(img for r in ok for img in r.images()) == thumbs, route
        # ...and the last request carrying it was that answer (asked again until success).
        last = {}
        for i, r in enumerate(sent):
            if r.route == route:
                for img in r.images():
                    last[img] = i
        assert not set(last.values()) & throttled, route
    report = report_of(hosted.var, "hosted_throttled")
    assert report["indexed_ok"] == report["indexed"] == N_IMAGES and report["failed"] == 0
    counted = sum(s.get("throttles", 0) for s in report["providers"].values())
    assert counted == len(throttled)
    check_key_hygiene(output, hosted.var, KEY)


def test_401_fails_the_task_fast_without_leaking_the_key(hosted):
    state, seconds, output, sent = hosted.run("hosted_badkey")
    assert state == "failed", output[-5000:]
    # At most one request per shard and task try: the client stops at the first 401 and sends
    # nothing more (the batches after it, the tagger). In dag.test() the tries share a process,
    # so the cached refusal usually keeps it to one request in all.
    n_shards = -(-N_IMAGES // CONF["shard_size"])
    assert 1 <= len(sent) <= n_shards * (RETRIES + 1)
    assert all(r.route == "embedding" for r in sent)  # the tagger never got to send
    check_requests(sent, key=WRONG_KEY)
    # dag.test() prints the task logs; a log folder, if any, is read too.
    logs = output + "".join(
        p.read_text(errors="replace") for p in (hosted.var / "airflow").rglob("*.log")
    )
    assert f"check the API key in Airflow connection '{hosted.bad_conn}'" in logs
    assert "InvalidApiKey" in logs
    # Nothing indexed, and neither key is in the output, the logs or any staging file.
    assert not (hosted.var / "lancedb" / "images_hosted_badkey.lance").exists()
    check_key_hygiene(output, hosted.var, WRONG_KEY, KEY)
    assert seconds < 60  # no retry storm, no backoff waits: about Airflow's start-up time
