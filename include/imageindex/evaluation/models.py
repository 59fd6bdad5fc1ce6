"""Which model ranks the images: the ``filename`` baseline or an embedder spec, and the query text.

Models: ``offline`` (the default ConSE embedder), any embedder spec ``get_embedder`` accepts
(``dashscope``, ``gme``, ``dashscope:multimodal-embedding-v1``, ``gme:gme-7b`` or a JSON object),
and ``filename``, a text baseline that never looks at pixels (see
:func:`imageindex.evaluation.baseline.filename_scores`).

The reference sends each tag as the text itself (its ``prefix`` is ``''``). Here the query text
is ``prompt.format(tag=tag)`` with :data:`DEFAULT_PROMPT` ``"a photo of a {tag}"``, the frame the
offline model's class labels are embedded with; pass ``prompt="{tag}"`` for the bare tag.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from imageindex.errors import ConfigError

DEFAULT_PROMPT = "a photo of a {tag}"
DEFAULT_MODELS: tuple[str, ...] = ("offline", "filename")
BASELINE = "filename"


@dataclass(frozen=True)
class ModelChoice:
    """A model named on the command line: the ``filename`` baseline or an embedder spec."""

    label: str
    spec: dict | None  # None: the filename baseline

    @property
    def is_baseline(self) -> bool:
        return self.spec is None


def resolve_model(name: str) -> ModelChoice:
    """``offline`` | ``filename`` | ``dashscope`` | ``gme`` | ``TYPE:MODEL`` | JSON spec object.

    Only resolves the spec (checked by the embedder registry); nothing is loaded or contacted.
    """
    from imageindex.embedders import EMBEDDER_TYPES, _normalize

    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"model name must be a non-empty string, got {name!r}")
    name = name.strip()
    if name == BASELINE:
        return ModelChoice(BASELINE, None)
    if name.startswith("{"):
        try:
            spec = json.loads(name)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"model {name!r}: invalid JSON spec ({exc.msg})") from None
    elif ":" in name:
        kind, _, model = name.partition(":")
        if "model" not in EMBEDDER_TYPES.get(kind, {}):
            with_model = [k for k, v in EMBEDDER_TYPES.items() if "model" in v]
            raise ConfigError(
                f"model {name!r}: TYPE:MODEL works for types {with_model}; "
                f"valid names: {BASELINE}, {', '.join(EMBEDDER_TYPES)}, TYPE:MODEL or a JSON spec"
            )
        spec = {"type": kind, "model": model}
    elif name in EMBEDDER_TYPES:
        spec = {"type": name}
    else:
        raise ConfigError(
            f"model {name!r} is unknown; valid names: {BASELINE}, {', '.join(EMBEDDER_TYPES)}, "
            "TYPE:MODEL (e.g. dashscope:multimodal-embedding-v1) or a JSON embedder spec"
        )
    _normalize(spec)  # unknown types and keys fail here, with the registry's message
    return ModelChoice(name, spec)


def check_prompt(prompt: str) -> str:
    if not isinstance(prompt, str) or "{tag}" not in prompt:
        raise ConfigError(f"prompt {prompt!r} must contain {{tag}}, e.g. {DEFAULT_PROMPT!r}")
    try:
        prompt.format(tag="x")
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(f"prompt {prompt!r}: only {{tag}} may be substituted ({exc})") from None
    return prompt
