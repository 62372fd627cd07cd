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
   between registrations (a 10 m barometer bias at 150 m put the fixes 36 m behind). Two registrations
   far enough apart (``height_span_m`` of odometry) measure the ratio of the ground really covered to the
   ground odometry measured, which is that k; the height is multiplied by it, smoothed (``GAIN`` in log),
   bounded to ``MAX_FACTOR`` either way, and the odometry's displacement projected on the registered one
   so a turn does not count as scale. Off with ``height_from_map`` false.
"""

from __future__ import annotations

import math

import numpy as np

GAIN = 0.5  # weight of each new measurement of the scale (in log)
MAX_FACTOR = 1.5  # the height is never corrected by more than this factor either way
MAX_RATIO = 1.6  # a ratio beyond this is a wrong registration, not the barometer


class HeightAboveGround:
    """Each keyframe's height above ground (module docstring). ``db``: the tile database (its terrain, if
    any); ``cfg``: the :class:`~runtime.localisation.config.LocalizerConfig`."""

    def __init__(self, cfg, db):
        from tiles.terrain import open_database_terrain

        self.cfg = cfg
        self.terrain = open_database_terrain(db) if getattr(db, "path", None) is not None else None
        self.reset()

    def reset(self) -> None:
        self.factor = 1.0
        self._moved = np.zeros(2)  # odometry (east, north) since the last registration
        self._last: tuple[float, float] | None = None
        self._broken = False

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

    def moved(self, motion) -> None:
        """A keyframe's odometry (in the heights this class gave)."""
        if motion is None or not motion.ok:
            self._broken = True
            return
        self._moved += (motion.dx_e_m, motion.dy_n_m)

    def registered(self, x: float, y: float) -> None:
        """A registration fused at (x, y): with the previous one, a measurement of the height's scale."""
        if not self.cfg.height_from_map:
            return
        if self._last is not None and not self._broken:
            odo = self._moved
            n2 = float(odo @ odo)
            if math.sqrt(n2) >= self.cfg.height_span_m:
                ratio = float(np.array([x - self._last[0], y - self._last[1]]) @ odo) / n2
                if 1.0 / MAX_RATIO < ratio < MAX_RATIO:
                    f = self.factor * ratio**GAIN
                    self.factor = min(MAX_FACTOR, max(1.0 / MAX_FACTOR, f))
            else:
                return  # too short a span: keep measuring from the earlier registration
        self._last, self._moved, self._broken = (float(x), float(y)), np.zeros(2), False
