"""Neighbour lists for hard-negative batches: by ground distance, or by visual similarity (mining).

A hard negative must really be a negative. Two rules keep near-positives out of every list:

- **One altitude at a time** (``groups``): a location is a (tile, altitude) pair, and tiles of other
  altitudes over the same ground show the same place; the runtime searches one altitude layer at a time,
  so negatives are drawn from the anchor's own layer only.
- **No large overlap** (``footprint_m`` with ``max_overlap``): a tile whose north-up square footprint
  covers more than ``max_overlap`` of the anchor's footprint area is left out (with tiles every half
  footprint, the 4 side neighbours overlap by 50 % and the 4 diagonal ones by 25 %). The overlap of
  squares centred ``(dx, dy)`` apart with sides ``a`` (anchor) and ``b`` is
  ``max(0, min(ax+a/2, bx+b/2) - max(ax-a/2, bx-b/2))`` times the same along y, over ``a**2``.

:func:`neighbours_by_distance` ranks by metres (GPS neighbours), :func:`mine_similar_neighbours` by the
model's own similarity between each location's query and every other location's reference.
"""

from __future__ import annotations

import numpy as np

EARTH_RADIUS_M = 6_371_008.8


def haversine_m(lat1, lon1, lat2, lon2):
    """Great-circle distance in metres between points given in degrees (converted to radians here)."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp, dl = p2 - p1, np.radians(np.asarray(lon2) - np.asarray(lon1))
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def footprint_overlap(xy_a: np.ndarray, fp_a: np.ndarray, xy_b: np.ndarray, fp_b: np.ndarray) -> np.ndarray:
    """Share of each anchor's square footprint (rows ``a``) covered by each tile's (columns ``b``).

    ``xy_*``: (N, 2) centres in metres, ``fp_*``: (N,) side lengths in metres; returns (Na, Nb) in [0, 1].
    """
    xy_a, xy_b = np.asarray(xy_a, np.float64), np.asarray(xy_b, np.float64)
    ha, hb = np.asarray(fp_a, np.float64)[:, None] / 2, np.asarray(fp_b, np.float64)[None, :] / 2
    sides = []
    for axis in (0, 1):
        a, b = xy_a[:, axis, None], xy_b[None, :, axis]
        sides.append(np.clip(np.minimum(a + ha, b + hb) - np.maximum(a - ha, b - hb), 0.0, None))
    return sides[0] * sides[1] / (4 * ha * ha)


def allowed_candidates(rows: slice, n: int, *, groups=None, xy_m=None, footprint_m=None,
                       max_overlap: float | None = None) -> np.ndarray:
    """(rows, n) bool: which locations may be a negative of each anchor in ``rows`` (never itself)."""
    idx = np.arange(n)[rows]
    ok = np.ones((len(idx), n), bool)
    ok[np.arange(len(idx)), idx] = False
    if groups is not None:
        g = np.asarray(groups)
        ok &= g[idx, None] == g[None, :]
    if max_overlap is not None and footprint_m is not None:
        if xy_m is None:
            raise ValueError("excluding overlapping tiles needs metric coordinates (xy_m) per location")
        fp = np.asarray(footprint_m, np.float64)
        xy = np.asarray(xy_m, np.float64)
        ok &= footprint_overlap(xy[idx], fp[idx], xy, fp) <= max_overlap
    return ok


def neighbours_by_distance(xy_m: np.ndarray, k: int, radius_m: float | None = None,
                           latlon: bool = False, chunk: int = 2048, *, groups=None, footprint_m=None,
                           max_overlap: float | None = None) -> list[np.ndarray]:
    """For each location, the indices of its ``k`` nearest other locations, nearest first.

    ``xy_m``: (L, 2) coordinates in metres of a metric CRS, or (lat, lon) in degrees with
    ``latlon=True`` (then distances are great-circle metres). ``radius_m`` keeps only neighbours
    within that distance, so lists may be shorter than ``k``; so do ``groups`` (neighbours from the
    same group only, e.g. the altitude) and ``footprint_m``/``max_overlap`` (see the module docstring).
    """
    xy = np.asarray(xy_m, np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"coordinates must be an (L, 2) array, got shape {xy.shape}")
    if latlon and footprint_m is not None:
        raise ValueError("footprint overlap needs metric coordinates, not latitude/longitude")
    n = len(xy)
    k = min(int(k), n - 1)
    out: list[np.ndarray] = []
    for s in range(0, n, chunk):
        block = xy[s:s + chunk]
        if latlon:
            d = haversine_m(block[:, None, 0], block[:, None, 1], xy[None, :, 0], xy[None, :, 1])
        else:
            d = np.sqrt(((block[:, None, :] - xy[None, :, :]) ** 2).sum(-1))
        ok = allowed_candidates(slice(s, s + len(block)), n, groups=groups, xy_m=xy, footprint_m=footprint_m,
                                max_overlap=max_overlap)
        d = np.where(ok, d, np.inf)
        if radius_m is not None:
            d[d > radius_m] = np.inf
        out += _top_k(-d, k)
    return out


def mine_similar_neighbours(query_emb: np.ndarray, reference_emb: np.ndarray, k: int, chunk: int = 1024, *,
                            groups=None, xy_m=None, footprint_m=None,
                            max_overlap: float | None = None) -> list[np.ndarray]:
    """Visual hard negatives: for location ``i``, the ``k`` references most similar to its query, its own
    reference excluded (rows are L2-normalised embeddings of each location's query and reference), and
    with ``groups``/``footprint_m``/``max_overlap`` the same exclusions as :func:`neighbours_by_distance`."""
    q = np.asarray(query_emb, np.float32)
    r = np.asarray(reference_emb, np.float32)
    if q.shape != r.shape:
        raise ValueError(f"one query and one reference embedding per location, got {q.shape} and {r.shape}")
    n = len(q)
    k = min(int(k), n - 1)
    out: list[np.ndarray] = []
    for s in range(0, n, chunk):
        sim = (q[s:s + chunk] @ r.T).astype(np.float64)
        ok = allowed_candidates(slice(s, s + len(sim)), n, groups=groups, xy_m=xy_m, footprint_m=footprint_m,
                                max_overlap=max_overlap)
        out += _top_k(np.where(ok, sim, -np.inf), k)
    return out


def _top_k(score: np.ndarray, k: int) -> list[np.ndarray]:
    """Per row, the columns of the ``k`` highest finite scores, best first (ties in column order)."""
    if k <= 0:
        return [np.zeros(0, np.int64) for _ in range(len(score))]
    part = np.argpartition(-score, k - 1, axis=1)[:, :k]
    out = []
    for row, cand in enumerate(part):
        cand = cand[np.lexsort((cand, -score[row, cand]))]
        out.append(cand[np.isfinite(score[row, cand])].astype(np.int64))
    return out
