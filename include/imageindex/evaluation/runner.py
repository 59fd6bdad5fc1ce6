"""One model on one evaluation set: rank every image for every tag, score the rankings."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from imageindex.evaluation.baseline import filename_ranking
from imageindex.evaluation.dataset import EvalSet
from imageindex.evaluation.embedding import embedding_rankings
from imageindex.evaluation.metrics import (
    DEFAULT_KS,
    TagPrecision,
    check_ks,
    mean_precisions,
    tag_precisions,
)
from imageindex.evaluation.models import DEFAULT_PROMPT, ModelChoice, check_prompt, resolve_model

BASELINE_EMBEDDER = "filename-baseline"


@dataclass
class ModelResult:
    """One model on one evaluation set."""

    label: str
    spec: dict | None
    embedder: str  # the embedder's recorded name (or "filename-baseline")
    dim: int | None
    ks: tuple[int, ...]
    prompt: str | None
    rankings: dict[str, list[str]]  # tag -> ranked ids (all that were ranked)
    per_tag: dict[str, list[TagPrecision]]
    relevant: dict[str, list[str]]
    images: int
    failed: dict[str, str]  # image id -> why it was not embedded
    seconds: dict[str, float]

    def summary(self) -> dict:
        means, counted = mean_precisions(self.per_tag.values(), self.ks)
        return {
            "model": self.label,
            "spec": self.spec,
            "embedder": self.embedder,
            "dim": self.dim,
            "prompt": self.prompt,
            "images": self.images,
            "failed_images": len(self.failed),
            "tags": len(self.per_tag),
            "ks": list(self.ks),
            "precision": {str(k): means[k] for k in self.ks},
            "tags_counted": {str(k): counted[k] for k in self.ks},
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }


def evaluate_model(
    eval_set: EvalSet,
    model: str | ModelChoice,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    prompt: str = DEFAULT_PROMPT,
    embedder=None,
) -> ModelResult:
    """Rank every image for every tag with ``model`` and score the rankings.

    ``embedder`` overrides the one ``get_embedder(spec)`` would give (tests, notebooks).
    """
    ks = check_ks(ks)
    choice = model if isinstance(model, ModelChoice) else resolve_model(model)
    check_prompt(prompt)
    tags = eval_set.tags
    failed: dict[str, str] = {}
    t0 = time.perf_counter()
    if choice.is_baseline and embedder is None:
        rankings = {tag: filename_ranking(tag, eval_set.images) for tag in tags}
        seconds = {"rank": time.perf_counter() - t0}
        name, dim, used_prompt = BASELINE_EMBEDDER, None, None
    else:
        if embedder is None:
            from imageindex.embedders import get_embedder

            embedder = get_embedder(choice.spec)
        rankings, failed, seconds = embedding_rankings(embedder, eval_set, prompt, started=t0)
        name, dim, used_prompt = str(embedder.name), int(embedder.dim), prompt
    per_tag = {tag: tag_precisions(rankings[tag], eval_set.relevant[tag], ks) for tag in tags}
    seconds["total"] = time.perf_counter() - t0
    return ModelResult(
        label=choice.label,
        spec=choice.spec,
        embedder=name,
        dim=dim,
        ks=ks,
        prompt=used_prompt,
        rankings=rankings,
        per_tag=per_tag,
        relevant=dict(eval_set.relevant),
        images=len(eval_set.images),
        failed=failed,
        seconds=seconds,
    )
