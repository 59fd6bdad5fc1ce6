"""DashScope (Alibaba Cloud Model Studio) multimodal embedding, through the ``dashscope`` SDK.

Spec: ``{"type": "dashscope", "model": "tongyi-embedding-vision-plus", "conn_id":
"dashscope_default", "dimension": null, "concurrency": 5}``. The connection's password is the API
key; its host is the API base (default ``https://dashscope.aliyuncs.com/api/v1``; international
``https://dashscope-intl.aliyuncs.com/api/v1``). A full endpoint URL as the managed service's
connections hold it (``.../api/v1/services/embeddings/multimodal-embedding/multimodal-embedding``)
is accepted too.

The SDK (``MultiModalEmbedding.call``) sends ``POST {base}/services/embeddings/
multimodal-embedding/multimodal-embedding`` with ``Authorization: Bearer <key>`` and
``{"model": ..., "input": {"contents": [{"image": "data:image/jpeg;base64,..."}, ...]},
"parameters": {"dimension": ...}}``; the reply is ``{"output": {"embeddings": [{"index": i,
"embedding": [...], "type": "image"}]}, "usage": {...}, "request_id": ...}``. The base URL is
given per call (the SDK's ``base_address``), not through the process-wide
``dashscope.base_http_api_url``, so two connections can be used side by side.

Models (Model Studio's multimodal embedding reference): ``tongyi-embedding-vision-plus`` 1152
dimensions by default (also 1024, 512, 256, 128, 64), ``tongyi-embedding-vision-flash`` 768 (also
512, 256, 128, 64), ``multimodal-embedding-v1`` 1024. The tongyi models take up to 8 images per
request; ``multimodal-embedding-v1`` is sent one input per request.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from imageindex.connections import Credentials, base_url, get_credentials, redact
from imageindex.errors import ConfigError
from imageindex.hosted.http import (
    HostedEmbedder,
    Reply,
    policy_from_spec,
    positive_int,
    sdk_reply,
    shorten,
)

log = logging.getLogger(__name__)

PROVIDER = "DashScope"
DEFAULT_MODEL = "tongyi-embedding-vision-plus"
DEFAULT_CONN_ID = "dashscope_default"
DEFAULT_BASE_URL = "https://dashscope.aliyuncs.com/api/v1"
EMBEDDING_PATH = "services/embeddings/multimodal-embedding/multimodal-embedding"


@dataclass(frozen=True)
class ModelInfo:
    dim: int
    dims: tuple[int, ...]
    max_batch: int


MODELS: dict[str, ModelInfo] = {
    "tongyi-embedding-vision-plus": ModelInfo(1152, (1152, 1024, 512, 256, 128, 64), 8),
    "tongyi-embedding-vision-flash": ModelInfo(768, (768, 512, 256, 128, 64), 8),
    "multimodal-embedding-v1": ModelInfo(1024, (1024,), 1),
}


def import_sdk():
    try:
        import dashscope
    except ImportError as exc:
        raise ConfigError(
            "DashScope models need the dashscope SDK: pip install 'dashscope>=1.24'"
        ) from exc
    _quiet_sdk_logger()
    return dashscope


class _DropSdkRequestFailed(logging.Filter):
    # The SDK logs "Request failed" with a traceback for every timeout or unreadable reply before
    # raising it; the retry policy logs one line per retry instead, so an ERROR traceback for a
    # retried blip would only read like a task failure.
    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != "Request failed"


_sdk_filter = _DropSdkRequestFailed()


def _quiet_sdk_logger() -> None:
    logger = logging.getLogger("dashscope")
    if _sdk_filter not in logger.filters:
        logger.addFilter(_sdk_filter)


def dashscope_base_url(creds: Credentials) -> str:
    """The SDK's base address (``https://host/api/v1``) from a connection."""
    url = base_url(creds, default=DEFAULT_BASE_URL).rstrip("/")
    parts = urlsplit(url)
    path = parts.path
    if "/services/" in path:
        # The managed service's connections hold the full endpoint; the SDK appends it itself.
        path = path[: path.index("/services/")]
    if path in ("", "/"):
        path = "/api/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


