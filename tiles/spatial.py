"""The spatial index of a tile database: a grid of buckets over the tile centres, per layer (numpy only).

Each layer's centres (metric CRS of the database) are binned into square cells of ``cell_m`` metres
(about one footprint, see :func:`cell_size_m`), cells numbered row-major from the layer's lower-left
corner. Three arrays, stored as ``.npy`` files in the database folder and memory-mapped by the reader:

    grid_rows.npy    int32 (G,)    database rows with geometry, sorted by (layer, cell)
    grid_xy.npy      float64 (G, 2) their centres, in the same order (no read of the entries needed)
    grid_start.npy   int64 (sum over layers of ncells + 1,) where each cell's rows begin in grid_rows

A disc of radius R around a point covers ``2R / cell_m + 1`` cell rows; the cells of one cell row are
contiguous in ``grid_rows``, so the candidates are a few slices, filtered by exact distance. The cost is
proportional to the rows near the point (O(result)), not to the size of the layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GRID_ROWS = "grid_rows.npy"
GRID_XY = "grid_xy.npy"
GRID_START = "grid_start.npy"
FILES = (GRID_ROWS, GRID_XY, GRID_START)
#: at most this many cells per indexed row (a sparse layer gets bigger cells, not a huge table)
MAX_CELLS_PER_ROW = 8


def cell_size_m(layer: dict, xy: np.ndarray) -> float:
    """A cell of about one footprint (a 3-footprint radius then reads ~7 cell rows of ~7 cells); without a
    footprint, the median spacing of the centres times two."""
    fp = layer.get("footprint_m")
    if fp and math.isfinite(fp) and fp > 0:
        return float(fp)
    if len(xy) < 2:
        return 1.0
    span = np.ptp(xy, axis=0)
    return float(max(2.0 * math.sqrt(max(span[0] * span[1], 1.0) / len(xy)), 1.0))


def _layer_grid(xy: np.ndarray, cell_m: float) -> tuple[dict, np.ndarray]:
    """Grid geometry for centres ``xy`` and the cell number of each centre."""
    x0, y0 = (float(v) for v in xy.min(axis=0))
    span = xy.max(axis=0) - xy.min(axis=0)
    while True:
        ncols, nrows = int(span[0] // cell_m) + 1, int(span[1] // cell_m) + 1
        if ncols * nrows <= MAX_CELLS_PER_ROW * len(xy) + 1024:
            break
        cell_m *= 2.0
    cx = np.minimum(((xy[:, 0] - x0) // cell_m).astype(np.int64), ncols - 1)
    cy = np.minimum(((xy[:, 1] - y0) // cell_m).astype(np.int64), nrows - 1)
    return {"x0": x0, "y0": y0, "cell_m": float(cell_m), "ncols": ncols, "nrows": nrows}, cy * ncols + cx


def build_spatial_index(entries: np.ndarray, layers: list[dict]) -> tuple[dict[str, np.ndarray], dict]:
    """The index arrays (by file name) and the manifest record for ``entries`` grouped by layer.

    ``layers`` carry ``start``/``stop`` (rows of each layer, as :func:`tiles.db.write_database` sets them).
    """
    rows_parts, xy_parts, start_parts, meta = [], [], [], []
    offset = 0  # rows of grid_rows written so far
    cell_offset = 0  # entries of grid_start written so far
    for layer in layers:
        lo, hi = int(layer["start"]), int(layer["stop"])
        geo = np.flatnonzero(np.asarray(entries["has_geo"][lo:hi], bool)) + lo
        xy = np.stack([np.asarray(entries["x"][geo], np.float64), np.asarray(entries["y"][geo], np.float64)], 1)
        ok = np.all(np.isfinite(xy), axis=1)
        geo, xy = geo[ok], xy[ok]
        if len(geo) == 0:
            meta.append(None)
            continue
        grid, cell = _layer_grid(xy, cell_size_m(layer, xy))
        order = np.argsort(cell, kind="stable")
        ncells = grid["ncols"] * grid["nrows"]
        counts = np.bincount(cell, minlength=ncells)
        start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64) + offset
        rows_parts.append(geo[order].astype(np.int32))
        xy_parts.append(xy[order])
        start_parts.append(start)
        meta.append({**grid, "cells_at": cell_offset, "rows": int(len(geo))})
        offset += len(geo)
        cell_offset += ncells + 1
    arrays = {
        GRID_ROWS: np.concatenate(rows_parts) if rows_parts else np.zeros(0, np.int32),
        GRID_XY: np.concatenate(xy_parts) if xy_parts else np.zeros((0, 2), np.float64),
        GRID_START: np.concatenate(start_parts) if start_parts else np.zeros(0, np.int64),
    }
    return arrays, {"kind": "grid", "version": 1, "files": list(FILES), "layers": meta}


@dataclass
class SpatialIndex:
    """Read side of the grid (arrays usually memory-mapped); :meth:`within` is the query."""

    rows: np.ndarray
    xy: np.ndarray
    start: np.ndarray
    layers: list[dict | None]

    @classmethod
    def load(cls, folder: str | Path, record: dict, mmap: bool = True) -> SpatialIndex:
        folder = Path(folder)
        mode = "r" if mmap else None
        arrs = [np.load(folder / name, mmap_mode=mode, allow_pickle=False) for name in FILES]
        return cls(*arrs, record["layers"])

    @property
    def nbytes(self) -> int:
        return int(self.rows.nbytes + self.xy.nbytes + self.start.nbytes)

    def within(self, layer: int, centre_xy, radius_m: float) -> np.ndarray:
        """Database rows of ``layer`` whose centre is within ``radius_m`` of ``centre_xy``, ascending."""
        g = self.layers[layer]
        if g is None:
            return np.zeros(0, np.int64)
        cx, cy = float(centre_xy[0]), float(centre_xy[1])
        r, cell = float(radius_m), g["cell_m"]
        c0 = max(int(math.floor((cx - r - g["x0"]) / cell)), 0)
        c1 = min(int(math.floor((cx + r - g["x0"]) / cell)), g["ncols"] - 1)
        r0 = max(int(math.floor((cy - r - g["y0"]) / cell)), 0)
        r1 = min(int(math.floor((cy + r - g["y0"]) / cell)), g["nrows"] - 1)
        if c0 > c1 or r0 > r1:
            return np.zeros(0, np.int64)
        base = g["cells_at"]
        rows_idx = np.arange(r0, r1 + 1) * g["ncols"] + base
        lo = np.asarray(self.start[rows_idx + c0])
        hi = np.asarray(self.start[rows_idx + c1 + 1])
        spans = [(a, b) for a, b in zip(lo.tolist(), hi.tolist()) if b > a]
        if not spans:
            return np.zeros(0, np.int64)
        sel = np.concatenate([np.arange(a, b) for a, b in spans])
        xy = np.asarray(self.xy[sel])
        d2 = (xy[:, 0] - cx) ** 2 + (xy[:, 1] - cy) ** 2
        hit = sel[d2 <= r * r]
        return np.sort(np.asarray(self.rows[hit], np.int64))
