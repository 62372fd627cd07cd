"""What the map filter knows of the map and of the model: a layer's tile grid, and the likelihood.

:class:`LayerGrid` puts the tiles of one altitude layer of a :class:`tiles.db.TileDatabase` on their regular
grid (tile centres every ``stride_m``; holes where a tile had too little valid imagery), so that one
frame's cosine similarities become an image of scores that can be sampled anywhere by bilinear
interpolation, and tiles near a point can be listed without a search.

:class:`Likelihood` turns a similarity into a log likelihood ratio "this frame was taken here" against
"this frame is of somewhere else"::

    log LR(s) = clip((s - offset) / temperature, -clip_low, +clip)

``offset`` is the similarity at which both are equally likely and ``temperature`` how fast the evidence
grows with the similarity. Both depend on the model (how its similarities of true and false matches are
distributed), so they are fitted per model at export on held-out queries (``export.calibrate_likelihood``)
and stored in the bundle manifest under ``"likelihood"``; :meth:`Likelihood.from_manifest` reads them.
A bundle without them gets :data:`FALLBACK` (logged): values measured for the demo's lite0 model, far from
right for another model. ``centre="median"`` subtracts the frame's median similarity first (a frame of
fields is similar to every field; what counts is how far a tile stands out).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, fields

import numpy as np

log = logging.getLogger(__name__)

CENTRES = ("none", "median")


@dataclass(frozen=True)
class Likelihood:
    temperature: float
    offset: float
    centre: str = "median"  # none | median: subtract the frame's median similarity first
    clip: float = 6.0  # bound on a frame's log LR for a place (one odd frame cannot lock the filter)
    clip_low: float = 6.0  # bound on its evidence against a place (a kidnapping must show at once)
    r95_scale: float = 1.0  # the filter's 95 % radius is multiplied by this (calibrated)
    source: str = "fallback"  # "bundle" when read from a manifest

    def __post_init__(self):
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"likelihood temperature must be > 0, got {self.temperature}; re-run the calibration")
        if self.centre not in CENTRES:
            raise ValueError(f"likelihood centre {self.centre!r} is not one of {CENTRES}")
        if not (self.clip > 0 and self.clip_low > 0 and self.r95_scale > 0 and math.isfinite(self.offset)):
            raise ValueError(f"likelihood clip, r95_scale must be > 0 and offset finite: {self}")

    def log_lr(self, scores: np.ndarray, reference: float) -> np.ndarray:
        """Log likelihood ratios of ``scores`` (reference: the frame's median similarity)."""
        s = np.asarray(scores, np.float32)
        if self.centre == "median":
            s = s - np.float32(reference)
        return np.clip((s - np.float32(self.offset)) / np.float32(self.temperature), -self.clip_low, self.clip)

    @staticmethod
    def fix_r95_scale(manifest: dict | None, registration: bool) -> float:
        """The calibrated scale of the fixes' reported 95 % radius (export.calibrate_accuracy), when it was
        fitted with the same registration setting as now; 1 otherwise."""
        acc = ((manifest or {}).get("likelihood") or {}).get("fix_accuracy") or {}
        if "r95_scale" not in acc:
            return 1.0
        if bool(acc.get("registration")) != bool(registration):
            log.info("the fix accuracy was calibrated %s registration and now it is %s: reported radius unscaled",
                     "with" if acc.get("registration") else "without", "on" if registration else "off")
            return 1.0
        return float(acc["r95_scale"])

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("source")
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = "bundle") -> Likelihood:
        names = {f.name for f in fields(cls)} - {"source"}
        missing = {"temperature", "offset"} - set(d)
        if missing:
            raise ValueError(f"likelihood calibration lacks {sorted(missing)}: re-run `python -m export` to calibrate")
        return cls(**{k: v for k, v in d.items() if k in names}, source=source)

    @classmethod
    def from_manifest(cls, manifest: dict | None) -> Likelihood:
        """The bundle's calibrated likelihood, or :data:`FALLBACK` (with a warning) when it has none."""
        d = (manifest or {}).get("likelihood")
        if not d:
            log.warning("the model bundle has no calibrated likelihood: using the fallback %s (measured for the "
                        "demo's lite0 model); re-export with calibration for trustworthy accuracy", FALLBACK)
            return FALLBACK
        return cls.from_dict(d)


# Used only when a bundle carries no calibration: what the export-time calibration fitted for the demo's
# trained lite0 model (flights from NAIP 2010/2012/2014 over the 2018 map); see docs/results/filter.md.
FALLBACK = Likelihood(temperature=0.068, offset=0.129, centre="median", clip=2.0, clip_low=6.0, r95_scale=1.13)


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
