"""A local stand-in for the hosted model services, speaking their documented shapes.

* DashScope multimodal embedding: ``POST /api/v1/services/embeddings/multimodal-embedding/
  multimodal-embedding``, ``Authorization: Bearer <key>``, ``{"model", "input": {"contents":
  [{"image"} | {"text"}]}, "parameters"}`` -> ``{"output": {"embeddings": [{"index",
  "embedding", "type"}]}, "usage", "request_id"}``; errors ``{"code", "message", "request_id"}``.
* DashScope Qwen-VL: ``POST /api/v1/services/aigc/multimodal-generation/generation``,
  ``{"model", "input": {"messages": [...]}, "parameters"}`` -> ``{"output": {"choices":
  [{"finish_reason", "message": {"role": "assistant", "content": [{"text"}]}}]}, ...}``.
* GME on PAI-EAS: ``POST /api/predict/gme``, ``Authorization: <token>``, ``{"input":
  {"contents": [...]}}`` -> HTTP 200 with ``{"status_code": 200 | 204 | 400, "message",
  "output": {"embeddings": [...]}}``.

Every request is recorded (path, headers, JSON body). Per test, :meth:`FakeServices.script`
queues answers for a route (429 with Retry-After, 500, 401, a slow answer, malformed JSON, ...);
images carrying :data:`BAD_IMAGE` are refused (DashScope: 400 for the request; GME: a failed
element, partial success), images carrying :data:`NO_EMBEDDING` get ``"embedding": null``, and
``dim_override`` makes every vector the wrong size.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO

import numpy as np

EMBED_PATH = "/api/v1/services/embeddings/multimodal-embedding/multimodal-embedding"
GENERATION_PATH = "/api/v1/services/aigc/multimodal-generation/generation"
GME_PATH = "/api/predict/gme"
ROUTES = {EMBED_PATH: "embedding", GENERATION_PATH: "generation", GME_PATH: "gme"}

KEY = "sk-test-S3CRET-0123456789abcdef"
EAS_TOKEN = "eas-S3CRET-token-9876543210=="
BAD_IMAGE = b"BAD-IMAGE"
NO_EMBEDDING = b"NO-EMBEDDING"
MODEL_DIMS = {
    "tongyi-embedding-vision-plus": 1152,
    "tongyi-embedding-vision-flash": 768,
    "multimodal-embedding-v1": 1024,
}
GME_DIM = 1536


def fake_vector(data: bytes | str, dim: int) -> list[float]:
    """The deterministic unit vector the fake gives an input (tests compute the same)."""
    raw = data.encode() if isinstance(data, str) else data
    seed = int.from_bytes(hashlib.sha256(raw).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(dim)
    return (v / np.linalg.norm(v)).tolist()


def jpeg(seed: int = 0, marker: bytes = b"") -> bytes:
    """A small real JPEG (a flat colour), with ``marker`` appended after its end."""
    from PIL import Image

    buf = BytesIO()
    Image.new("RGB", (16, 16), ((seed * 37) % 256, (seed * 91) % 256, 120)).save(buf, "JPEG")
    return buf.getvalue() + marker


def decode_data_uri(uri: str) -> bytes:
    head, _, payload = uri.partition(",")
    assert head.startswith("data:image/") and head.endswith(";base64"), head
    return base64.b64decode(payload)


# ------------------------------------------------------------------------------------------------
# scripted answers


@dataclass
class Action:
    """One scripted answer. ``passthrough``: after ``delay``, answer as the service would."""

    status: int = 200
    json_body: object = None
    raw: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    passthrough: bool = False


def throttle(retry_after: str | None = "0", code: str = "Throttling.RateQuota", status=429):
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return Action(
        status,
        {"code": code, "message": "Requests rate limit exceeded, please try again later."},
        headers=headers,
    )


def server_error(status: int = 500) -> Action:
    return Action(status, {"code": "InternalError", "message": "An internal error occurred."})


def unauthorized() -> Action:
    return Action(401, {"code": "InvalidApiKey", "message": "Invalid API-key provided."})


def slow(seconds: float) -> Action:
    return Action(delay=seconds, passthrough=True)


def malformed() -> Action:
    return Action(200, raw=b'{"output": {"embeddings": [{"index": 0, "embedding": [0.1,')


def vl_text(text: str) -> Action:
    """A Qwen-VL answer whose assistant text is ``text``."""
    return Action(200, _generation_body(text))


def _generation_body(text: str) -> dict:
    return {
        "output": {
            "choices": [
                {
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": [{"text": text}]},
                }
            ]
        },
        "usage": {"input_tokens": 100, "output_tokens": 10, "image_tokens": 80},
        "request_id": str(uuid.uuid4()),
    }


# ------------------------------------------------------------------------------------------------
# the server


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: object
    raw: bytes

    @property
    def route(self) -> str:
        return ROUTES.get(self.path, "?")

    @property
    def contents(self) -> list[dict]:
        return self.body["input"]["contents"]

    def images(self) -> list[bytes]:
        """The image bytes sent (embedding contents or the conversation's user message)."""
        if self.route == "generation":
            parts = [
                p
                for m in self.body["input"]["messages"]
                if m["role"] == "user"
                for p in m["content"]
            ]
        else:
            parts = self.contents
        return [decode_data_uri(p["image"]) for p in parts if "image" in p]


class FakeServices:
    def __init__(self):
        self.requests: list[Recorded] = []
        self.dim_override: int | None = None
        self.reverse_order = False
        self.vl_answer: Callable[[bytes, str], str] = lambda image, prompt: '{"tags": []}'
        self._scripts: dict[str, list[Action]] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- control ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def script(self, route: str, *actions: Action) -> None:
        assert route in ROUTES.values(), route
        with self._lock:
            self._scripts.setdefault(route, []).extend(actions)

    def requests_to(self, route: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.route == route]

    def start(self) -> FakeServices:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                fake._handle(self)

            def log_message(self, *args):  # quiet
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False

            def handle_error(self, request, client_address):
                # A client that timed out closed the socket before the slow answer; expected.
                pass

        self._server = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # -- answering ----------------------------------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        path = handler.path.split("?", 1)[0]
        record = Recorded(path, dict(handler.headers.items()), body, raw)
        route = record.route
        with self._lock:
            self.requests.append(record)
            queue = self._scripts.get(route) or []
            action = queue.pop(0) if queue else None
        if action is not None and action.delay:
            time.sleep(action.delay)
        if action is not None and not action.passthrough:
            return self._send(handler, action)
        if route == "?":
            return self._send(handler, Action(404, {"code": "NotFound", "message": "no route"}))
        answer = {"embedding": self._embedding, "generation": self._generation, "gme": self._gme}
        return self._send(handler, answer[route](record))

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, action: Action) -> None:
        payload = action.raw
        if payload is None:
            payload = json.dumps(action.json_body).encode() if action.json_body is not None else b""
        handler.send_response(action.status)
        headers = {"Content-Type": "application/json", **action.headers}
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        with contextlib.suppress(OSError):
            handler.wfile.write(payload)

    def _dashscope_auth(self, record: Recorded) -> Action | None:
        if record.headers.get("Authorization") != f"Bearer {KEY}":
            return unauthorized()
        return None

    def _embedding(self, record: Recorded) -> Action:
        refused = self._dashscope_auth(record)
        if refused:
            return refused
        model = record.body["model"]
        params = record.body.get("parameters") or {}
        dim = self.dim_override or params.get("dimension") or MODEL_DIMS[model]
        elements = []
        for i, content in enumerate(record.contents):
            if "image" in content:
                data = decode_data_uri(content["image"])
                if BAD_IMAGE in data:
                    return Action(
                        400,
                        {
                            "code": "InvalidParameter",
                            "message": "The provided image is invalid or cannot be decoded.",
                            "request_id": str(uuid.uuid4()),
                        },
                    )
                kind = "image"
            else:
                data, kind = content["text"].encode(), "text"
            vector = None if NO_EMBEDDING in data else fake_vector(data, dim)
            elements.append({"index": i, "embedding": vector, "type": kind})
        if self.reverse_order:
            elements.reverse()
        return Action(
            200,
            {
                "output": {"embeddings": elements},
                "usage": {"input_tokens": 10 * len(elements), "image_count": len(elements)},
                "request_id": str(uuid.uuid4()),
            },
        )

    def _generation(self, record: Recorded) -> Action:
        refused = self._dashscope_auth(record)
        if refused:
            return refused
        images = record.images()
        if any(BAD_IMAGE in image for image in images):
            return Action(
                400,
                {
                    "code": "InvalidParameter",
                    "message": "The image format is illegal and cannot be opened.",
                    "request_id": str(uuid.uuid4()),
                },
            )
        user = [m for m in record.body["input"]["messages"] if m["role"] == "user"][0]
        prompt = "".join(p.get("text", "") for p in user["content"])
        return Action(200, _generation_body(self.vl_answer(images[0], prompt)))

    def _gme(self, record: Recorded) -> Action:
        if record.headers.get("Authorization") != EAS_TOKEN:
            # The EAS gateway answers a bad token in plain text.
            return Action(401, raw=b"Authorization failed", headers={"Content-Type": "text/plain"})
        dim = self.dim_override or GME_DIM
        elements, messages = [], []
        for i, content in enumerate(record.contents):
            if "image" in content:
                data, kind = decode_data_uri(content["image"]), "image"
            else:
                data, kind = content["text"].encode(), "text"
            if BAD_IMAGE in data:
                messages.append(f"index {i}: Internal execute error.")
                elements.append({"index": i, "type": kind, "message": "Internal execute error."})
                continue
            vector = None if NO_EMBEDDING in data else fake_vector(data, dim)
            elements.append({"index": i, "embedding": vector, "type": kind})
        if messages and len(messages) == len(elements):
            return Action(200, {"status_code": 400, "message": messages, "output": {}})
        if self.reverse_order:
            elements.reverse()
        status = 204 if messages else 200
        return Action(
            200, {"status_code": status, "message": messages, "output": {"embeddings": elements}}
        )


@contextlib.contextmanager
def running(monkeypatch) -> Iterator[FakeServices]:
    """A started fake; connections ``fake_dashscope_<port>`` and ``fake_gme_<port>`` point at it.

    The connection ids are unique per server, so no cached connection from an earlier test (with
    another port) is ever used. They are on the fake as ``dashscope_conn`` and ``gme_conn``.
    """
    fake = FakeServices().start()
    port = fake.url.rsplit(":", 1)[1]
    fake.dashscope_conn = f"fake_dashscope_{port}"
    fake.gme_conn = f"fake_gme_{port}"
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{fake.dashscope_conn.upper()}",
        json.dumps({"conn_type": "generic", "host": fake.url, "password": KEY}),
    )
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{fake.gme_conn.upper()}",
        json.dumps({"conn_type": "generic", "host": fake.url + GME_PATH, "password": EAS_TOKEN}),
    )
    try:
        yield fake
    finally:
        fake.stop()