class DashScopeEmbedder(HostedEmbedder):
    provider = PROVIDER

    def __init__(
        self,
        *,
        model: str = DEFAULT_MODEL,
        conn_id: str = DEFAULT_CONN_ID,
        dimension: int | None = None,
        concurrency: int = 5,
        batch_size: int | None = None,
        max_retries: int = 5,
        retry_base_delay: float = 1.0,
        timeout: float = 60.0,
    ):
        if not isinstance(model, str) or not model.strip():
            raise ConfigError(f"dashscope embedder: model must be a model name, got {model!r}")
        info = MODELS.get(model)
        if dimension is not None:
            dimension = positive_int("dashscope embedder", "dimension", dimension, maximum=65536)
            if info is not None and dimension not in info.dims:
                raise ConfigError(
                    f"dashscope embedder: {model} gives {', '.join(map(str, info.dims))} "
                    f"dimensions, not {dimension}; fix 'dimension'"
                )
        elif info is None:
            raise ConfigError(
                f"dashscope embedder: model {model!r} is not one of {sorted(MODELS)}; give its "
                "'dimension' to use it anyway"
            )
        dim = dimension or info.dim
        max_batch = info.max_batch if info is not None else 1
        if batch_size is None:
            batch_size = max_batch
        batch_size = positive_int("dashscope embedder", "batch_size", batch_size, maximum=64)
        super().__init__(
            model=model,
            conn_id=conn_id,
            dim=dim,
            batch_size=batch_size,
            concurrency=concurrency,
            policy=policy_from_spec("dashscope embedder", max_retries, retry_base_delay, timeout),
        )
        # Only a size the user chose is sent: older models reject the parameter.
        self._send_dimension = dimension is not None
        # A chosen size changes every vector, so it is part of the name the index records.
        default_dim = info.dim if info is not None else dim
        self.name = f"dashscope/{model}" + ("" if dim == default_dim else f"-{dim}")
        self._creds: Credentials | None = None
        self._base: str | None = None

    def _connection(self) -> tuple[str, str]:
        if self._creds is None:
            creds = get_credentials(self.conn_id, service=PROVIDER)
            key = creds.require_key(PROVIDER)
            self._base = dashscope_base_url(creds)
            self._creds = creds
            return self._base, key
        return self._base, self._creds.require_key(PROVIDER)

    def _send(self, contents: list[dict], what: str) -> Reply:
        dashscope = import_sdk()
        base, key = self._connection()
        extra = {"dimension": self.dim} if self._send_dimension else {}

        def call(session):
            return dashscope.MultiModalEmbedding.call(
                model=self.model,
                # The SDK rewrites the elements it is given (uploads); give it fresh ones.
                input=[dict(c) for c in contents],
                api_key=key,
                base_address=base,
                session=session,
                request_timeout=self.client.policy.timeout,
                **extra,
            )

        return sdk_reply(call, self.http_session())

    def _items(self, reply: Reply, n: int):
        body = reply.json()
        if not isinstance(body, dict):
            return "the body is not a JSON object"
        output = body.get("output")
        embeddings = output.get("embeddings") if isinstance(output, dict) else None
        if not isinstance(embeddings, list):
            return "no output.embeddings list"
        items: list[tuple[object, str | None]] = [(None, None)] * n
        for position, element in enumerate(embeddings):
            if not isinstance(element, dict):
                return "an embeddings element is not an object"
            index = element.get("index", position)
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n:
                return f"embedding index {index!r} is outside 0..{n - 1}"
            message = element.get("message")
            items[index] = (element.get("embedding"), shorten(redact(message)) if message else None)
        return items
