"""Metric map coordinates and WGS84 without pyproj on board: affine fits of the tile centres' own lat/lon.

The database stores every tile centre in the map's metric CRS and in WGS84; over a few tiles the map
projection is affine to centimetres, so the nearest centres' least-squares affine fit converts either way.
"""

from __future__ import annotations

import math

import numpy as np

R95_PER_SIGMA = math.sqrt(-2.0 * math.log(0.05))  # 2-D isotropic Gaussian: 95 % radius / per-axis sigma


def xy_at(db, grid, lat: float, lon: float) -> tuple[float, float]:
    """Metric x, y of a WGS84 point: the inverse of :func:`latlon_at`, an affine fit of the tile centres
    nearest to it in degrees (longitude scaled by the latitude's cosine)."""
    ent = db.entries
    la = np.asarray(ent["lat"][grid.rows], np.float64)
    lo = np.asarray(ent["lon"][grid.rows], np.float64)
    near = _nearest(la, lo * math.cos(math.radians(lat)), lat, lon * math.cos(math.radians(lat)), 6)
    return _affine_at(la[near], lo[near], (grid.x[near], grid.y[near]), lat, lon)


def _affine_at(u: np.ndarray, v: np.ndarray, targets, pu: float, pv: float) -> tuple[float, ...]:
    """Each of ``targets`` at (pu, pv), from an affine least-squares fit of it over the points (u, v)."""
    a = np.stack([u, v, np.ones(len(u))], 1)
    p = np.array([pu, pv, 1.0])
    return tuple(float(p @ np.linalg.lstsq(a, t, rcond=None)[0]) for t in targets)


def latlon_at(db, grid, x: float, y: float) -> tuple[float, float]:
    """WGS84 of a metric point, from an affine fit of the nearest tile centres' own lat/lon (no pyproj on
    board; exact to centimetres over a few tiles)."""
    if not (math.isfinite(x) and math.isfinite(y)):
        return math.nan, math.nan
    near = _nearest(grid.x, grid.y, x, y, 6)
    if len(near) < 3:
        return math.nan, math.nan
    rows = grid.rows[near]
    ent = db.entries
    lat = np.asarray(ent["lat"][rows], np.float64)
    lon = np.asarray(ent["lon"][rows], np.float64)
    if not (np.all(np.isfinite(lat)) and np.all(np.isfinite(lon))):
        return math.nan, math.nan
    return _affine_at(grid.x[near], grid.y[near], (lat, lon), x, y)


def _nearest(xs: np.ndarray, ys: np.ndarray, x: float, y: float, n: int) -> np.ndarray:
    """Indices of the ``n`` points nearest (x, y), nearest first (a partial sort: the layer can be large)."""
    d2 = (xs - x) ** 2 + (ys - y) ** 2
    d2 = np.where(np.isfinite(d2), d2, np.inf)
    if len(d2) > n:
        part = np.argpartition(d2, n - 1)[:n]
        return part[np.argsort(d2[part])]
    return np.argsort(d2)
