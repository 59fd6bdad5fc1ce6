"""GME multimodal embedding deployed on PAI-EAS, through the service's HTTP API.

Spec: ``{"type": "gme", "model": "gme-2b", "conn_id": "gme_eas_default", "dimension": null,
"concurrency": 5}``. The connection's host is the EAS endpoint URL (e.g.
``http://<id>.<region>.pai-eas.aliyuncs.com/api/predict/<service>``), its password the EAS token.
``model`` names the deployment in the index (``pai-eas/<model>``): give a fine-tuned deployment
its own name, so its vectors are never mixed with the base model's.

The API (PAI "Manage and use multimodal data", section 4.4): ``POST <endpoint>`` with the token
as the ``Authorization`` header and ``{"input": {"contents": [{"image": "data:image/jpeg;base64,
..."} | {"text": ...}]}}``. The JSON reply carries its own ``status_code``: 200 success, 204
partial success (``message`` lists the failures; a failed element carries a ``message`` key),
400 failure; ``output.embeddings`` is ``[{"index": i, "embedding": [...], "type": ...}]``.
GME-2B gives 1536 dimensions, GME-7B 3584 (section 4.2).
"""

from __future__ import annotations

import json

from imageindex.connections import base_url, get_credentials, redact
from imageindex.errors import ConfigError
from imageindex.hosted.http import (
    HostedEmbedder,
    Reply,
    policy_from_spec,
    positive_int,
    shorten,
)

PROVIDER = "PAI-EAS GME"
DEFAULT_MODEL = "gme-2b"
DEFAULT_CONN_ID = "gme_eas_default"
DEFAULT_BATCH_SIZE = 8
MODEL_DIMS = {"gme-2b": 1536, "gme-7b": 3584}


class GmeEmbedder(HostedEmbedder):
    provider = PROVIDER

    def __init__(
        self,
        *,
        model: str = DEFAULT_MODEL,
        conn_id: str = DEFAULT_CONN_ID,
        dimension: int | None = None,
        concurrency: int = 5,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_retries: int = 5,
        retry_base_delay: float = 1.0,
        timeout: float = 60.0,
    ):
        if not isinstance(model, str) or not model.strip():
            raise ConfigError(f"gme embedder: model must be a name, got {model!r}")
        if dimension is None:
            if model not in MODEL_DIMS:
                raise ConfigError(
                    f"gme embedder: model {model!r} is not one of {sorted(MODEL_DIMS)}; give the "
                    "deployment's 'dimension'"
                )
            dimension = MODEL_DIMS[model]
        dim = positive_int("gme embedder", "dimension", dimension, maximum=65536)
        super().__init__(
            model=model,
            conn_id=conn_id,
            dim=dim,
            batch_size=positive_int("gme embedder", "batch_size", batch_size, maximum=64),
            concurrency=concurrency,
            policy=policy_from_spec("gme embedder", max_retries, retry_base_delay, timeout),
        )
        # The size is part of the name only where the model has another usual one.
        self.name = f"pai-eas/{model}" + ("" if MODEL_DIMS.get(model, dim) == dim else f"-{dim}")
        self._endpoint: str | None = None
        self._token: str | None = None

    def _connection(self) -> tuple[str, str]:
        if self._token is None:
            creds = get_credentials(self.conn_id, service=PROVIDER)
            token = creds.require_key(PROVIDER)
            self._endpoint = base_url(creds)
            self._token = token
        return self._endpoint, self._token

    def _send(self, contents: list[dict], what: str) -> Reply:
        endpoint, token = self._connection()
        response = self.http_session().post(
            endpoint,
            data=json.dumps({"input": {"contents": contents}}),
            headers={"Authorization": token, "Content-Type": "application/json"},
            timeout=self.client.policy.timeout,
        )
        reply = Reply.from_response(response)
        body = reply.json()
        if reply.status == 200 and isinstance(body, dict) and body.get("status_code") == 400:
            # The service answers a failed request with HTTP 200 and status_code 400 inside.
            return Reply(400, reply.headers, reply.content)
        return reply

    def _items(self, reply: Reply, n: int):
        body = reply.json()
        if not isinstance(body, dict):
            return "the body is not a JSON object"
        status = body.get("status_code", 200)
        if status not in (200, 204):
            return f"unexpected status_code {status!r}"
        output = body.get("output")
        embeddings = output.get("embeddings") if isinstance(output, dict) else None
        if embeddings is None and status == 204:
            embeddings = []
        if not isinstance(embeddings, list):
            return "no output.embeddings list"
        general = body.get("message")
        if isinstance(general, list):
            general = "; ".join(str(m) for m in general)
        if status == 204:
            missing = "not embedded (partial success)" + (
                f": {shorten(redact(general))}" if general else ""
            )
        else:
            missing = "no embedding in the reply"
        items: list[tuple[object, str | None]] = [(None, missing)] * n
        for position, element in enumerate(embeddings):
            if not isinstance(element, dict):
                return "an embeddings element is not an object"
            index = element.get("index", position)
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n:
                return f"embedding index {index!r} is outside 0..{n - 1}"
            message = element.get("message")
            vector = None if message else element.get("embedding")
            items[index] = (vector, shorten(redact(message)) if message else None)
        return items
