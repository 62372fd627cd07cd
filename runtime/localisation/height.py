"""The height above ground the chain works at: the layer, the view's scale, odometry's metres, registration.

The autopilot knows its height only roughly. Its altitude above the take-off point is barometric (a bias
of metres, a drift of metres per hour) and says nothing of the ground's relief; its altitude above mean
sea level needs the ground's height to become a height above ground. :class:`HeightAboveGround` gives
each keyframe its best height:

1. **Terrain**: when the tile database carries a DEM (``python -m export --dem``) and the frame's
   telemetry an altitude above mean sea level, the height is that altitude less the ground's height under
   the last fix. Otherwise the altitude above the take-off point stands for it (flat ground: the README
   says so).
2. **Scale from the map**: every metre odometry measures is ``pixels x height / focal``: with the height
   k times too small, the drone seems to fly k times too slowly, and the track falls behind the drone
   between registrations (a 10 m barometer bias at 150 m put the fixes 36 m behind). The chain estimates
   log k as a Kalman filter of one state: its prior is the height's uncertainty (``height_sigma_m`` over
   the height: 1.5 % at 200 m), and two kinds of measurement correct it. A registration by features fits
   the frame's scale on the map (ground seen / ground expected: a map fine enough, the 0.15 m map). Two
   verified registrations at least ``SPAN_M`` of odometry apart give the ground really covered against the
   ground odometry measured (the odometry's displacement projected on the registered one, so a turn does
   not count as scale), as precise as the two registrations' noise over the span (their ``sigma_m``: 5 m
   over 300 m is 2.4 %). Correlation alone (a frame a few tens of map pixels across: 150 m on a 5 m/px
   map) cannot tell a few per cent of scale (a 300 m flight matched as well 8 % too high), hence the span.
   One wrong registration makes a wrong span (measured: a registration 69 m off, then a right one, read as
   a 10 % scale): a span farther than ``GATE`` sigmas from the estimate, or beyond ``MAX_RATIO``, or
   across the odometry, measures nothing; and it does not cut the span of the registrations before it: the
   last few registrations (``ANCHORS``) each keep the odometry since, and a new one is measured from the
   latest that it agrees with (measured: a 10 m barometer bias at 200 m, a look-alike registration 2 km
   off between two right ones 1.5 km apart; from the look-alike the span measured nothing and the height
   stayed 5 % high for the rest of the flight). Every span weighs by its own precision, so a long one corrects
   most of the error at once (measured on a held-out flight at 200 m with a barometer 10 m high: one span
   of 1563 m corrected the height by 5.3 %, the truth's error being 4.8 %; the rule before, two consecutive
   spans within 3 %, waited for a second span that never came). The scale's uncertainty grows by
   ``DRIFT_PER_KM`` with the ground flown (a barometer drifts, the ground is not flat) and is what the
   fix's radius grows by with the ground carried since a registration
   (:class:`runtime.localisation.track.MapTrack`); the height is never corrected by more than
   ``MAX_FACTOR`` either way. Off with ``height_from_map`` false: the prior alone.
"""

from __future__ import annotations

import math

import numpy as np

from runtime.localisation.prediction import predict_fix

SPAN_M = 100.0  # odometry between two registrations that measure the scale by the ground covered
MAX_RATIO = 1.18  # a ratio beyond this is a wrong registration, not the height (a barometer errs by a few %)
MAX_ACROSS = 0.1  # nor is a registered displacement this far (a share of the span) across the odometry's
GATE = 3.0  # a measurement this many sigmas (its own and the estimate's) from the estimate is an outlier
DRIFT_PER_KM = 0.01  # the scale's uncertainty grows as a random walk of this (relative, 1 sigma) over each km
FEATURES_SIGMA = 0.02  # a registration by features fits the scale to about this (relative, 1 sigma)
MAX_FACTOR = 1.3  # the height is never corrected by more than this factor either way
ANCHORS = 3  # registrations a span may start from: one look-alike among them does not cut the span
MAX_CARRY_S = 5.0  # the last fix is carried by its velocity to the frame's time for at most this long


def ground_point(last_fix, t: float):
    """Where the drone is at ``t``, for the ground's height under it: the last trusted fix carried by its
    velocity (the fix is a keyframe old: 40 m at 40 m/s and 1 frame/s, metres of height on a hillside;
    measured over 50 m of relief: 8 -> 1 trusted fixes more than 25 m off), None without one."""
    if last_fix is None or not last_fix.trusted:
        return None
    p = predict_fix(last_fix, t) if 0.0 < t - last_fix.t <= MAX_CARRY_S else last_fix  # no velocity: stays
    return p.x, p.y


