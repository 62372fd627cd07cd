"""Retrieval metrics, defined once: R@k, R@1% and University-1652 AP (numpy only).

Used by replay, by ``train.evaluate`` and by the export checks, so every number in the project is
computed the same way.

Definitions (all returned in percent):

- The gallery is ranked per query by decreasing similarity. Ties keep gallery order (a stable sort),
  so equal scores never depend on the sorting algorithm.
- Junk gallery items are removed from a query's ranking before anything is counted (they neither help
  nor hurt; University-1652's ``junk_index``, Sample4Geo's dropped non-query locations).
- ``R@k``: the share of queries whose first true match is among the first ``k`` ranked items
  (rank 1 = the best). No off-by-one: ``R@1`` counts a hit only at the very first position.
- ``R@1%``: ``R@k`` with ``k = max(1, round(0.01 * n_gallery))``, where ``n_gallery`` is the number of
  gallery items that are not junk for every query (Python's ``round``: half to even).
- ``AP``: University-1652's average precision, the mean over queries of the trapezoid-interpolated
  area under the precision-recall curve over *all* positives of the query: for the i-th positive
  (0-based) at 0-based rank ``r_i``, it adds ``(1/n) * (p_before + p_at) / 2`` with
  ``p_at = (i + 1) / (r_i + 1)`` and ``p_before = i / r_i`` (1 when ``r_i == 0``). With one positive at
  rank 1 the AP is 100; at rank 2 it is 25 (not 50: that is what the benchmark's code computes).
- A query with no positive left (after junk) is not counted; the number of such queries is returned
  as ``n_queries_without_positive`` and logged, and ``n_queries`` counts only the evaluated ones.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

# queries per chunk are chosen so a chunk's (queries x gallery) working arrays stay near this size
_CHUNK_ELEMENTS = 1 << 22


class MetricsError(ValueError):
    """Inputs to the retrieval metrics that do not fit together."""


def one_percent_k(n_gallery: int) -> int:
    """The k of R@1%: ``max(1, round(0.01 * n_gallery))``."""
    return max(1, int(round(0.01 * int(n_gallery))))


def _label_codes(query_labels, gallery_labels) -> tuple[np.ndarray, np.ndarray]:
    """Map arbitrary labels (ints, strings) of both sides onto shared integer codes."""
    q = np.asarray(query_labels)
    g = np.asarray(gallery_labels)
    if q.ndim != 1 or g.ndim != 1:
        raise MetricsError(f"labels must be 1-D, got query {q.shape} and gallery {g.shape}")
    if q.dtype.kind != g.dtype.kind and {q.dtype.kind, g.dtype.kind} - {"i", "u"}:
        # e.g. int query labels against string gallery labels: compare as strings
        q, g = q.astype(str), g.astype(str)
    _, codes = np.unique(np.concatenate([q, g]), return_inverse=True)
    codes = codes.reshape(-1)
    return codes[: len(q)], codes[len(q):]


def _as_scores(sim: np.ndarray, n_gallery: int) -> np.ndarray:
    """Similarity matrix, or an integer ranking (each row the gallery indices best first) -> scores."""
    sim = np.asarray(sim)
    if sim.ndim != 2:
        raise MetricsError(f"sim must be a 2-D (n_queries, n_gallery) array, got shape {sim.shape}")
    if sim.dtype.kind in "iu":
        # a ranking: row q lists gallery indices from best to worst; it must be a full permutation
        if sim.shape[1] != n_gallery:
            raise MetricsError(
                f"a ranking must list all {n_gallery} gallery items per query, got {sim.shape[1]} columns"
            )
        check = np.sort(sim, axis=1)
        if not np.array_equal(check, np.broadcast_to(np.arange(n_gallery), sim.shape)):
            raise MetricsError("each row of an integer ranking must be a permutation of 0..n_gallery-1")
        scores = np.empty(sim.shape, np.float64)
        rows = np.arange(sim.shape[0])[:, None]
        scores[rows, sim] = -np.arange(n_gallery, dtype=np.float64)[None, :]
        return scores
    if sim.dtype.kind != "f":
        raise MetricsError(f"sim must be float similarities or an integer ranking, got dtype {sim.dtype}")
    return sim


def _junk_mask(junk, n_queries: int, n_gallery: int) -> np.ndarray | None:
    if junk is None:
        return None
    j = np.asarray(junk)
    if j.dtype != bool:
        # a list of gallery indices ignored for every query
        idx = j.astype(np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= n_gallery):
            raise MetricsError(f"junk indices must lie in 0..{n_gallery - 1}, got {idx.min()}..{idx.max()}")
        mask = np.zeros(n_gallery, bool)
        mask[idx] = True
        return mask
    if j.shape not in ((n_gallery,), (n_queries, n_gallery)):
        raise MetricsError(
            f"a boolean junk mask must have shape ({n_gallery},) or ({n_queries}, {n_gallery}), got {j.shape}"
        )
    return j


def per_query(sim, query_labels, gallery_labels, junk=None) -> dict:
    """Per-query detail: ``first_rank`` (1-based rank of the first true match, 0 when there is none),
    ``ap`` (University-1652 AP in [0, 1], NaN without positives), ``n_positive``, and ``n_gallery``.

    Arguments as in :func:`retrieval_metrics`.
    """
    q_codes, g_codes = _label_codes(query_labels, gallery_labels)
    nq, ng = len(q_codes), len(g_codes)
    scores = _as_scores(sim, ng)
    if scores.shape != (nq, ng):
        raise MetricsError(
            f"sim has shape {scores.shape} but there are {nq} query labels and {ng} gallery labels"
        )
    if np.isnan(scores).any():
        raise MetricsError("sim contains NaN: the embeddings are broken")
    junk_mask = _junk_mask(junk, nq, ng)

    first_rank = np.zeros(nq, np.int64)
    ap = np.full(nq, np.nan)
    n_pos = np.zeros(nq, np.int64)
    chunk = max(1, _CHUNK_ELEMENTS // max(ng, 1))
    for s in range(0, nq, chunk):
        e = min(nq, s + chunk)
        order = np.argsort(-scores[s:e], axis=1, kind="stable")
        pos = g_codes[order] == q_codes[s:e, None]
        if junk_mask is None:
            keep = np.ones_like(pos)
        elif junk_mask.ndim == 1:
            keep = ~junk_mask[order]
        else:
            keep = ~np.take_along_axis(junk_mask[s:e], order, axis=1)
        pos &= keep
        # 0-based rank of each item among the kept (non-junk) items
        eff = np.cumsum(keep, axis=1) - 1
        # 0-based index of each positive among the query's positives
        ith = np.cumsum(pos, axis=1) - 1
        npos = pos.sum(axis=1)
        n_pos[s:e] = npos
        has = npos > 0
        big = np.iinfo(np.int64).max
        first = np.where(pos, eff, big).min(axis=1)
        first_rank[s:e] = np.where(has, first + 1, 0)
        r = eff.astype(np.float64)
        i = ith.astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):  # junk items (r = -1) are masked out below
            p_at = (i + 1.0) / (r + 1.0)
            p_before = np.where(r == 0, 1.0, i / np.where(r == 0, 1.0, r))
        contrib = np.where(pos, (p_before + p_at) / 2.0, 0.0).sum(axis=1)
        ap[s:e] = np.where(has, contrib / np.maximum(npos, 1), np.nan)

    if junk_mask is None:
        n_eff = ng
    elif junk_mask.ndim == 1:
        n_eff = int(ng - junk_mask.sum())
    else:
        n_eff = int(ng - np.all(junk_mask, axis=0).sum())
    return {"first_rank": first_rank, "ap": ap, "n_positive": n_pos, "n_gallery": n_eff}


def retrieval_metrics(sim, query_labels, gallery_labels, ks=(1, 5, 10), junk=None) -> dict:
    """R@k for each k in ``ks``, R@1% and AP (percent), with ``n_queries`` and ``n_gallery``.

    ``sim``: float similarities (n_queries, n_gallery), higher is better; or an integer ranking of the
    same shape whose rows list gallery indices best first. ``query_labels``/``gallery_labels``: the
    location of each item (ints or strings); every gallery item with the query's label is a positive
    (satellite->drone on SUES-200 has 50). ``junk``: None, a boolean mask (n_gallery,) or
    (n_queries, n_gallery), or a list of gallery indices, of items ignored when ranking.
    See the module docstring for the exact definitions.
    """
    d = per_query(sim, query_labels, gallery_labels, junk=junk)
    valid = d["n_positive"] > 0
    n_missing = int((~valid).sum())
    if n_missing:
        log.warning("%d of %d queries have no positive in the gallery and are not counted",
                    n_missing, len(valid))
    first = d["first_rank"][valid]
    n_eval = int(valid.sum())
    k1 = one_percent_k(d["n_gallery"])
    out: dict = {}

    def recall(k: int) -> float:
        return float(100.0 * np.mean(first <= k)) if n_eval else float("nan")

    for k in ks:
        k = int(k)
        if k < 1:
            raise MetricsError(f"recall cut-offs must be >= 1, got {k}")
        out[f"R@{k}"] = recall(k)
    out["R@1%"] = recall(k1)
    out["AP"] = float(100.0 * np.mean(d["ap"][valid])) if n_eval else float("nan")
    out["n_queries"] = n_eval
    out["n_gallery"] = int(d["n_gallery"])
    out["k_1pct"] = k1
    out["n_queries_without_positive"] = n_missing
    return out


def cosine_similarity(queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """Cosine similarity (float32) of two sets of row vectors; rows are L2-normalised here."""
    q = np.asarray(queries, np.float32)
    g = np.asarray(gallery, np.float32)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise MetricsError(f"embeddings must be (N, D) with the same D, got {q.shape} and {g.shape}")
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    g = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
    return q @ g.T
