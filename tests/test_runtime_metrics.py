"""common.metrics against cases computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from common.metrics import (
    MetricsError,
    cosine_similarity,
    one_percent_k,
    per_query,
    retrieval_metrics,
)


def test_single_positive_ranks_hand_computed():
    # 3 queries, 4 gallery items (labels a b c d). True match ranks: q0 -> 1, q1 -> 2, q2 -> 4.
    gallery = ["a", "b", "c", "d"]
    sim = np.array(
        [
            [0.9, 0.1, 0.2, 0.3],  # label a: a is best            -> rank 1
            [0.8, 0.7, 0.1, 0.2],  # label b: a beats b            -> rank 2
            [0.9, 0.8, 0.7, 0.1],  # label d: last                 -> rank 4
        ]
    )
    m = retrieval_metrics(sim, ["a", "b", "d"], gallery, ks=(1, 2, 3, 4))
    assert m["R@1"] == pytest.approx(100 / 3)
    assert m["R@2"] == pytest.approx(200 / 3)
    assert m["R@3"] == pytest.approx(200 / 3)  # rank 4 is not within 3: no off-by-one
    assert m["R@4"] == pytest.approx(100.0)
    # University-1652 AP with one positive at 0-based rank r: 1 if r == 0 else (1/(r+1))/2
    assert m["AP"] == pytest.approx(100 * (1.0 + 0.25 + 0.125) / 3)
    assert m["n_queries"] == 3 and m["n_gallery"] == 4
    # 1% of 4 rounds to 0 -> k = 1
    assert m["k_1pct"] == 1 and m["R@1%"] == m["R@1"]


def test_several_positives_ap_hand_computed():
    # one query with label x; gallery ranked x, y, x, y, x (scores decreasing)
    gallery = ["x", "y", "x", "y", "x"]
    sim = np.array([[5.0, 4.0, 3.0, 2.0, 1.0]])
    m = retrieval_metrics(sim, ["x"], gallery, ks=(1,))
    # positives at ranks r = 0, 2, 4 (0-based), n = 3
    # i=0: p_at 1/1, p_before 1      -> 1.0
    # i=1: p_at 2/3, p_before 1/2    -> (0.5 + 0.6667)/2 = 0.58333
    # i=2: p_at 3/5, p_before 2/4    -> (0.5 + 0.6)/2 = 0.55
    expected = (1.0 + (0.5 + 2 / 3) / 2 + (0.5 + 0.6) / 2) / 3
    assert m["AP"] == pytest.approx(100 * expected)
    assert m["R@1"] == 100.0
    d = per_query(sim, ["x"], gallery)
    assert d["n_positive"].tolist() == [3] and d["first_rank"].tolist() == [1]


def test_satellite_to_drone_like_fifty_positives():
    # 2 satellite queries, gallery of 2 x 50 drone frames; query 0 gets all its 50 on top (AP 100),
    # query 1 gets the other location's 50 first, then its own (first match at rank 51).
    labels = np.repeat([1, 2], 50)
    sim = np.zeros((2, 100))
    sim[0, :50] = 1.0
    sim[1, :50] = 1.0  # wrong location first
    sim[1, 50:] = 0.5
    m = retrieval_metrics(sim, [1, 2], labels, ks=(1, 50))
    assert m["R@1"] == 50.0 and m["R@50"] == 50.0
    # k for R@1% of 100 items is 1
    assert m["k_1pct"] == 1
    # query 1: positives at 0-based ranks 50..99, i = 0..49
    i = np.arange(50.0)
    r = 50 + i
    ap1 = np.mean(((i / r) + (i + 1) / (r + 1)) / 2)
    assert m["AP"] == pytest.approx(100 * (1.0 + ap1) / 2)


def test_r_at_one_percent_rounding_and_no_off_by_one():
    assert one_percent_k(200) == 2
    assert one_percent_k(10000) == 100
    assert one_percent_k(49) == 1
    assert one_percent_k(250) == 2  # round half to even: 2.5 -> 2
    assert one_percent_k(351) == 4
    # 200 gallery items, true match at rank 2 and at rank 3
    ng = 200
    sim = np.tile(-np.arange(ng, dtype=float), (2, 1))  # gallery order is the ranking
    gallery = np.arange(ng)
    m = retrieval_metrics(sim, [1, 2], gallery)  # label 1 at rank 2, label 2 at rank 3
    assert m["k_1pct"] == 2
    assert m["R@1%"] == 50.0  # only the rank-2 query counts at k = 2


def test_junk_is_removed_from_the_ranking():
    gallery = ["j", "a", "b"]
    sim = np.array([[0.9, 0.8, 0.1]])  # junk item first, then the true match
    m = retrieval_metrics(sim, ["a"], gallery, junk=np.array([True, False, False]))
    assert m["R@1"] == 100.0 and m["AP"] == 100.0 and m["n_gallery"] == 2
    m2 = retrieval_metrics(sim, ["a"], gallery)
    assert m2["R@1"] == 0.0 and m2["AP"] == pytest.approx(25.0)
    # junk as an index list and as a per-query mask give the same result
    assert retrieval_metrics(sim, ["a"], gallery, junk=[0])["R@1"] == 100.0
    assert retrieval_metrics(sim, ["a"], gallery, junk=np.array([[True, False, False]]))["R@1"] == 100.0


def test_junk_positive_is_not_a_hit_and_queries_without_positive_are_skipped():
    gallery = ["a", "b"]
    sim = np.array([[0.9, 0.1], [0.9, 0.1]])
    junk = np.array([[True, False], [False, False]])  # q0's only positive is junk
    m = retrieval_metrics(sim, ["a", "a"], gallery, junk=junk)
    assert m["n_queries"] == 1 and m["n_queries_without_positive"] == 1
    assert m["R@1"] == 100.0


def test_ties_keep_gallery_order():
    sim = np.array([[0.5, 0.5, 0.5]])
    assert retrieval_metrics(sim, [0], [0, 1, 2])["R@1"] == 100.0
    assert retrieval_metrics(sim, [2], [0, 1, 2])["R@1"] == 0.0


def test_integer_ranking_equals_similarity():
    rng = np.random.default_rng(0)
    sim = rng.normal(size=(7, 30))
    qlab = rng.integers(0, 10, 7)
    glab = rng.integers(0, 10, 30)
    glab[:10] = np.arange(10)  # every query has a positive
    ranking = np.argsort(-sim, axis=1, kind="stable")
    a = retrieval_metrics(sim, qlab, glab)
    b = retrieval_metrics(ranking, qlab, glab)
    assert a == b


def test_matches_a_plain_loop_on_random_data():
    rng = np.random.default_rng(1)
    nq, ng = 40, 60
    sim = rng.normal(size=(nq, ng))
    qlab = rng.integers(0, 12, nq)
    glab = rng.integers(0, 12, ng)
    glab[:12] = np.arange(12)
    junk = rng.random(ng) < 0.1
    junk[:12] = False
    m = retrieval_metrics(sim, qlab, glab, ks=(1, 5), junk=junk)
    # reference: straightforward per-query loop following University-1652's compute_mAP
    hits1 = hits5 = 0
    aps = []
    for q in range(nq):
        order = [g for g in np.argsort(-sim[q], kind="stable") if not junk[g]]
        good = [k for k, g in enumerate(order) if glab[g] == qlab[q]]
        hits1 += good[0] < 1
        hits5 += good[0] < 5
        ap = 0.0
        for i, r in enumerate(good):
            prec = (i + 1) / (r + 1)
            old = i / r if r != 0 else 1.0
            ap += (old + prec) / 2 / len(good)
        aps.append(ap)
    assert m["R@1"] == pytest.approx(100 * hits1 / nq)
    assert m["R@5"] == pytest.approx(100 * hits5 / nq)
    assert m["AP"] == pytest.approx(100 * np.mean(aps))
    assert m["n_gallery"] == ng - junk.sum()


def test_int_and_string_labels_mix():
    m = retrieval_metrics(np.array([[1.0, 0.0]]), [7], ["7", "8"])
    assert m["R@1"] == 100.0


def test_bad_inputs_name_the_problem():
    with pytest.raises(MetricsError, match="3 query labels and 2 gallery"):
        retrieval_metrics(np.zeros((2, 2)), [0, 1, 2], [0, 1])
    with pytest.raises(MetricsError, match="permutation"):
        retrieval_metrics(np.array([[0, 0]]), [0], [0, 1])
    with pytest.raises(MetricsError, match="junk mask must have shape"):
        retrieval_metrics(np.zeros((1, 2)), [0], [0, 1], junk=np.array([True]))
    with pytest.raises(MetricsError, match="NaN"):
        retrieval_metrics(np.array([[np.nan, 0.0]]), [0], [0, 1])


def test_cosine_similarity_normalises():
    q = np.array([[3.0, 0.0]])
    g = np.array([[0.0, 2.0], [5.0, 0.0]])
    assert cosine_similarity(q, g).tolist() == [[0.0, 1.0]]
