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
   between registrations (a 10 m barometer bias at 150 m put the fixes 36 m behind). Two ways measure k:
   a registration by features fits the frame's scale on the map (ground seen / ground expected); and two
   verified registrations at least ``SPAN_M`` of odometry apart give the ground really covered against the
   ground odometry measured (the odometry's displacement projected on the registered one, so a turn does
   not count as scale). Correlation alone (a frame a few tens of map pixels across: 150 m on a 5 m/px map)
   cannot tell a few per cent of scale (a 300 m flight matched as well 8 % too high), hence the span. One
   wrong registration makes a wrong span (measured: a registration 69 m off, then a right one, read as a
   10 % scale), so a span counts only when the next one agrees with it within ``AGREE``. The height is
   multiplied by each measurement (by ``GAIN`` in log), bounded to ``MAX_FACTOR`` either way;
   until then, what the height's uncertainty (``height_sigma_m``) does to the odometry is in the fix's
   radius (:class:`runtime.localisation.track.MapTrack`). Off with ``height_from_map`` false.
"""

from __future__ import annotations

import math

import numpy as np

GAIN = 0.7  # weight of each measurement of the scale, in log
SPAN_M = 300.0  # odometry between two registrations that measure the scale by the ground covered
MAX_RATIO = 1.18  # a ratio beyond this is a wrong registration, not the height (a barometer errs by a few %)
MAX_ACROSS = 0.1  # nor is a registered displacement this far (a share of the span) across the odometry's
AGREE = 0.03  # two consecutive spans agreeing within this (in log) measure the scale
MAX_FACTOR = 1.3  # the height is never corrected by more than this factor either way
NOISE = 0.02  # a scale within 2 % of one is the fit's noise


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
        self.factor = 1.0
        self._moved = np.zeros(2)  # odometry (east, north) since the last registration
        self._last: tuple[float, float] | None = None
        self._broken = False
        self._span_ratio: float | None = None  # the last span's ratio, waiting for the next to agree

    def of(self, telemetry, near_xy=None) -> tuple[float | None, str | None]:
        """(height above ground m, where it came from) for a frame's telemetry; ``near_xy``: the last fix's
        map position (the ground under it)."""
        h, src = telemetry.altitude_m, telemetry.altitude_source
        msl = getattr(telemetry, "altitude_msl_m", None)
        if self.terrain is not None and msl is not None and near_xy is not None:
            g = float(self.terrain.height_at(np.array([near_xy[0]]), np.array([near_xy[1]]))[0])
            if math.isfinite(g):
                h, src = float(msl) - g, "msl - terrain"
        if h is None or not math.isfinite(h):
            return None, src
        if self.factor != 1.0:
            src = f"{src} x{self.factor:.3f} (map)"
        return float(h) * self.factor, src

    def moved(self, motion, coasted=None) -> None:
        """A keyframe's odometry (the drone's, in the heights this class gave); without one, ``coasted``:
        the track's move by its velocity (the odometry's too, so as wrong in scale), else the span breaks."""
        if motion is not None and motion.ok:
            self._moved += (motion.dx_e_m, motion.dy_n_m)
        elif coasted is not None and np.all(np.isfinite(coasted)):
            self._moved += np.asarray(coasted, float)
        else:
            self._broken = True

    def registered(self, reg) -> None:
        """A verified registration fused (carried to now): its fitted scale, and the ground covered since
        the previous one, correct the height (module docstring)."""
        if not self.cfg.height_from_map:
            return
        s = float(reg.scale)
        if reg.method == "features" and math.isfinite(s) and s > 0 and abs(math.log(s)) >= NOISE:
            self._scale_by(s)
        odo = self._moved
        n = float(np.hypot(*odo))
        if self._last is not None and not self._broken and n < SPAN_M:
            return  # too short a span: measured from the earlier registration later
        if self._last is not None and not self._broken:
            d = np.array([reg.x - self._last[0], reg.y - self._last[1]])
            ratio = float(d @ odo) / (n * n)
            across = abs(float(d[0] * odo[1] - d[1] * odo[0])) / n
            plausible = 1.0 / MAX_RATIO < ratio < MAX_RATIO and across <= MAX_ACROSS * n
            before, self._span_ratio = self._span_ratio, ratio if plausible else None
            if plausible and before is not None and abs(math.log(ratio / before)) < AGREE:
                both = math.sqrt(ratio * before)
                if abs(math.log(both)) >= NOISE:
                    self._scale_by(both)
                self._span_ratio = None
        self._last, self._moved, self._broken = (float(reg.x), float(reg.y)), np.zeros(2), False

    def _scale_by(self, k: float) -> None:
        self.factor = min(MAX_FACTOR, max(1.0 / MAX_FACTOR, self.factor * k**GAIN))
