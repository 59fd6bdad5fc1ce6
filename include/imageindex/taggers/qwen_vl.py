"""Qwen-VL smart tagging through DashScope's MultiModalConversation.

Spec: ``{"type": "qwen_vl", "model": "qwen-vl-max", "conn_id": "dashscope_default",
"definitions": "tags/driving.json", "concurrency": 5}`` (``qwen-vl-plus`` is the cheaper model).
The connection is the same kind as the DashScope embedder's (API key as password, API base as
host).

Each image is one request. The SDK sends ``POST {base}/services/aigc/multimodal-generation/
generation`` with ``Authorization: Bearer <key>`` and ``{"model": ..., "input": {"messages":
[{"role": "system", "content": [{"text": <guide prompt>}]}, {"role": "user", "content":
[{"image": "data:image/jpeg;base64,..."}, {"text": <instructions>}]}]}, "parameters":
{"result_format": "message"}}``; the answer is in ``output.choices[0].message.content``, a list of
``{"text": ...}`` parts. The instructions carry the tag definitions as JSON (and each tag's
states) and ask for exactly ``{"tags": [{"name": ..., "state": ...}]}``.

Reading the answer: code fences and text around the object are tolerated; names are matched to
the definitions ignoring case and spacing; names that are not defined are dropped and counted
(``stats["unknown_tags"]``); a state is kept (``Tag.state``) only when it is one of the tag's
states. An answer that is not that JSON is asked for once more, then recorded as the image's
error (:attr:`last_errors`). Every tag scores 1.0: the model says present or not.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Sequence

from imageindex.connections import get_credentials, redact
from imageindex.embedders.base import ImageEmbeddings
from imageindex.embedders.dashscope import DEFAULT_CONN_ID, dashscope_base_url, import_sdk
from imageindex.errors import ConfigError
from imageindex.hosted.http import (
    REJECTED_STATUSES,
    ProviderClient,
    Reply,
    data_uri,
    policy_from_spec,
    positive_int,
    sdk_reply,
    shorten,
)
from imageindex.taggers.base import Tagger
from imageindex.taggers.definitions import TagDefinitions
from imageindex.types import Tag

log = logging.getLogger(__name__)

PROVIDER = "DashScope Qwen-VL"
DEFAULT_MODEL = "qwen-vl-max"
KNOWN_MODELS = ("qwen-vl-max", "qwen-vl-plus")
DEFAULT_SYSTEM = "You are a careful image annotator."
TAG_SOURCE = "definition"
_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")


def build_prompt(definitions: TagDefinitions) -> tuple[str, str]:
    """``(system text, user instructions)`` for a set of definitions."""
    system = definitions.guide_prompt.strip() or DEFAULT_SYSTEM
    parts = [
        "Look at the image and decide which of the tags defined below it shows.",
        "",
        "Tag definitions (JSON object of tag name -> description):",
        json.dumps(definitions.tags, ensure_ascii=False, indent=1),
    ]
    states = {name: s for name, s in definitions.states.items() if s}
    if states:
        parts += [
            "",
            'Tags with states (when such a tag applies, its "state" must be one of these):',
            json.dumps(states, ensure_ascii=False),
        ]
    parts += [
        "",
        "Answer with one JSON object and nothing else, in exactly this form:",
        '{"tags": [{"name": "<a tag name from the definitions>", '
        '"state": "<one of the tag\'s states, or null>"}]}',
        "Use only the tag names defined above, spelled as given. List a tag only when the image "
        'clearly shows it. Give "state" only for tags that have states. If no tag applies, '
        'answer {"tags": []}.',
    ]
    return system, "\n".join(parts)


def reply_text(reply: Reply) -> tuple[str | None, str]:
    """The assistant's text from a generation reply, or ``(None, problem)``."""
    body = reply.json()
    if not isinstance(body, dict):
        return None, "the body is not a JSON object"
    output = body.get("output")
    if not isinstance(output, dict):
        return None, "no output object"
    choices = output.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        message = choices[0].get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            return content, ""
        if isinstance(content, list):
            texts = [p["text"] for p in content if isinstance(p, dict) and "text" in p]
            if texts and all(isinstance(t, str) for t in texts):
                return "".join(texts), ""
        return None, "the first choice has no text content"
    if isinstance(output.get("text"), str):  # result_format "text"
        return output["text"], ""
    return None, "no output.choices"


def _json_object(text: str) -> object:
    text = _FENCE.sub("", text.strip())
    try:
        return json.loads(text)
    except ValueError:
        pass
    start, end = text.find("{"), text.rfind("}")
    if start == -1 or end <= start:
        raise ValueError("no JSON object in the answer")
    return json.loads(text[start : end + 1])