class HeightAboveGround:
    """Each keyframe's height above ground (module docstring). ``db``: the tile database (its terrain, if
    any); ``cfg``: the :class:`~runtime.localisation.config.LocalizerConfig`; ``terrain``: ground heights
    to use instead of the database's (a replay over rendered relief)."""

    def __init__(self, cfg, db, terrain=None):
        from tiles.terrain import open_database_terrain

        self.cfg = cfg
        self.terrain = terrain
        if terrain is None and getattr(db, "path", None) is not None:
            self.terrain = open_database_terrain(db)
        self.reset()

    def reset(self) -> None:
        self.log_k = 0.0  # the height's correction, in log (the module docstring's Kalman state)
        self.var: float | None = None  # its variance; None until the first height gives the prior
        # the last registrations a span may start from: [x, y, sigma_m, odometry (east, north) since]
        self._anchors: list[list] = []

    @property
    def factor(self) -> float:
        return math.exp(self.log_k)

    def scale_sigma(self, height_m: float | None) -> float:
        """The odometry's scale uncertainty (relative, 1 sigma): the prior of a height ``height_m`` until
        measurements narrowed it."""
        if self.var is not None:
            return math.sqrt(self.var)
        return self.cfg.height_sigma_m / height_m if height_m and height_m > 0 else 0.0

    def of(self, telemetry, near_xy=None) -> tuple[float | None, str | None]:
        """(height above ground m, where it came from) for a frame's telemetry; ``near_xy``: the drone's map
        position as last known (:func:`ground_point`; the ground under it)."""
        h, src = telemetry.altitude_m, telemetry.altitude_source
        msl = getattr(telemetry, "altitude_msl_m", None)
        if self.terrain is not None and msl is not None and near_xy is not None:
            g = float(self.terrain.height_at(np.array([near_xy[0]]), np.array([near_xy[1]]))[0])
            if math.isfinite(g):
                h, src = float(msl) - g, "msl - terrain"
        if h is None or not math.isfinite(h):
            return None, src
        if self.var is None and h > 0:
            self.var = (self.cfg.height_sigma_m / float(h)) ** 2
        if self.log_k != 0.0:
            src = f"{src} x{self.factor:.3f} (map)"
        return float(h) * self.factor, src

    def moved(self, motion, coasted=None) -> None:
        """A keyframe's odometry (the drone's, in the heights this class gave); without one, ``coasted``:
        the track's move by its velocity (the odometry's too, so as wrong in scale), else the span breaks."""
        step = None
        if motion is not None and motion.ok:
            step = (motion.dx_e_m, motion.dy_n_m)
        elif coasted is not None and np.all(np.isfinite(coasted)):
            step = tuple(np.asarray(coasted, float))
        if step is None:
            self._anchors = []  # a span the odometry broke measures nothing
            return
        for a in self._anchors:
            a[3] = a[3] + step
        if self.var is not None:
            self.var += DRIFT_PER_KM**2 * math.hypot(*step) / 1000.0  # a random walk along the ground

    def registered(self, reg) -> None:
        """A verified registration fused (carried to now): its fitted scale, and the ground covered since
        the previous one, correct the height (module docstring)."""
        if not self.cfg.height_from_map or self.var is None:
            return
        s = float(reg.scale)
        if reg.method == "features" and math.isfinite(s) and s > 0:
            self._measure(math.log(s), FEATURES_SIGMA**2)
        here = [float(reg.x), float(reg.y), float(reg.sigma_m), np.zeros(2)]
        if not math.isfinite(here[2]):
            self._anchors = []
            return
        if self._anchors and float(np.hypot(*self._anchors[-1][3])) < SPAN_M:
            return  # too short a span: measured from the earlier registration later
        for a in reversed(self._anchors):
            span = self._span(a, here)
            if span is not None and self._measure(*span):
                self._anchors = [here]
                return
        self._anchors = (self._anchors + [here])[-ANCHORS:]

    @staticmethod
    def _span(a: list, here: list) -> tuple[float, float] | None:
        """(log of the ground covered over the ground odometry measured, its variance) from the registration
        ``a`` to ``here``; None when the span is too short, or too far from the odometry to be the height."""
        odo = a[3]
        n = float(np.hypot(*odo))
        if n < SPAN_M:
            return None
        d = np.array([here[0] - a[0], here[1] - a[1]])
        ratio = float(d @ odo) / (n * n)
        across = abs(float(d[0] * odo[1] - d[1] * odo[0])) / n
        if not (1.0 / MAX_RATIO < ratio < MAX_RATIO and across <= MAX_ACROSS * n):
            return None
        return math.log(ratio), (here[2] ** 2 + a[2] ** 2) / (n * n)

    def _measure(self, z: float, r: float) -> bool:
        """One measurement ``z`` of log k's residual (relative to the correction already applied) of
        variance ``r``: a Kalman update, unless it lies beyond ``GATE`` sigmas (False)."""
        if z * z > GATE**2 * (self.var + r):
            return False
        gain = self.var / (self.var + r)
        self.log_k = min(math.log(MAX_FACTOR), max(-math.log(MAX_FACTOR), self.log_k + gain * z))
        self.var *= 1.0 - gain
        return True
