"""From frames to a track: odometry, the map filter and registration, fused per altitude layer.

:class:`MapFusion` is the sequential part of the :class:`~runtime.localisation.localizer.Localizer`: per frame it

1. measures the motion since the previous frame (:class:`runtime.localisation.odometry.VisualOdometry`, on the north-up
   frame);
2. moves the posterior of the layer's :class:`runtime.localisation.map_filter.MapFilter` with it, scores the tiles the
   filter asks for (near the posterior when it is concentrated, the whole layer otherwise) and weighs the
   posterior by them (the likelihood calibrated for this model at export, from the bundle's manifest);
3. when the database carries the map imagery, registers the frame to the map around the posterior's two
   strongest peaks (the evidence of every frame so far: right far more often than one frame's retrieval,
   measured: first fix at 300 m after 1-2 frames instead of 18-54) and then the frame's top retrieved tiles,
   three windows at most (:class:`runtime.localisation.registration.Registrar`): a verified registration is a precise
   position measurement, and it measures the heading;
4. turns the filter's estimate into the :class:`~runtime.localisation.fix.Fix` the outputs send: position,
   covariance, 95 % radius, velocity, trusted or not and why.

Trust. The filter trusts a concentrated, unimodal posterior that is on the map. Off the map, look-alike
ground can still form such a posterior along a track that agrees with the odometry (measured: 22 of 480
off-map frames, docs/results/filter.md). Registration is the check that retrieval cannot fool: with
``verify_lock`` (and imagery in the database) a track is trusted only once a registration has verified
the filter's mode, and stays trusted while the mode stays within one footprint of that verified point
carried along by the odometry (by the filter's velocity where the odometry fails). A track that jumps
elsewhere must be verified again. While the chain from the registration is odometry alone, the filter's
doubt that the drone is over the map at all (``p_out``: frames that match nothing in particular) does not
untrust it: registration showed it is, and only a picture that jumps can take it elsewhere. Once the
odometry failed (a jump, a blind stretch), the filter's own trust rule applies again until the next
registration: a kidnapped track loses trust as its retrieval evidence fades.

A layer change (the altitude moved to another layer) starts that layer's filter from the last trusted
position, with its uncertainty.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import replace

import numpy as np

from runtime.localisation.fix import Fix
from runtime.localisation.frame_agreement import AgreementConfig, FrameAgreement
from runtime.localisation.map_filter import MapFilter, MapFilterConfig
from runtime.localisation.odometry import OdometryConfig, VisualOdometry, frame_texture
from runtime.search.searcher import Matches

logger = logging.getLogger(__name__)
MEASURE = object()  # MapFusion.step's default: measure the odometry on the north-up frame itself
# the odometry's displacement is scaled by the altitude: a barometric altitude a few % off scales it as much
ODOMETRY_SCALE_SIGMA = 0.02
R95_PER_SIGMA = math.sqrt(-2.0 * math.log(0.05))  # 2-D isotropic Gaussian: 95 % radius / per-axis sigma


class MapFusion:
    def __init__(self, db, searcher, likelihood, *, filter_cfg: MapFilterConfig, odometry_cfg: OdometryConfig,
                 hfov_deg: float, use_odometry: bool = True, registrar=None, registration_every: int = 1,
                 registration_every_tracking: int = 1, verify_lock: bool = True, fix_r95_scale: float = 1.0,
                 agreement: AgreementConfig | None = None, coast_frames: int = 0, map_sigma_m: float = 0.0,
                 prior: tuple[float, float, float] | None = None):
        self.db, self.searcher, self.lik = db, searcher, likelihood
        self.filter_cfg, self.hfov_deg = filter_cfg, float(hfov_deg)
        self.odometry = VisualOdometry(odometry_cfg) if use_odometry else None
        self.registrar = registrar
        self.registration_every = max(1, int(registration_every))
        self.registration_every_tracking = max(1, int(registration_every_tracking))
        self.candidate_modes = 2  # posterior peaks tried by registration before the top retrieved tiles
        self.since_registration = 0  # frames since registration was last tried
        self.tracking = False  # the last frame's fix was trusted
        self.verify_lock = bool(verify_lock and registrar is not None)
        self.fix_r95_scale = float(fix_r95_scale)  # calibrated at export (export.calibrate_accuracy)
        self.layer: int | None = None
        self.filter: MapFilter | None = None
        self.last_trusted: Fix | None = None
        self.verified: np.ndarray | None = None  # the registered point the track was verified at, carried along
        self.verified_var = 0.0  # its variance per axis (m^2): registration's, grown by each step carrying it
        self.map_sigma_m = float(map_sigma_m)  # the map's georeferencing against the ground the camera sees
        self.chain_ok = False  # carried by odometry alone since that registration (and bland frames: coasted)
        self.coast_frames = max(0, int(coast_frames))  # bland frames a verified chain coasts through
        self.coasted = 0  # bland frames in a row the verified point was carried by the filter's velocity
        self.frames = 0
        self.last_registration = None  # the last frame's Registration (None: not attempted)
        # registrations too small on the map to verify alone, confirmed over frames (None: off)
        self.agreement = FrameAgreement(agreement) if agreement is not None and registrar is not None else None
        self.prior = prior  # (lat, lon, sigma_m) known at the start: the filter starts there until a trusted fix

    def reset(self) -> None:
        self.layer, self.filter, self.last_trusted, self.verified, self.frames = None, None, None, None, 0
        self.since_registration, self.tracking, self.coasted = 0, False, 0
        if self.odometry is not None:
            self.odometry.reset()
        if self.agreement is not None:
            self.agreement.reset()

    # ---- per frame ------------------------------------------------------------------------------
    def step(self, t: float, up, raw_image, emb: np.ndarray, layer: int, altitude_m: float,
             heading_deg: float | None, k: int, *, motion=MEASURE, heading_tol_deg: float | None = None,
             register_rows=None, compass: bool = True) -> tuple[Fix, Matches, dict]:
        """One frame (``up``: north-up image or None when only the embedding is known); returns the fused fix,
        the frame's top-``k`` tiles of the layer, and what happened (odometry, rows scored, registration,
        ``search_ms``) for the record. ``motion``: the east/north motion the caller measured (a drone without
        a compass: :mod:`runtime.localisation.heading_track`), else measured here on ``up``; ``heading_tol_deg``: how far
        around ``heading_deg`` registration searches; ``register_rows``: the tiles registration tries after
        the filter's mode (default: the frame's top-k); ``compass``: False when the heading is the tracked one
        (no compass), then the fix is the filter's mean (see ``_position``)."""
        mf = self._filter_for(layer)
        if motion is MEASURE:
            motion = None
            if self.odometry is not None and up is not None:
                motion = self.odometry.update(up, t, altitude_m, self.hfov_deg, None)
        mf.predict(t, motion)
        self._carry_verified(motion)
        if self.agreement is not None:
            self.agreement.carry(motion)
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
        fix = self._fix(t, est, reg, compass)
        self.frames += 1
        self.tracking = bool(fix.trusted)
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
        last, prior = self.last_trusted, None
        if last is not None and last.has_position and math.isfinite(last.r95_m):
            prior = (last.x, last.y, last.r95_m / 2.45)
        elif self.prior is not None:
            lat, lon, sigma = self.prior
            x, y = xy_at(self.db, mf.grid, lat, lon)
            gap = float(np.sqrt(np.min((mf.grid.x - x) ** 2 + (mf.grid.y - y) ** 2)))
            if gap <= 3.0 * sigma + mf.grid.footprint_m:
                prior = (x, y, sigma)
            else:
                logger.warning("the prior position %.6f, %.6f lies %.0f m from this layer's nearest tile (sigma "
                               "%.0f m): starting anywhere on the map", lat, lon, gap, sigma)
        if prior is not None:
            try:
                mf.reset(prior=prior)
            except ValueError:  # the position lies off this layer: start global
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
        tracking = self.tracking and self.verified is not None and self.chain_ok  # trusted on the last frame
        every = self.registration_every_tracking if tracking else self.registration_every
        self.since_registration += 1
        if self.registrar is None or raw_image is None or self.since_registration < every:
            return None
        self.since_registration = 0
        cands = []
        if self.filter is not None:  # the posterior's peaks (evidence of every frame so far), then this frame's
            cands += [(x, y) for x, y, _ in self.filter.modes(self.candidate_modes)]
        ent = self.db.entries
        cands += [(float(ent["x"][r]), float(ent["y"][r])) for r in top_rows if r >= 0]
        if not cands:
            return None
        tried: list = []
        reg = self.registrar.register_candidates(raw_image, altitude_m, self.hfov_deg, cands, heading_deg,
                                                 max_tries=3, heading_tol_deg=heading_tol_deg, tried_out=tried)
        if reg.ok or self.agreement is None:
            return reg
        footprint = 2.0 * altitude_m * math.tan(math.radians(self.hfov_deg) / 2.0)
        confirmed = self.agreement.offer(tried, self.registrar.imagery.gsd_m, footprint)
        return reg if confirmed is None else confirmed

    def _carry_verified(self, motion) -> None:
        if self.verified is None:
            return
        if motion is not None and motion.ok:
            self.verified = self.verified + (motion.dx_e_m, motion.dy_n_m)
            ms = motion.sigma_m if math.isfinite(motion.sigma_m) else 0.0
            self.verified_var += ms**2 + (ODOMETRY_SCALE_SIGMA * math.hypot(motion.dx_e_m, motion.dy_n_m)) ** 2
            self.coasted = 0
            return
        # no odometry: moved as the filter predicted (its velocity). Over bland ground (too few features: no
        # picture contradicts the track) the chain coasts for coast_frames; any other failure (a picture that
        # jumped, a gap) breaks it: trust needs the filter's own evidence again until a registration
        self.verified = self.verified + self.filter.last_displacement
        self.verified_var += self.filter.last_sigma_m**2
        if motion is not None and motion.bland and self.coasted < self.coast_frames:
            self.coasted += 1
        else:
            self.chain_ok = False

    def _note_verification(self, est, reg) -> None:
        fp = self.filter.grid.footprint_m
        if reg is not None and reg.ok and math.hypot(reg.x - est.x, reg.y - est.y) <= est.r95_m + fp:
            self._register_point(np.array([reg.x, reg.y]), float(reg.sigma_m) ** 2)
            self.chain_ok, self.coasted = True, 0
        elif self.verified is not None and math.hypot(est.x - self.verified[0], est.y - self.verified[1]) > fp:
            self.verified = None  # the track moved away from where it was verified

    def _register_point(self, point: np.ndarray, noise_var: float) -> None:
        """A verified registration and the registered track: fused (Kalman, the registration's own noise; the
        map's georeferencing is shared by both and stays) when they agree within the 95 % gate of their
        spreads; when they do not, one of them is off by about their distance, which enters the variance
        (measured on a demo flight: a 200 m registration 24 m off replaced a track 3.5 m off, its radius
        claiming 14 m)."""
        map_var = self.map_sigma_m**2
        if self.verified is None or not self.chain_ok:
            self.verified, self.verified_var = point, noise_var + map_var
            return
        old_noise = max(self.verified_var - map_var, 1e-6)
        d2 = float(np.sum((point - self.verified) ** 2))
        if d2 <= R95_PER_SIGMA**2 * (old_noise + noise_var):  # chi-square, 2 degrees of freedom, 95 %
            k = old_noise / (old_noise + noise_var)
            self.verified = self.verified + k * (point - self.verified)
            self.verified_var = old_noise * noise_var / (old_noise + noise_var) + map_var
        else:
            self.verified, self.verified_var = point, noise_var + map_var + d2 / 2.0

    def _verified_on_map(self, est) -> bool:
        """A track that registration verified on this map and the odometry carried since (unbroken) is on the
        map: retrieval's doubt (``p_out``, frames that match nothing in particular) does not untrust it, nor
        do a few bland frames coasted through by the filter's velocity (the radius grows meanwhile), as long
        as the posterior on the map is one concentrated mode at the verified point."""
        doubts = ("off_map",) + (("blind",) if self.coasted else ())
        if not (self.verify_lock and self.verified is not None and self.chain_ok and est.doubt in doubts):
            return False
        cfg, fp = self.filter.cfg, self.filter.grid.footprint_m
        on_map = est.mass / max(1e-12, 1.0 - est.p_out)
        return on_map >= cfg.trust_mass and est.r95_m <= cfg.trust_r95_frac * fp

    def _position(self, est, compass: bool) -> tuple[float, float, float, tuple]:
        """The fix's position, 95 % radius and covariance (before the calibrated scale): the registered point
        carried by the odometry (its variance grown by each step) while that chain holds and the filter agrees
        with it within one grid cell or half its 95 % radius; else the filter's mean and spread. The grid's
        cells are a quarter stride wide (43 m at 300 m): a measurement much sharper than a cell pulls the mean
        towards a cell centre (measured: a constant 16 m on a 300 m flight) and the spread cannot be below a
        cell's; a registration the filter does not follow (150 m, one frame's peak 61 m off on a calibration
        flight) keeps the mean. Without a compass the odometry is turned by a tracked heading whose drift
        moves the carried point sideways (measured: median errors 9 -> 18 m on a 200 m flight): the mean."""
        if self.verified is not None and self.chain_ok and compass:
            vx, vy = float(self.verified[0]), float(self.verified[1])
            if math.hypot(vx - est.x, vy - est.y) <= max(self.filter.cell_m, 0.5 * est.r95_m):
                v = self.verified_var
                return vx, vy, R95_PER_SIGMA * math.sqrt(v), (v, v, 0.0)
        return float(est.x), float(est.y), float(est.r95_m), tuple(est.cov_xy)

    def _fix(self, t: float, est, reg, compass: bool) -> Fix:
        trusted, reason = bool(est.trusted), est.reason
        if not trusted and self._verified_on_map(est):
            trusted, reason = True, ""
        if trusted and self.verify_lock and self.verified is None:
            trusted, reason = False, "not yet verified by registration to the map"
        x, y, r95, cov = self._position(est, compass)
        lat, lon = latlon_at(self.db, self.filter.grid, x, y)
        # the reported radius: the registered track's or the posterior's (_position), scaled as calibrated on
        # flights through this chain; accuracy_m is a 1-sigma-like radius (GPS_INPUT's horiz_accuracy): r95 / 2.45
        k = self.fix_r95_scale
        r95 = r95 * k
        fix = Fix(t=t, x=x, y=y, lat=lat, lon=lon, confidence=float(est.mass),
                  accuracy_m=r95 / 2.45, trusted=trusted, reason="" if trusted else reason,
                  vel_n_mps=est.vel_n_mps, vel_e_mps=est.vel_e_mps, speed_accuracy_mps=est.speed_accuracy_mps,
                  cov_xy=tuple(float(v) * k * k for v in cov),
                  r95_m=r95)
        if reg is not None and reg.ok and math.isfinite(reg.heading_deg):
            fix = replace(fix, yaw_deg=float(reg.heading_deg))
        if trusted:
            self.last_trusted = fix
        return fix


def xy_at(db, grid, lat: float, lon: float) -> tuple[float, float]:
    """Metric x, y of a WGS84 point: the inverse of :func:`latlon_at`, an affine fit of the tile centres
    nearest to it in degrees (longitude scaled by the latitude's cosine)."""
    ent = db.entries
    la = np.asarray(ent["lat"][grid.rows], np.float64)
    lo = np.asarray(ent["lon"][grid.rows], np.float64)
    d2 = (la - lat) ** 2 + ((lo - lon) * math.cos(math.radians(lat))) ** 2
    near = np.argsort(np.where(np.isfinite(d2), d2, np.inf))[:6]
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
    d2 = (grid.x - x) ** 2 + (grid.y - y) ** 2
    near = np.argsort(d2)[:6]
    if len(near) < 3:
        return math.nan, math.nan
    rows = grid.rows[near]
    ent = db.entries
    lat = np.asarray(ent["lat"][rows], np.float64)
    lon = np.asarray(ent["lon"][rows], np.float64)
    if not (np.all(np.isfinite(lat)) and np.all(np.isfinite(lon))):
        return math.nan, math.nan
    return _affine_at(grid.x[near], grid.y[near], (lat, lon), x, y)