class QwenVLTagger(Tagger):
    wants_jpeg = True

    def __init__(
        self,
        definitions: TagDefinitions,
        *,
        model: str = DEFAULT_MODEL,
        conn_id: str = DEFAULT_CONN_ID,
        concurrency: int = 5,
        max_retries: int = 5,
        retry_base_delay: float = 1.0,
        timeout: float = 120.0,
    ):
        if not isinstance(definitions, TagDefinitions):
            raise ConfigError(
                "qwen_vl tagger needs tag definitions: set 'definitions' to a definitions file"
            )
        if not isinstance(model, str) or not model.strip():
            raise ConfigError(f"qwen_vl tagger: model must be a model name, got {model!r}")
        if model not in KNOWN_MODELS:
            log.info("qwen_vl tagger: %r is not one of %s; using it as given", model, KNOWN_MODELS)
        self.model = model
        self.conn_id = conn_id
        self.definitions = definitions
        self.definitions_hash = definitions.hash
        self.name = f"qwen-vl/{model}+{len(definitions)}-definitions"
        self.client = ProviderClient(
            PROVIDER,
            conn_id,
            policy=policy_from_spec("qwen_vl tagger", max_retries, retry_base_delay, timeout),
            concurrency=positive_int("qwen_vl tagger", "concurrency", concurrency, maximum=256),
        )
        self.system_text, self.instructions = build_prompt(definitions)
        self._names = {" ".join(n.split()).casefold(): n for n in definitions.tags}
        self._local = threading.local()
        self._session = None
        self._lock = threading.Lock()
        self._base: str | None = None
        self._key: str | None = None

    def __repr__(self) -> str:
        return f"QwenVLTagger(name={self.name!r}, conn_id={self.conn_id!r})"

    @property
    def stats(self) -> dict[str, int]:
        return self.client.stats

    @property
    def last_errors(self) -> list[str | None] | None:
        return getattr(self._local, "errors", None)

    def tag(self, embeddings: ImageEmbeddings) -> list[list[Tag]]:
        raise ConfigError(
            "the qwen_vl tagger looks at the images themselves: call tag_jpegs(jpegs, embeddings)"
        )

    def tag_jpegs(self, jpegs: Sequence[bytes], embeddings: ImageEmbeddings) -> list[list[Tag]]:
        jpegs = list(jpegs)
        self._local.errors = None
        skip = list(embeddings.errors or []) if embeddings is not None else []
        # An image the embedder already failed is failed anyway; tagging it would only cost.
        todo = [i for i in range(len(jpegs)) if not (i < len(skip) and skip[i])]
        if todo:
            self._connection()
        self.client.count(images=len(todo))
        results = self.client.map(lambda i: self._tag_one(jpegs[i]), todo)
        tags: list[list[Tag]] = [[] for _ in jpegs]
        errors: list[str | None] = [None] * len(jpegs)
        for i, (image_tags, error) in zip(todo, results, strict=True):
            tags[i] = image_tags
            errors[i] = error
        failed = sum(1 for e in errors if e)
        if failed:
            self.client.count(failures=failed)
            log.warning("%s: %d of %d image(s) not tagged", self.name, failed, len(todo))
            self._local.errors = errors
        return tags

    # -- one image ------------------------------------------------------------------------------

    def _tag_one(self, jpeg: bytes) -> tuple[list[Tag], str | None]:
        messages = [
            {"role": "system", "content": [{"text": self.system_text}]},
            {
                "role": "user",
                "content": [{"image": data_uri(bytes(jpeg))}, {"text": self.instructions}],
            },
        ]
        what = f"tagging 1 image with {self.model}"
        problem = ""
        for _ in range(2):
            reply = self.client.send(lambda: self._send(messages), what=what)
            if reply.status in REJECTED_STATUSES:
                return [], f"{PROVIDER} refused the image: {reply.describe()}"
            text, problem = reply_text(reply)
            if text is not None:
                tags, problem = self._parse(text)
                if tags is not None:
                    return tags, None
            self.client.count(malformed=1)
            log.info("%s: answer not usable (%s)", self.name, problem)
        return [], f"{self.model} did not answer with the requested JSON (twice): {problem}"

    def _connection(self) -> tuple[str, str]:
        if self._key is None:
            creds = get_credentials(self.conn_id, service=PROVIDER)
            key = creds.require_key(PROVIDER)
            self._base = dashscope_base_url(creds)
            self._key = key
        return self._base, self._key

    def _http_session(self):
        if self._session is None:
            with self._lock:
                if self._session is None:
                    import requests

                    self._session = requests.Session()
        return self._session

    def _send(self, messages: list[dict]) -> Reply:
        dashscope = import_sdk()
        base, key = self._connection()

        def call(session):
            return dashscope.MultiModalConversation.call(
                model=self.model,
                messages=messages,
                api_key=key,
                base_address=base,
                session=session,
                request_timeout=self.client.policy.timeout,
                result_format="message",
            )

        return sdk_reply(call, self._http_session())

    def _parse(self, text: str) -> tuple[list[Tag] | None, str]:
        try:
            obj = _json_object(text)
        except ValueError as exc:
            return None, f"{exc}; answer began {shorten(redact(text), 80)!r}"
        entries = obj.get("tags") if isinstance(obj, dict) else obj
        if not isinstance(entries, list):
            return None, 'the answer has no "tags" list'
        tags: list[Tag] = []
        seen: set[str] = set()
        unknown = 0
        for entry in entries:
            if isinstance(entry, str):
                raw_name, raw_state = entry, None
            elif isinstance(entry, dict) and isinstance(entry.get("name"), str):
                raw_name, raw_state = entry["name"], entry.get("state")
            else:
                return None, f"a tags entry is not {{name, state}}: {shorten(str(entry), 80)!r}"
            name = self._names.get(" ".join(raw_name.split()).casefold())
            if name is None:
                unknown += 1
                continue
            if name in seen:
                continue
            seen.add(name)
            tags.append(
                Tag(name=name, score=1.0, source=TAG_SOURCE, state=self._state(name, raw_state))
            )
        if unknown:
            self.client.count(unknown_tags=unknown)
            log.debug("%s: dropped %d tag name(s) not in the definitions", self.name, unknown)
        return tags, ""

    def _state(self, name: str, raw: object) -> str | None:
        allowed = self.definitions.states.get(name) or []
        if not allowed or not isinstance(raw, str):
            return None
        state = " ".join(raw.split()).casefold()
        for candidate in allowed:
            if candidate.casefold() == state:
                return candidate
        self.client.count(invalid_states=1)
        return None
