"""From the best-matching tiles to a position, a confidence and an honest accuracy: one frame's own estimate.

One frame (:func:`estimate_fix`):
- the top match's tile centre is the anchor; matches whose centres lie within ``cluster_m`` (default: the
  anchor's footprint) of it form the consistent cluster; the position is their similarity-weighted mean
  (weights ``exp((s - s1) / temperature)``);
- the confidence is the margin between the top score and the best score of a *geographically distant*
  match (outside the cluster): a view that matches two far-apart places equally well is ambiguous, whatever
  its top score. ``confidence = 1 - exp(-margin / margin_scale)``, scaled down when the top score itself is
  low (below ``min_score``). With no distant match among the k, the margin is taken to the k-th score;
- the accuracy (metres, a 1-sigma-like radius) starts at half the stride-limited tile error, a quarter of
  the footprint, adds the cluster's spread, and is divided by the confidence (so it grows as trust falls).

This estimate is the record's ``raw`` (what one frame says); the fix the outputs send comes from the track
over the map (:mod:`runtime.localisation.track`), which alone decides what is trusted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Fix:
    t: float
    x: float = math.nan  # database CRS (metres)
    y: float = math.nan
    lat: float = math.nan
    lon: float = math.nan
    confidence: float = 0.0  # 0..1
    accuracy_m: float = math.inf
    trusted: bool = False
    source_rows: list[int] = field(default_factory=list)  # database rows behind the estimate, best first
    scores: list[float] = field(default_factory=list)
    reason: str = ""  # why not trusted ("low confidence", "jump 2400 m in 1.0 s", "no geometry", ...)
    label: str = ""  # label of the top match (the class id for databases without geometry)
    # Filled by the sequential localiser (map filter) and registration; NaN where unknown.
    vel_n_mps: float = math.nan  # velocity over ground, north (m/s)
    vel_e_mps: float = math.nan  # velocity over ground, east (m/s)
    speed_accuracy_mps: float = math.nan  # 1-sigma of the horizontal speed
    cov_xy: tuple[float, float, float] | None = None  # (var_x, var_y, cov_xy) in m^2, database CRS (x east, y north)
    r95_m: float = math.nan  # radius holding the true position with 95 % probability (m)
    yaw_deg: float = math.nan  # compass heading of the image top measured from the imagery (registration)
    capture_time_unix: float | None = None  # when the frame was captured (UTC unix seconds), if known

    @property
    def has_position(self) -> bool:
        return math.isfinite(self.x) and math.isfinite(self.y)

    def as_dict(self) -> dict:
        def num(v, nd):
            return round(float(v), nd) if math.isfinite(v) else None

        return {"t": self.t, "x": num(self.x, 2), "y": num(self.y, 2), "lat": num(self.lat, 8),
                "lon": num(self.lon, 8), "confidence": round(float(self.confidence), 4),
                "accuracy_m": num(self.accuracy_m, 1), "trusted": bool(self.trusted), "reason": self.reason,
                "label": self.label, "vel_n_mps": num(self.vel_n_mps, 3), "vel_e_mps": num(self.vel_e_mps, 3),
                "speed_accuracy_mps": num(self.speed_accuracy_mps, 3), "r95_m": num(self.r95_m, 1),
                "yaw_deg": num(self.yaw_deg, 2)}


def estimate_fix(
    db,
    indices_row,
    scores_row,
    t: float,
    *,
    cluster_m: float | None = None,
    temperature: float = 0.02,
    margin_scale: float = 0.05,
    min_score: float = 0.0,
) -> Fix:
    """One frame's fix from its top-k matches (rows of ``db`` and cosine scores, best first)."""
    idx = np.asarray(indices_row, np.int64)
    sc = np.asarray(scores_row, np.float64)
    ok = idx >= 0
    idx, sc = idx[ok], sc[ok]
    if len(idx) == 0:
        return Fix(t=t, reason="no candidate tiles")
    ent = db.entries[idx]
    label = str(ent["label"][0])
    if not bool(ent["has_geo"][0]):
        return Fix(t=t, source_rows=idx.tolist(), scores=sc.tolist(), reason="no geometry", label=label,
                   confidence=0.0)
    xy = np.stack([ent["x"], ent["y"]], 1).astype(np.float64)
    geo = np.asarray(ent["has_geo"], bool) & np.all(np.isfinite(xy), axis=1)
    footprint = float(ent["footprint_m"][0]) if np.isfinite(ent["footprint_m"][0]) else 0.0
    radius = float(cluster_m) if cluster_m is not None else max(footprint, 1.0)
    d = np.linalg.norm(xy - xy[0], axis=1)
    in_cluster = geo & (d <= radius)
    in_cluster[0] = True
    w = np.exp((sc - sc[0]) / max(temperature, 1e-6)) * in_cluster
    w /= w.sum()
    x, y = float(w @ xy[:, 0]), float(w @ xy[:, 1])
    lat = float(w @ np.asarray(ent["lat"], np.float64)) if np.all(np.isfinite(ent["lat"][in_cluster])) else math.nan
    lon = float(w @ np.asarray(ent["lon"], np.float64)) if np.all(np.isfinite(ent["lon"][in_cluster])) else math.nan
    distant = geo & ~in_cluster
    if distant.any():
        margin = float(sc[0] - sc[np.flatnonzero(distant)[0]])
    else:
        margin = float(sc[0] - sc[-1]) if len(sc) > 1 else 0.0
    confidence = 1.0 - math.exp(-max(margin, 0.0) / max(margin_scale, 1e-9))
    if sc[0] < min_score:
        confidence *= max(0.0, 1.0 - (min_score - sc[0]) / max(abs(min_score), 1e-6))
    spread = math.sqrt(float(w @ np.sum((xy - [x, y]) ** 2, axis=1)))
    base = max(footprint * 0.25, 1.0)
    accuracy = (base + spread) / max(confidence, 0.05)
    return Fix(t=t, x=x, y=y, lat=lat, lon=lon, confidence=float(confidence), accuracy_m=float(accuracy),
               trusted=False, source_rows=idx[in_cluster].tolist(), scores=sc[in_cluster].tolist(),
               label=label, reason="not filtered")
