"""Cross-raster (e.g. cross-year) retrieval on GeoTIFFs, counted as the flight replay counts it.

Per altitude, the gallery is the reference raster's tiles (footprint from ``hfov_deg``, centres every
``stride_frac`` x footprint, as the tile database the drone flies with); the queries are drone views
rendered from each held-out raster, turned north-up as the runtime does (``north_up`` with a compass
error of ``compass_error_deg``), with a fixed seed so every model sees the same queries.

Query positions (``positions``):

- ``"uniform"`` (default): uniformly over the map, where a whole view fits (between the outermost
  centres of the non-overlapping tile grid, and inside one of its valid tiles): a drone flies anywhere,
  not over tile centres.
- ``"centred"``: a tile centre plus up to ``offset_frac`` x footprint along each axis (the former
  evaluation, which flatters the model).

Metrics: ``R@k`` is the share of queries whose true position lies inside one of the top-``k`` gallery
tiles (north-up squares: ``|dx|, |dy| <= footprint / 2``), exactly as ``replay geotiff`` counts a hit;
with overlapping tiles several tiles contain a position and any of them counts. ``AP`` and ``R@1%``
(:func:`common.metrics.retrieval_metrics`) take the tile nearest to the true position as the one
positive. ``median_error_m``/``p95_error_m``: ground distance from the top-1 tile centre to the truth.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from common.metrics import retrieval_metrics
from runtime.engines.preprocess import north_up

_logger = logging.getLogger(__name__)


def _name(path) -> str:
    return Path(path).stem


def query_positions(reference, altitude_m: float, hfov_deg: float, n: int | None, rng: np.random.Generator,
                    positions: str = "uniform", offset_frac: float = 0.25, stride_frac: float = 1.0):
    """(n, 2) true query positions in metres (see the module docstring)."""
    from train.datasets import geotiff_locations

    if positions == "centred":
        tiles = [t for _, t in geotiff_locations(reference, [altitude_m], hfov_deg, stride_frac)]
        centres = np.array([[t.x, t.y] for t in tiles])
        idx = np.arange(len(tiles))
        if n is not None and len(idx) > n:
            idx = np.sort(rng.choice(len(idx), n, replace=False))
        return centres[idx] + rng.uniform(-offset_frac, offset_frac, (len(idx), 2)) * tiles[0].footprint_m
    if positions != "uniform":
        raise ValueError(f"query positions {positions!r} are not 'uniform' or 'centred'")
    cells = [t for _, t in geotiff_locations(reference, [altitude_m], hfov_deg, 1.0)]
    centres = np.array([[t.x, t.y] for t in cells])
    half = cells[0].footprint_m / 2
    n = len(cells) if n is None else int(n)
    lo, hi = centres.min(0), centres.max(0)
    out = np.zeros((0, 2))
    while len(out) < n:  # rejection sampling: keep positions inside a valid tile of the grid
        xy = rng.uniform(lo, hi, (2 * n, 2))
        inside = (np.abs(xy[:, None] - centres[None]) <= half).all(-1).any(1)
        out = np.concatenate([out, xy[inside]])
    return out[:n]


def containment_first_rank(sim: np.ndarray, centres: np.ndarray, footprint_m: float, true_xy: np.ndarray):
    """1-based rank of the first gallery tile that contains each true position (0: none contains it)."""
    inside = (np.abs(true_xy[:, None] - centres[None]) <= footprint_m / 2 + 1e-6).all(-1)
    order = np.argsort(-sim, axis=1, kind="stable")
    hit = np.take_along_axis(inside, order, axis=1)
    return np.where(hit.any(1), hit.argmax(1) + 1, 0)


def _metrics(sim, centres, footprint_m, true_xy) -> tuple[dict, dict]:
    nearest = np.argmin(((true_xy[:, None] - centres[None]) ** 2).sum(-1), axis=1)
    m = retrieval_metrics(sim, nearest, np.arange(len(centres)))
    ranks = containment_first_rank(sim, centres, footprint_m, true_xy)
    for k in (1, 5, 10):
        m[f"R@{k}"] = float(100 * np.mean((ranks >= 1) & (ranks <= k)))
    err = np.linalg.norm(centres[np.argmax(sim, 1)] - true_xy, axis=1)
    m["median_error_m"] = float(np.median(err))
    m["p95_error_m"] = float(np.percentile(err, 95))
    return m, {"first_rank": ranks, "error_m": err}


def _pool(parts: list[dict]) -> dict:
    ranks = np.concatenate([p["first_rank"] for p in parts])
    err = np.concatenate([p["error_m"] for p in parts])
    out = {f"R@{k}": float(100 * np.mean((ranks >= 1) & (ranks <= k))) for k in (1, 5, 10)}
    out.update(median_error_m=float(np.median(err)), p95_error_m=float(np.percentile(err, 95)),
               n_queries=int(len(ranks)))
    return out


def _render_queries(raster, true_xy, headings, compass, altitude_m, hfov_deg, size):
    from tiles.views import CameraPose, render_view

    return [north_up(render_view(raster, CameraPose(x, y, float(altitude_m), heading_deg=float(h),
                                                    hfov_deg=hfov_deg), (size, size)).image, float(c))
            for (x, y), h, c in zip(true_xy, headings, compass)]


def _embedder(model, batch_size: int, device, bar):
    from train.embed import embed_images

    return lambda images: embed_images(model, images, batch_size, device, bar=bar)


def evaluate_geotiff(model, reference, query_rasters, altitudes_m, hfov_deg: float, stride_frac: float = 1.0,
                     max_queries: int | None = None, offset_frac: float = 0.25, heading_deg: float = 180.0,
                     compass_error_deg: float = 3.0, batch_size: int = 64, device="cpu", seed: int = 0,
                     positions: str = "uniform", progress: bool = True) -> dict:
    """See the module docstring. ``max_queries``: queries per (raster, altitude) (None: one per tile).
    ``progress``: a bar per altitude (``evaluation 150 m``) counting the images embedded, tiles and queries.

    Returns ``{"per_altitude": {alt: {raster: metrics, "all": metrics}}, "all": metrics, "setup": ...}``.
    """
    from common.progress import progress_bar
    from tiles.grid import read_tile
    from tiles.raster import open_raster
    from train.datasets import geotiff_locations

    size = model.preprocess.input_size[0]
    per_alt: dict = {}
    pooled: list[dict] = []
    ref = open_raster(reference)
    queries = [open_raster(p) for p in query_rasters]
    try:
        for alt in altitudes_m:
            tiles = [t for _, t in geotiff_locations(reference, [alt], hfov_deg, stride_frac)]
            centres = np.array([[t.x, t.y] for t in tiles])
            rng = np.random.default_rng([seed, int(alt)])
            true_xy = query_positions(reference, alt, hfov_deg, max_queries, rng, positions, offset_frac,
                                      stride_frac)
            headings = rng.uniform(-heading_deg, heading_deg, len(true_xy)) % 360.0
            compass = headings + rng.normal(0.0, compass_error_deg, len(true_xy))
            per_alt[int(alt)] = {}
            with progress_bar(desc=f"evaluation {alt:g} m", total=len(tiles) + len(true_xy) * len(queries),
                              unit="image", enabled=progress) as bar:
                embed = _embedder(model, batch_size, device, bar)
                gallery = embed([read_tile(ref, t, size) for t in tiles])
                for qpath, qr in zip(query_rasters, queries):
                    sim = embed(_render_queries(qr, true_xy, headings, compass, alt, hfov_deg, size)) @ gallery.T
                    m, part = _metrics(sim, centres, tiles[0].footprint_m, true_xy)
                    per_alt[int(alt)][_name(qpath)] = m
                    pooled.append(part)
            per_alt[int(alt)]["all"] = _pool(pooled[-len(query_rasters):])
            _logger.info("%s m: R@1 %.1f, median error %.0f m", alt, per_alt[int(alt)]["all"]["R@1"],
                         per_alt[int(alt)]["all"]["median_error_m"])
    finally:
        ref.close()
        for q in queries:
            q.close()
    return {"per_altitude": per_alt, "all": _pool(pooled),
            "setup": {"reference": _name(reference), "query_rasters": [_name(p) for p in query_rasters],
                      "altitudes_m": [int(a) for a in altitudes_m], "hfov_deg": hfov_deg,
                      "stride_frac": stride_frac, "max_queries": max_queries, "positions": positions,
                      "offset_frac": offset_frac if positions == "centred" else None,
                      "heading_deg": heading_deg, "compass_error_deg": compass_error_deg, "seed": seed,
                      "hit": "true position inside the top-k tile (as replay geotiff counts)"}}
