"""Precision@K per tag and its mean, with the reference's K-capping rule.

Reproduced from PAI's GME evaluation script ("Manage and use multimodal data", section 4.5,
``precision_at_k`` and ``main``):

* ``precision_at_k(ranked, relevant, k) = |top k of ranked ∩ relevant| / k``, always divided by
  ``k`` (also when fewer than ``k`` images were ranked).
* The Ks are walked in increasing order for each tag. For every K **≤ len(gts)** the tag's P@K is
  logged and counted in the mean P@K. At the first K **> len(gts)** the reference caps K to
  ``len(gts)``, logs ``Precision@len(gts)`` (the R-precision) and then ``break``-s: that capped
  value is **only logged, never counted**, and the tag contributes to no larger K either. So the
  mean P@K is taken over the tags with at least K relevant images, and a K that no tag reaches
  has no mean (the reference prints ``np.mean([])`` = nan; here it is ``None``/``null``). A tag
  with exactly K relevant images counts at K (``k > len(gts)`` is false), with its plain P@K.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from imageindex.errors import ConfigError

DEFAULT_KS: tuple[int, ...] = (1, 5, 10, 50, 100)


def precision_at_k(ranked_ids: Sequence[str], relevant_ids: Iterable[str], k: int) -> float:
    """``|ranked_ids[:k] ∩ relevant_ids| / k``, the reference's ``precision_at_k``.

    Always divides by ``k``, even when fewer than ``k`` ids were ranked. Capping ``k`` at the
    number of relevant images is the caller's business (see :func:`tag_precisions`).
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"precision_at_k(): k must be an integer >= 1, got {k!r}")
    retrieved = set(ranked_ids[:k])
    return len(retrieved & set(relevant_ids)) / k


@dataclass(frozen=True)
class TagPrecision:
    """One line of the per-tag log: P@``k`` where ``k`` is ``requested`` capped at ``n_relevant``.

    ``counted`` is False for the capped line (``requested > n_relevant``): it is logged, never
    averaged, and it is the tag's last line.
    """

    requested: int
    k: int
    precision: float
    counted: bool


def tag_precisions(
    ranked_ids: Sequence[str], relevant_ids: Sequence[str], ks: Sequence[int] = DEFAULT_KS
) -> list[TagPrecision]:
    """The reference's per-tag loop over ``ks`` (increasing), with its K-capping rule.

    Reference (section 4.5)::

        for top_k_id, k in enumerate(top_k_list):
            need_exit = False
            if k > len(gts):
                k = len(gts)
                need_exit = True
            prec = precision_at_k(predictions, gts, k)
            f.write(f'Tag {tag}, Len(GT) {len(gts)}, Precision@{k} {prec:.4f} \\n')
            if need_exit:
                break
            else:
                top_k_list_precision[top_k_id].append(prec)

    So P@K counts for every K <= len(gts); the first K > len(gts) yields one uncounted line at
    K = len(gts), and no larger K is computed.
    """
    ks = check_ks(ks)
    n = len(set(relevant_ids))
    if n == 0:
        raise ValueError("tag_precisions(): a tag needs at least one relevant image")
    out: list[TagPrecision] = []
    for k in ks:
        if k > n:
            out.append(TagPrecision(k, n, precision_at_k(ranked_ids, relevant_ids, n), False))
            break
        out.append(TagPrecision(k, k, precision_at_k(ranked_ids, relevant_ids, k), True))
    return out


def mean_precisions(
    per_tag: Iterable[Sequence[TagPrecision]], ks: Sequence[int] = DEFAULT_KS
) -> tuple[dict[int, float | None], dict[int, int]]:
    """``({K: mean P@K over the tags counted at K, or None}, {K: number of tags counted})``."""
    ks = check_ks(ks)
    values: dict[int, list[float]] = {k: [] for k in ks}
    for lines in per_tag:
        for line in lines:
            if line.counted:
                values[line.requested].append(line.precision)
    means = {k: (float(np.mean(v)) if v else None) for k, v in values.items()}
    return means, {k: len(v) for k, v in values.items()}


def check_ks(ks: Sequence[int] | str) -> tuple[int, ...]:
    """Validate Ks: positive integers in strictly increasing order (``"1,5,10"`` accepted)."""
    if isinstance(ks, str):
        try:
            ks = [int(p) for p in ks.split(",") if p.strip()]
        except ValueError:
            raise ConfigError(
                f"Ks {ks!r}: give comma-separated integers, e.g. 1,5,10,50,100"
            ) from None
    ks = tuple(ks)
    if not ks or any(not isinstance(k, int) or isinstance(k, bool) or k < 1 for k in ks):
        raise ConfigError(f"Ks {list(ks)}: give one or more integers >= 1")
    if any(b <= a for a, b in zip(ks, ks[1:], strict=False)):
        # The reference's early exit assumes increasing K.
        raise ConfigError(f"Ks {list(ks)} must be strictly increasing, e.g. 1,5,10,50,100")
    return ks
