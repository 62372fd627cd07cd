"""The track over the map: the layer's map filter, the registered point that verified it, and the fix.

:class:`MapTrack` is the state the :class:`~runtime.localisation.localizer.Localizer` keeps between frames
besides odometry, heading and registration (which the Localizer owns and runs). Per frame the Localizer

1. moves it with the odometry's motion (:meth:`MapTrack.predict`: the posterior of the layer's
   :class:`runtime.localisation.map_filter.MapFilter`, and the registered point carried along);
2. weighs it by the frame's similarities to the tiles it asks for (:meth:`rows_to_score`, :meth:`update`;
   the likelihood calibrated for this model at export, from the bundle's manifest);
3. gives it a verified registration when there is one (:meth:`register`: a precise position measurement);
4. asks it for the fix the outputs send (:meth:`fix`: position, covariance, 95 % radius, velocity,
   trusted or not and why).

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

Registrations. A verified registration is a precise measurement, and a look-alike one is not rare (held-out
flights, a registration a second: 5 of 64 verified ones 50 m to 3.5 km off). It confirms the registered
track when it lands within the 95 % gate of its own noise and the last registration's (and the
odometry's scale error of each step between); one that lands farther, within the gate widened by the
height's scale and an earlier disagreement, moves the track (Kalman) and keeps half their squared
distance in its variance until another confirms; one beyond that replaces the track the same way. The
track as it was before such a dispute (its rival, carried by the same odometry) is kept: a registration that
confirms the rival settles the dispute against the one that started it. Only a confirmation moves the map
filter to the track,
and a fix is trusted only while the filter's mean and the registered track agree: a look-alike that moved
the track untrusts it until the next registration settles which was off.

A layer change (the altitude moved to another layer) starts that layer's filter from the last trusted
position, with its uncertainty; before any trusted fix, from the prior position when one is given.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace

import numpy as np

from runtime.localisation.fix import Fix
from runtime.localisation.geo import R95_PER_SIGMA, latlon_at, xy_at
from runtime.localisation.map_filter import MapFilter

logger = logging.getLogger(__name__)
# the odometry's displacement is scaled by the altitude: a barometric altitude a few % off scales it as much
ODOMETRY_SCALE_SIGMA = 0.02


def step_scale_variance(dx_e_m: float, dy_n_m: float) -> float:
    """The variance per axis (m^2) the altitude's scale error adds to one step (``ODOMETRY_SCALE_SIGMA`` of
    its distance)."""
    return (ODOMETRY_SCALE_SIGMA * math.hypot(dx_e_m, dy_n_m)) ** 2


def within_gate(a: np.ndarray, b: np.ndarray, var: float) -> bool:
    """Whether two points whose difference has ``var`` per axis agree at 95 % (chi-square, 2 degrees of
    freedom)."""
    return float(np.sum((a - b) ** 2)) <= R95_PER_SIGMA**2 * var


def kalman_fuse(prior: np.ndarray, prior_var: float, point: np.ndarray, noise_var: float):
    """(fused point, its variance per axis, the gain) of a prior and a measurement, both isotropic."""
    k = prior_var / (prior_var + noise_var)
    return prior + k * (point - prior), prior_var * noise_var / (prior_var + noise_var), k


def motion_variance(motion) -> float:
    """The variance per axis (m^2) an odometry step adds to a point it carries: its fit's own residual and
    the altitude's scale error (:func:`step_scale_variance`)."""
    ms = motion.sigma_m if math.isfinite(motion.sigma_m) else 0.0
    return ms**2 + step_scale_variance(motion.dx_e_m, motion.dy_n_m)


