"""A layer's tile grid: where the map filter reads each tile's similarity.

:class:`LayerGrid` puts the tiles of one altitude layer of a :class:`tiles.db.TileDatabase` on their regular
grid (tile centres every ``stride_m``; holes where a tile had too little valid imagery), so that one
frame's cosine similarities become an image of scores that can be sampled anywhere by bilinear
interpolation, and tiles near a point can be listed without a search.
"""

from __future__ import annotations

import numpy as np


class LayerGrid:
    """The tiles of one layer on their regular grid (module docstring)."""

    def __init__(self, db, layer: int | str):
        sl = db.layer_slice(layer)
        lay = db.layers[layer] if isinstance(layer, int) else db.layers[[x["name"] for x in db.layers].index(layer)]
        ent = db.entries[sl]
        if len(ent) == 0:
            raise ValueError(f"layer {layer!r} of {db.path} holds no tiles")
        if not bool(np.all(ent["has_geo"])):
            raise ValueError(f"layer {layer!r} of {db.path} has tiles without positions: the map filter needs a "
                             "map's tile database (python -m export --tiles MAP.tif)")
        self.rows = np.arange(sl.start, sl.stop, dtype=np.int64)
        self.x = np.asarray(ent["x"], np.float64)
        self.y = np.asarray(ent["y"], np.float64)
        self.footprint_m = float(lay.get("footprint_m") or float(np.median(ent["footprint_m"])))
        self.stride_m = float(lay.get("stride_m") or _infer_stride(self.x, self.y))
        self.x0, self.y1 = float(self.x.min()), float(self.y.max())  # west edge, north edge (tile centres)
        self.col = np.rint((self.x - self.x0) / self.stride_m).astype(np.int64)
        self.row = np.rint((self.y1 - self.y) / self.stride_m).astype(np.int64)
        off = np.hypot(self.x0 + self.col * self.stride_m - self.x, self.y1 - self.row * self.stride_m - self.y)
        if float(off.max()) > 0.25 * self.stride_m:
            raise ValueError(f"layer {layer!r}: tile centres are not on a regular {self.stride_m:.1f} m grid "
                             f"(one is {off.max():.1f} m off); the map filter needs the export's tile grid")
        self.shape = (int(self.row.max()) + 1, int(self.col.max()) + 1)
        self.index = np.full(self.shape, -1, np.int64)  # local tile index per grid node, -1 = hole
        self.index[self.row, self.col] = np.arange(len(self.rows))
        self.x1, self.y0 = self.x0 + (self.shape[1] - 1) * self.stride_m, self.y1 - (self.shape[0] - 1) * self.stride_m

    def __len__(self) -> int:
        return len(self.rows)

    def local(self, rows: np.ndarray) -> np.ndarray:
        """Database rows of this layer -> local tile indices (an error for rows of another layer)."""
        loc = np.asarray(rows, np.int64) - self.rows[0]
        if len(loc) and (loc.min() < 0 or loc.max() >= len(self.rows)):
            raise ValueError("rows passed to the map filter are not all in its layer: score the rows it asked for")
        return loc

    def score_image(self, rows: np.ndarray | None, scores: np.ndarray, fill: float) -> np.ndarray:
        """(nrows, ncols) float32 similarities on the tile grid; ``fill`` at holes and unscored tiles."""
        img = np.full(self.shape, fill, np.float32)
        loc = np.arange(len(self.rows)) if rows is None else self.local(rows)
        img[self.row[loc], self.col[loc]] = np.asarray(scores, np.float32).ravel()
        return img

    def rows_near(self, x: float, y: float, radius_m: float) -> np.ndarray:
        """Database rows of the tiles whose centre lies within ``radius_m`` of (x, y)."""
        near = (self.x - x) ** 2 + (self.y - y) ** 2 <= radius_m**2
        return self.rows[near]


def _infer_stride(x: np.ndarray, y: np.ndarray) -> float:
    d = np.concatenate([np.diff(np.unique(np.round(x, 3))), np.diff(np.unique(np.round(y, 3)))])
    d = d[d > 1e-3]
    if not len(d):
        raise ValueError("cannot infer the tile stride of a layer with one tile; set the layer's stride_m")
    return float(d.min())
