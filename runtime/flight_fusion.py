"""From frames to a track: odometry, the map filter and registration, fused per altitude layer.

:class:`MapFusion` is the sequential part of the :class:`~runtime.localizer.Localizer`: per frame it

1. measures the motion since the previous frame (:class:`runtime.odometry.VisualOdometry`, on the north-up
   frame);
2. moves the posterior of the layer's :class:`runtime.map_filter.MapFilter` with it, scores the tiles the
   filter asks for (near the posterior when it is concentrated, the whole layer otherwise) and weighs the
   posterior by them (the likelihood calibrated for this model at export, from the bundle's manifest);
3. when the database carries the map imagery, registers the frame to the map around the filter's mode and
   the top retrieved tiles (:class:`runtime.registration.Registrar`): a verified registration is a precise
   position measurement, and it measures the heading;
4. turns the filter's estimate into the :class:`~runtime.position.Fix` the outputs send: position,
   covariance, 95 % radius, velocity, trusted or not and why.

Trust. The filter trusts a concentrated, unimodal posterior that is on the map. Off the map, look-alike
ground can still form such a posterior along a track that agrees with the odometry (measured: 22 of 480
off-map frames, docs/results/filter.md). Registration is the check that retrieval cannot fool: with
``verify_lock`` (and imagery in the database) a track is trusted only once a registration has verified
the filter's mode, and stays trusted while the mode stays within one footprint of that verified point
carried along by the odometry. A track that jumps elsewhere must be verified again.

A layer change (the altitude moved to another layer) starts that layer's filter from the last trusted
position, with its uncertainty.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import replace

import numpy as np

from .map_filter import MapFilter, MapFilterConfig
from .odometry import OdometryConfig, VisualOdometry, frame_texture
from .position import Fix
from .search import Matches

logger = logging.getLogger(__name__)
MEASURE = object()  # MapFusion.step's default: measure the odometry on the north-up frame itself


class MapFusion:
    def __init__(self, db, searcher, likelihood, *, filter_cfg: MapFilterConfig, odometry_cfg: OdometryConfig,
                 hfov_deg: float, use_odometry: bool = True, registrar=None, registration_every: int = 1,
                 verify_lock: bool = True):
        self.db, self.searcher, self.lik = db, searcher, likelihood
        self.filter_cfg, self.hfov_deg = filter_cfg, float(hfov_deg)
        self.odometry = VisualOdometry(odometry_cfg) if use_odometry else None
        self.registrar = registrar
        self.registration_every = max(1, int(registration_every))
        self.verify_lock = bool(verify_lock and registrar is not None)
        self.layer: int | None = None
        self.filter: MapFilter | None = None
        self.last_trusted: Fix | None = None
        self.verified: np.ndarray | None = None  # the registered point the track was verified at, carried along
        self.frames = 0
        self.last_registration = None  # the last frame's Registration (None: not attempted)

    def reset(self) -> None:
        self.layer, self.filter, self.last_trusted, self.verified, self.frames = None, None, None, None, 0
        if self.odometry is not None:
            self.odometry.reset()

    # ---- per frame ------------------------------------------------------------------------------
    def step(self, t: float, up, raw_image, emb: np.ndarray, layer: int, altitude_m: float,
             heading_deg: float | None, k: int, *, motion=MEASURE, heading_tol_deg: float | None = None,
             register_rows=None) -> tuple[Fix, Matches, dict]:
        """One frame (``up``: north-up image or None when only the embedding is known); returns the fused fix,
        the frame's top-``k`` tiles of the layer, and what happened (odometry, rows scored, registration,
        ``search_ms``) for the record. ``motion``: the east/north motion the caller measured (a drone without
        a compass: :mod:`runtime.heading_track`), else measured here on ``up``; ``heading_tol_deg``: how far
        around ``heading_deg`` registration searches; ``register_rows``: the tiles registration tries after
        the filter's mode (default: the frame's top-k)."""
        mf = self._filter_for(layer)
        if motion is MEASURE:
            motion = None
            if self.odometry is not None and up is not None:
                motion = self.odometry.update(up, t, altitude_m, self.hfov_deg, None)
        mf.predict(t, motion)
        self._carry_verified(motion)
        rows = mf.rows_to_score()
        t0 = time.perf_counter()
        scores, matches = self._scores(emb, layer, rows, k)
        search_ms = (time.perf_counter() - t0) * 1e3
        top_rows = matches.indices[0]
        textured = up is None or frame_texture(up) >= mf.cfg.min_texture
        if textured:
            mf.update(rows, scores)
        reg_rows = top_rows if register_rows is None else register_rows
        reg = self._register(raw_image, altitude_m, heading_deg, reg_rows, heading_tol_deg) if textured else None
        self.last_registration = reg
        if reg is not None and reg.ok:
            mf.update_position(reg.x, reg.y, reg.sigma_m)
        est = mf.estimate()
        self._note_verification(est, reg)
        fix = self._fix(t, est, reg)
        self.frames += 1
        info = {"odometry_ok": bool(motion is not None and motion.ok),
                "odometry_reason": motion.reason if motion is not None else "off",
                "rows_scored": len(mf.grid) if rows is None else len(rows),
                "registered": None if reg is None else bool(reg.ok),
                "registration_reason": None if reg is None else reg.reason,
                "p_out": round(float(est.p_out), 4), "mass": round(float(est.mass), 4), "search_ms": search_ms}
        return fix, matches, info

    def _filter_for(self, layer: int) -> MapFilter:
        if self.filter is not None and layer == self.layer:
            return self.filter
        mf = MapFilter(self.db, layer, self.filter_cfg, self.lik)
        last = self.last_trusted
        if last is not None and last.has_position and math.isfinite(last.r95_m):
            try:
                mf.reset(prior=(last.x, last.y, last.r95_m / 2.45))
            except ValueError:  # the last position lies off this layer: start global
                pass
        self.layer, self.filter, self.verified = layer, mf, None
        return mf

    def _scores(self, emb: np.ndarray, layer: int, rows, k: int) -> tuple[np.ndarray, Matches]:
        """The similarities the filter asked for, and the frame's top-k of the layer: derived from them when the
        filter scored the whole layer, else a global search (approximate on big layers)."""
        q = np.asarray(emb, np.float32).reshape(-1)
        if rows is None:
            scores = self.searcher.score_layer(q, layer)
            return scores, self.searcher.top_k(scores, layer, k)
        return self.searcher.score_rows(q, rows), self.searcher.search_global(q, k=k, layer=layer)

    def _register(self, raw_image, altitude_m: float, heading_deg: float | None, top_rows, heading_tol_deg=None):
        if self.registrar is None or raw_image is None or self.frames % self.registration_every:
            return None
        cands = []
        if self.filter is not None:
            mx, my, mass = self.filter._cluster()[:3]
            if mass > 0.2:
                cands.append((mx, my))
        ent = self.db.entries
        cands += [(float(ent["x"][r]), float(ent["y"][r])) for r in top_rows if r >= 0]
        if not cands:
            return None
        return self.registrar.register_candidates(raw_image, altitude_m, self.hfov_deg, cands, heading_deg,
                                                  max_tries=3, heading_tol_deg=heading_tol_deg)

    def _carry_verified(self, motion) -> None:
        if self.verified is None:
            return
        if motion is not None and motion.ok:  # without odometry it stays; the distance check decides
            self.verified = self.verified + (motion.dx_e_m, motion.dy_n_m)

    def _note_verification(self, est, reg) -> None:
        fp = self.filter.grid.footprint_m
        if reg is not None and reg.ok and math.hypot(reg.x - est.x, reg.y - est.y) <= est.r95_m + fp:
            self.verified = np.array([reg.x, reg.y])
        elif self.verified is not None and math.hypot(est.x - self.verified[0], est.y - self.verified[1]) > fp:
            self.verified = None  # the track moved away from where it was verified

    def _fix(self, t: float, est, reg) -> Fix:
        trusted, reason = bool(est.trusted), est.reason
        if trusted and self.verify_lock and self.verified is None:
            trusted, reason = False, "not yet verified by registration to the map"
        lat, lon = latlon_at(self.db, self.filter.grid, est.x, est.y)
        # accuracy_m is a 1-sigma-like radius (what GPS_INPUT's horiz_accuracy means): r95 / 2.45
        fix = Fix(t=t, x=est.x, y=est.y, lat=lat, lon=lon, confidence=float(est.mass),
                  accuracy_m=float(est.r95_m) / 2.45, trusted=trusted, reason="" if trusted else reason,
                  vel_n_mps=est.vel_n_mps, vel_e_mps=est.vel_e_mps, speed_accuracy_mps=est.speed_accuracy_mps,
                  cov_xy=tuple(float(v) for v in est.cov_xy), r95_m=float(est.r95_m))
        if reg is not None and reg.ok and math.isfinite(reg.heading_deg):
            fix = replace(fix, yaw_deg=float(reg.heading_deg))
        if trusted:
            self.last_trusted = fix
        return fix


def latlon_at(db, grid, x: float, y: float) -> tuple[float, float]:
    """WGS84 of a metric point, from an affine fit of the nearest tile centres' own lat/lon (no pyproj on
    board; exact to centimetres over a few tiles)."""
    if not (math.isfinite(x) and math.isfinite(y)):
        return math.nan, math.nan
    d2 = (grid.x - x) ** 2 + (grid.y - y) ** 2
    near = np.argsort(d2)[:6]
    if len(near) < 3:
        return math.nan, math.nan
    rows = grid.rows[near]
    ent = db.entries
    a = np.stack([grid.x[near], grid.y[near], np.ones(len(near))], 1)
    lat = np.asarray(ent["lat"][rows], np.float64)
    lon = np.asarray(ent["lon"][rows], np.float64)
    if not (np.all(np.isfinite(lat)) and np.all(np.isfinite(lon))):
        return math.nan, math.nan
    coef_lat = np.linalg.lstsq(a, lat, rcond=None)[0]
    coef_lon = np.linalg.lstsq(a, lon, rcond=None)[0]
    p = np.array([x, y, 1.0])
    return float(p @ coef_lat), float(p @ coef_lon)