class MapTrack:
    """The map filter of the current layer and the registered track (module docstring).

    ``cfg``: the :class:`~runtime.localisation.config.LocalizerConfig` (``map_filter``, ``max_speed_mps``,
    ``coast_s``, ``map_sigma_m``, the prior); ``verify``: trust needs a verified registration;
    ``fix_r95_scale``: the reported radius's calibrated scale (export.calibrate_accuracy)."""

    def __init__(self, db, likelihood, cfg, *, verify: bool, fix_r95_scale: float = 1.0):
        self.db, self.lik, self.cfg = db, likelihood, cfg
        self.verify = bool(verify)
        self.fix_r95_scale = float(fix_r95_scale)
        self.prior = None if cfg.prior_lat is None else (cfg.prior_lat, cfg.prior_lon, cfg.prior_sigma_m)
        self.reset()

    def reset(self) -> None:
        self.layer: int | None = None
        self.filter: MapFilter | None = None
        self.last_trusted: Fix | None = None
        self.verified: np.ndarray | None = None  # the registered point the track was verified at, carried along
        self.verified_var = 0.0  # its variance per axis (m^2): registration's, grown by each step carrying it
        self.carried_m = np.zeros(2)  # the ground it was carried since (a height's bias scales all of it at once)
        self.disputed_var = 0.0  # part of verified_var: a registration's disagreement no other one settled yet
        self.rival = None  # while disputed: (the track before the dispute, carried; its registered_var, moved_var)
        self.registered_var = 0.0  # the last registration's own variance per axis (after fusion), and what
        self.moved_var = 0.0  # the odometry's scale added since, step by step: a next one's gate (_register_point)
        self.scale_sigma = 0.0  # the odometry's scale uncertainty from the height's (1 sigma, relative)
        self.chain_ok = False  # carried by odometry alone since that registration (and bland frames: coasted)
        self.confirmed = False  # a second registration confirmed the registered track (a first may be a look-alike)
        self.coasting = False  # the verified point is carried by the filter's velocity over bland ground
        self.t = -math.inf  # the flight's clock at this keyframe
        self.t_carried = -math.inf  # the last keyframe the odometry or a registration carried the point
        self.trusted = False  # the last frame's fix was trusted

    # ---- what the Localizer asks --------------------------------------------------------------------
    @property
    def footprint_m(self) -> float:
        return self.filter.grid.footprint_m

    @property
    def carried(self) -> bool:
        """A trusted track carried by the odometry from a verified registration (registration may run less
        often: ``registration_tracking_s``)."""
        return self.trusted and self.verified is not None and self.chain_ok

    def modes(self, n: int) -> list[tuple[float, float, float]]:
        """The posterior's ``n`` strongest peaks (x, y, share): where registration looks first."""
        return self.filter.modes(n) if self.filter is not None else []

    def restart_at(self, x: float, y: float, sigma_m: float, t: float | None) -> bool:
        """Start the layer's filter again as a Gaussian at (x, y) (the no-compass heading just locked on
        registrations: what the filter gathered came from frames embedded at guessed rotations). ``t``: the
        time that point belongs to when the filter already moved to it (None: before this frame's predict).
        False when the point lies off the layer."""
        mf = self.filter
        if mf is None:
            return False
        try:
            mf.reset(prior=(x, y, max(float(sigma_m), mf.cell_m)), t=t)
        except ValueError:  # the point lies off this layer's grid
            return False
        return True

    # ---- per frame --------------------------------------------------------------------------------------
    def predict(self, t: float, layer: int, motion, scale_sigma: float = 0.0) -> None:
        """Move the track to time ``t`` on ``layer`` with the odometry's east/north ``motion`` (or None);
        ``scale_sigma``: how uncertain the odometry's metres are as a whole (the height's relative
        uncertainty: a barometer's bias is one error for every step, so its variance grows with the square
        of the ground carried, not with the steps)."""
        self.scale_sigma, self.t = float(scale_sigma), float(t)
        mf = self._filter_for(layer)
        mf.predict(t, motion)
        self._carry_verified(motion)

    def rows_to_score(self):
        return self.filter.rows_to_score()

    def update(self, rows, scores, offset_en_m=(0.0, 0.0)) -> None:
        self.filter.update(rows, scores, offset_en_m)

    def register(self, reg) -> None:
        """A verified registration of this frame (a position measurement of the filter)."""
        self.filter.update_position(reg.x, reg.y, reg.sigma_m)

    def fix(self, t: float, reg, compass: bool) -> tuple[Fix, object]:
        """The fix of this frame (``reg``: its registration or None) and the filter's estimate."""
        est = self.filter.estimate()
        if self._note_verification(est, reg):
            est = self.filter.estimate()
        fix = self._fix(t, est, reg, compass)
        self.trusted = bool(fix.trusted)
        return fix, est

    # ---- internals --------------------------------------------------------------------------------------
    def _filter_for(self, layer: int) -> MapFilter:
        if self.filter is not None and layer == self.layer:
            return self.filter
        mf = MapFilter(self.db, layer, self.cfg.map_filter, self.lik, max_speed_mps=self.cfg.max_speed_mps)
        prior = self._start_point(mf)
        if prior is not None:
            try:
                mf.reset(prior=prior)
            except ValueError:  # the position lies off this layer: start global
                pass
        self.layer, self.filter, self.verified = layer, mf, None
        return mf

    def _start_point(self, mf: MapFilter):
        """Where a new layer's filter starts: the last trusted fix, else the prior, else anywhere (None)."""
        last = self.last_trusted
        if last is not None and last.has_position and math.isfinite(last.r95_m):
            return last.x, last.y, last.r95_m / R95_PER_SIGMA
        if self.prior is None:
            return None
        lat, lon, sigma = self.prior
        x, y = xy_at(self.db, mf.grid, lat, lon)
        gap = float(np.sqrt(np.min((mf.grid.x - x) ** 2 + (mf.grid.y - y) ** 2)))
        if gap <= 3.0 * sigma + mf.grid.footprint_m:
            return x, y, sigma
        logger.warning("the prior position %.6f, %.6f lies %.0f m from this layer's nearest tile (sigma %.0f m): "
                       "starting anywhere on the map", lat, lon, gap, sigma)
        return None

    def _carry_verified(self, motion) -> None:
        if self.verified is None:
            return
        ok = motion is not None and motion.ok
        step = np.array([motion.dx_e_m, motion.dy_n_m]) if ok else self.filter.last_displacement
        self.verified = self.verified + step
        self.carried_m = self.carried_m + step
        self.moved_var += step_scale_variance(*step)
        if self.rival is not None:
            self.rival = (self.rival[0] + step, self.rival[1], self.rival[2] + step_scale_variance(*step))
        if ok:
            self.verified_var += motion_variance(motion)
            self.coasting, self.t_carried = False, self.t
            return
        # no odometry: moved as the filter predicted (its velocity). Over bland ground (too few features: no
        # picture contradicts the track) the chain coasts for coast_s of the flight's clock since the odometry
        # or a registration last carried it; any other failure (a picture that jumped, a gap) breaks it: trust
        # needs the filter's own evidence again until a registration
        self.verified_var += self.filter.last_sigma_m**2
        if motion is not None and motion.bland and self.t - self.t_carried <= self.cfg.coast_s + 1e-6:
            self.coasting = True
        else:
            self.chain_ok = False

    def _note_verification(self, est, reg) -> bool:
        """Whether the registered track moved the filter (which then holds a new estimate)."""
        fp = self.filter.grid.footprint_m
        if reg is not None and reg.ok and math.hypot(reg.x - est.x, reg.y - est.y) <= est.r95_m + fp:
            confirmed = self._register_point(np.array([reg.x, reg.y]), float(reg.sigma_m) ** 2)
            self.chain_ok, self.coasting, self.t_carried = True, False, self.t
            return confirmed and self._filter_follows(est)
        elif self.verified is not None and math.hypot(est.x - self.verified[0], est.y - self.verified[1]) > fp:
            self.verified = None  # the track moved away from where it was verified
        return False

    def _filter_follows(self, est) -> bool:
        """The filter moved by the odometry as the registered track was, so the scale error of a height off
        by metres carries its mode away just as far; its cells (a quarter stride) and the few metres of blur
        per frame keep it there when a verified registration lands beyond its spread (measured: a 10 m
        barometer bias at 200 m, a registration 3 m from the truth, the filter's mean 78 m off with a 15 m
        radius, the fix kept there for four frames). The registered track (fused, its radius grown by the
        disagreement) is where the filter's posterior moves, its velocity kept; False when it agrees already.
        Only a registration that confirmed the registered track moves it: a first one, or one that moved the
        track farther than their own noise explains, may be a look-alike (a 150 m frame's peak on a field
        edge 60 m off; 8 % of the held-out flights' verified registrations at 1 a second, up to 160 m off
        within the gate), and the mean stays."""
        vx, vy = float(self.verified[0]), float(self.verified[1])
        if math.hypot(vx - est.x, vy - est.y) <= self._agree_m(est):
            return False
        return self.filter.move_to(vx, vy, math.sqrt(self.verified_var))

    def _agree_m(self, est) -> float:
        """How far a point may lie from the filter's mean and agree with it: one grid cell (a quarter stride:
        a sharp measurement is pulled towards a cell centre) or half the filter's 95 % radius."""
        return max(self.filter.cell_m, 0.5 * est.r95_m)

    def _settles_for_rival(self, point: np.ndarray, noise_var: float) -> bool:
        """While the track is disputed, the track as it was before the registration that disputed it (the
        rival, carried by the same odometry) is kept. A registration that confirms the rival, by the same
        gate that confirms the track, shows the disputing one was the look-alike: the track restarts at the
        two's fusion and the dispute ends (measured: a look-alike 166 m off at 200 m, the next registration
        5 m from the truth fused with the look-alike's track kept a 180 m radius on fixes 5 m off for the rest
        of the flight). Only a registration confirms it: agreeing with the map filter's mean is not asked (its
        agreement is a grid cell wide, 22-43 m, where two registrations' gate is about 10 m)."""
        rival = self.rival
        if rival is None or self.disputed_var <= 0.0:
            return False
        old = rival[1] + rival[2]  # its registrations' noise and the odometry's since
        if not within_gate(point, rival[0], old + noise_var):
            return False
        self.verified, self.registered_var, _ = kalman_fuse(rival[0], old, point, noise_var)
        self.confirmed = True
        self.verified_var = self.registered_var + self.cfg.map_sigma_m**2
        self.carried_m, self.moved_var, self.disputed_var, self.rival = np.zeros(2), 0.0, 0.0, None
        return True

    def _register_point(self, point: np.ndarray, noise_var: float) -> bool:
        """A verified registration and the registered track (module docstring, "Registrations"). True when it
        confirmed the track: landed within the 95 % gate of the two registrations' own noise and the
        odometry's scale error of each step between (``ODOMETRY_SCALE_SIGMA``), a gate that neither the
        odometry's fit residuals (metres a frame when the attitude wobbles: a look-alike 40 m off passed),
        nor the height's scale over all that ground (a look-alike 52 m off passed after 2 km), nor an
        unsettled disagreement widen. Fused (Kalman) when within the gate of
        all the track's noise; a registration that fused without confirming keeps half their squared
        distance in the variance, as does one beyond that gate, which replaces the track."""
        map_var = self.cfg.map_sigma_m**2
        first = self.verified is None or not self.chain_ok
        if first:
            self.verified, self.verified_var, self.carried_m = point, noise_var + map_var, np.zeros(2)
            self.registered_var, self.moved_var, self.disputed_var, self.rival = noise_var, 0.0, 0.0, None
            self.confirmed = False
            return False
        if self._settles_for_rival(point, noise_var):
            return True
        if self.disputed_var <= 0.0:  # a dispute may start here: the track as it stands is its rival
            self.rival = (self.verified.copy(), self.registered_var, self.moved_var)
        prev, moved, self.registered_var, self.moved_var = self.registered_var, self.moved_var, noise_var, 0.0
        steps = max(self.verified_var - map_var - self.disputed_var, 1e-6)
        old_noise = steps + self.disputed_var + self._scale_var()
        d2 = float(np.sum((point - self.verified) ** 2))
        confirmed = within_gate(point, self.verified, prev + noise_var + moved)
        if within_gate(point, self.verified, old_noise + noise_var):
            self.verified, fused, k = kalman_fuse(self.verified, old_noise, point, noise_var)
            self.carried_m = (1.0 - k) * self.carried_m
            self.disputed_var = 0.0 if confirmed else d2 / 2.0
            self.rival = None if confirmed else self.rival
            self.confirmed = self.confirmed or confirmed
            self.registered_var = fused if confirmed else noise_var
            self.verified_var = fused + map_var + self.disputed_var
            return confirmed
        self.verified, self.disputed_var, self.carried_m = point, d2 / 2.0, np.zeros(2)
        self.verified_var = noise_var + map_var + self.disputed_var
        self.confirmed = False
        return False

    def _scale_var(self) -> float:
        """The variance per axis the height's scale adds to the registered track: one error for all the
        ground carried since its registration."""
        return (self.scale_sigma * float(np.hypot(*self.carried_m))) ** 2

    def _verified_on_map(self, est) -> bool:
        """A track that registration verified on this map and the odometry carried since (unbroken) is on the
        map: retrieval's doubt (``p_out``, frames that match nothing in particular) does not untrust it, nor
        do a few bland frames coasted through by the filter's velocity (the radius grows meanwhile), as long
        as the posterior on the map is one concentrated mode at the verified point. Retrieval's doubt only
        once a second registration confirmed the track: a first one may be a look-alike (measured: a weave at
        150 m over 2020, a first registration 69 m off, agreed over three frames, was trusted against the
        filter's doubt for 9 frames, reporting r95 10-16 m)."""
        doubts = (("off_map",) if self.confirmed else ()) + (("blind",) if self.coasting else ())
        if not (self.verify and self.verified is not None and self.chain_ok and est.doubt in doubts):
            return False
        cfg, fp = self.filter.cfg, self.filter.grid.footprint_m
        on_map = est.mass / max(1e-12, 1.0 - est.p_out)
        return on_map >= cfg.trust_mass and est.r95_m <= cfg.trust_r95_frac * fp

    def _position(self, est, compass: bool) -> tuple[float, float, float, tuple, float, bool]:
        """The fix's position, 95 % radius and covariance (before the calibrated scale): the registered point
        carried by the odometry (its variance grown by each step) while that chain holds and the filter agrees
        with it within one grid cell or half its 95 % radius; else the filter's mean and spread. The grid's
        cells are a quarter stride wide (43 m at 300 m): a measurement much sharper than a cell pulls the mean
        towards a cell centre (measured: a constant 16 m on a 300 m flight) and the spread cannot be below a
        cell's; a registration the filter does not follow (150 m, one frame's peak 61 m off on a calibration
        flight) keeps the mean. Without a compass the odometry is turned by a tracked heading whose drift
        moves the carried point sideways (measured: median errors 9 -> 18 m on a 200 m flight): the mean.
        The last items: how far the filter's mean and the registered track disagree (0 when they agree), and
        whether the position is the registered track's."""
        if self.verified is not None and self.chain_ok and compass:
            vx, vy = float(self.verified[0]), float(self.verified[1])
            d = math.hypot(vx - est.x, vy - est.y)
            if d <= self._agree_m(est):
                v = self.verified_var + self._scale_var()
                return vx, vy, R95_PER_SIGMA * math.sqrt(v), (v, v, 0.0), 0.0, True
            # the filter's mean, which the registered track disagrees with: one of them is off by about their
            # distance, and the radius says so (measured: a height 10 m off, the mean 62 m from the truth
            # reported within 41 m while the registered track, 93 m off, said 195 m)
            cxx, cyy, cxy = est.cov_xy
            r95 = R95_PER_SIGMA * math.sqrt((est.r95_m / R95_PER_SIGMA) ** 2 + d * d / 2.0)
            return float(est.x), float(est.y), r95, (cxx + d * d / 2.0, cyy + d * d / 2.0, cxy), d, False
        return float(est.x), float(est.y), float(est.r95_m), tuple(est.cov_xy), 0.0, False

    def _fix(self, t: float, est, reg, compass: bool) -> Fix:
        trusted, reason = bool(est.trusted), est.reason
        if not trusted and self._verified_on_map(est):
            trusted, reason = True, ""
        if trusted and self.verify and self.verified is None:
            trusted, reason = False, "not yet verified by registration to the map"
        x, y, r95, cov, disagree_m, registered = self._position(est, compass)
        if trusted and disagree_m > 0.0:  # one of the two is off: a registration, or the odometry's metres
            trusted, reason = False, (f"the map filter and the registered track disagree by {disagree_m:.0f} m: "
                                      "waiting for a registration that settles it")
        lat, lon = latlon_at(self.db, self.filter.grid, x, y)
        # the reported radius: the registered track's, scaled as calibrated on flights through this chain, or
        # the posterior's as it is: every trusted fix of the calibration flights is the registered track's, so
        # the scale says nothing of the posterior's (measured: 10 deg of attitude noise, the odometry broken,
        # the filter's own fixes 26-34 m off reporting 25 m scaled, 45 m as it is); accuracy_m is the
        # 1-sigma-like radius (GPS_INPUT's horiz_accuracy)
        k = self.fix_r95_scale if registered else 1.0
        r95 = r95 * k
        fix = Fix(t=t, x=x, y=y, lat=lat, lon=lon, confidence=float(est.mass), accuracy_m=r95 / 2.45,
                  trusted=trusted, reason="" if trusted else reason, vel_n_mps=est.vel_n_mps,
                  vel_e_mps=est.vel_e_mps, speed_accuracy_mps=est.speed_accuracy_mps,
                  cov_xy=tuple(float(v) * k * k for v in cov), r95_m=r95)
        if reg is not None and reg.ok and math.isfinite(reg.heading_deg):
            fix = replace(fix, yaw_deg=float(reg.heading_deg))
        if trusted:
            self.last_trusted = fix
        return fix
