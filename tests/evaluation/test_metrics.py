"""Precision@K and PAI's K-capping rule (imageindex.evaluation.metrics), checked against the
reference loop."""

from __future__ import annotations

import random

import numpy as np
import pytest

from imageindex import evaluation as ev
from imageindex.errors import ConfigError

# ------------------------------------------------------------------------------------------------
# the metric


def test_precision_at_k_hand_computed():
    ranked = ["a", "x", "c", "y", "b"]
    relevant = {"a", "b", "c"}
    assert ev.precision_at_k(ranked, relevant, 1) == 1.0
    assert ev.precision_at_k(ranked, relevant, 2) == 0.5
    assert ev.precision_at_k(ranked, relevant, 3) == pytest.approx(2 / 3)
    assert ev.precision_at_k(ranked, relevant, 5) == pytest.approx(3 / 5)
    # Always divided by k, also when fewer than k images were ranked (as the reference does).
    assert ev.precision_at_k(ranked, relevant, 10) == pytest.approx(3 / 10)
    # Relevant ids may come as a list with repeats; they count once.
    assert ev.precision_at_k(ranked, ["a", "a"], 2) == 0.5
    for bad in (0, -1, 1.0, True):
        with pytest.raises(ValueError):
            ev.precision_at_k(ranked, relevant, bad)


def lines(result):
    return [(t.requested, t.k, round(t.precision, 4), t.counted) for t in result]


def test_k_is_capped_at_the_relevant_count_and_the_capped_line_is_not_counted():
    # 3 relevant images; K = 1 counts; K = 5 > 3 gives one logged line at K = 3 (R-precision),
    # uncounted, and K = 10, 50, 100 are never computed.
    ranked = ["a", "x", "b", "c", "y", "z"]
    assert lines(ev.tag_precisions(ranked, ["a", "b", "c"])) == [
        (1, 1, 1.0, True),
        (5, 3, 0.6667, False),
    ]
    # Exactly 5 relevant: K = 5 is not capped (k > len(gts) is false) and counts; K = 10 caps.
    five = ["r1", "r2", "r3", "r4", "r5"]
    ranked = ["r1", "n1", "r2", "r3", "n2", "r4", "r5"]
    assert lines(ev.tag_precisions(ranked, five)) == [
        (1, 1, 1.0, True),
        (5, 5, 0.6, True),
        (10, 5, 0.6, False),
    ]
    # One relevant image, ranked second: P@1 = 0 counts; the capped line is P@1 again.
    assert lines(ev.tag_precisions(["n", "r"], ["r"])) == [(1, 1, 0.0, True), (5, 1, 0.0, False)]
    # Enough relevant images for every K: no capped line.
    many = [f"r{i}" for i in range(100)]
    assert [t.counted for t in ev.tag_precisions(many, many)] == [True] * 5
    with pytest.raises(ValueError):
        ev.tag_precisions(["a"], [])


def test_mean_is_over_the_tags_that_reach_k():
    ks = (1, 5, 10)
    # "big": 12 relevant, "small": 2 relevant (counts at K=1 only), "mid": 5 relevant.
    big_rel = [f"b{i}" for i in range(12)]
    big_rank = [
        "b0",
        "n0",
        "b1",
        "b2",
        "n1",
        "b3",
        "b4",
        "b5",
        "n2",
        "n3",
    ]  # P@1 1, P@5 .6, P@10 .6
    small_rank = ["n0", "s0", "s1"]  # P@1 0; capped P@2 = 0.5 logged only
    mid_rank = ["m0", "m1", "m2", "m3", "m4"]  # P@1 1, P@5 1; capped P@5 at K=10 logged only
    per_tag = [
        ev.tag_precisions(big_rank, big_rel, ks),
        ev.tag_precisions(small_rank, ["s0", "s1"], ks),
        ev.tag_precisions(mid_rank, ["m0", "m1", "m2", "m3", "m4"], ks),
    ]
    means, counted = ev.mean_precisions(per_tag, ks)
    assert counted == {1: 3, 5: 2, 10: 1}
    assert means[1] == pytest.approx((1 + 0 + 1) / 3)
    assert means[5] == pytest.approx((0.6 + 1.0) / 2)  # the small tag's 0.5 is not averaged
    assert means[10] == pytest.approx(0.6)
    means, counted = ev.mean_precisions(per_tag[1:2], (1, 5))
    assert means == {1: 0.0, 5: None} and counted == {1: 1, 5: 0}


def reference_means(tag_dict: dict[str, list[str]], rankings: dict[str, list[str]], top_k_list):
    """PAI's evaluation loop (section 4.5), copied with only the model calls taken out."""

    def precision_at_k(predictions, gts, k):
        if len(predictions) > k:
            predictions = predictions[:k]
        predicted_ids = {p[0] for p in predictions}
        relevant_and_retrieved = predicted_ids.intersection(gts)
        precision = len(relevant_and_retrieved) / k
        return precision

    log = []
    top_k_list_precision = [[] for _ in top_k_list]
    for tag in tag_dict:
        predictions = [(i, 0.0) for i in rankings[tag]]
        gts = tag_dict[tag]
        for top_k_id, k in enumerate(top_k_list):
            need_exit = False
            if k > len(gts):
                k = len(gts)
                need_exit = True
            prec = precision_at_k(predictions, gts, k)
            log.append(f"Tag {tag}, Len(GT) {len(gts)}, Precision@{k} {prec:.4f} ")
            if need_exit:
                break
            else:
                top_k_list_precision[top_k_id].append(prec)
    means = [float(np.mean(v)) if v else None for v in top_k_list_precision]
    return means, log


def test_matches_the_reference_loop_on_random_sets():
    rng = random.Random(7)
    ks = [1, 5, 10, 50, 100]
    for _ in range(20):
        ids = [f"img{i}" for i in range(rng.randint(5, 160))]
        tag_dict = {
            f"tag{t}": rng.sample(ids, rng.randint(1, min(len(ids), 120))) for t in range(12)
        }
        rankings = {t: rng.sample(ids, len(ids)) for t in tag_dict}
        ref_means, ref_log = reference_means(tag_dict, rankings, ks)
        per_tag = {t: ev.tag_precisions(rankings[t], tag_dict[t], ks) for t in tag_dict}
        means, _ = ev.mean_precisions(per_tag.values(), ks)
        assert [means[k] for k in ks] == pytest.approx(ref_means)
        result = ev.ModelResult(
            label="m",
            spec=None,
            embedder="m",
            dim=None,
            ks=tuple(ks),
            prompt=None,
            rankings=rankings,
            per_tag=per_tag,
            relevant=tag_dict,
            images=len(ids),
            failed={},
            seconds={},
        )
        assert result.summary()["precision"] == {
            str(k): m for k, m in zip(ks, ref_means, strict=True)
        }


def test_ks_must_increase():
    assert ev.check_ks("1, 5,10") == (1, 5, 10)
    for bad in ("5,1", "1,1", "0,5", "a", "", [1, 2.5]):
        with pytest.raises(ConfigError):
            ev.check_ks(bad)


def test_blue_tag_pays_for_its_failed_image(tmp_path):
    # Worked example of the rule above: blue has 2 relevant images, one failed to embed.
    per_tag = ev.tag_precisions(["b1", "r1", "r2", "g1"], ["b1", "broken"], (1, 2, 5))
    assert lines(per_tag) == [(1, 1, 1.0, True), (2, 2, 0.5, True), (5, 2, 0.5, False)]
