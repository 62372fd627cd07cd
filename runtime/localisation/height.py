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
   between registrations (a 10 m barometer bias at 150 m put the fixes 36 m behind). A registration by
   features fits the frame's scale on the map (ground seen / ground expected): that is k, and the height is
   multiplied by it (by half, in log, per registration; bounded to ``MAX_FACTOR`` either way). Correlation
   (a frame a few tens of map pixels across: 150 m on a 5 m/px map) cannot tell a few per cent of scale
   (measured: a 300 m flight matched as well at 8 % too high), so its registrations leave the height as
   it is; what the height's uncertainty (``height_sigma_m``) does to the odometry is then in the fix's
   radius (:class:`runtime.localisation.track.MapTrack`). Off with ``height_from_map`` false.
"""

from __future__ import annotations

import math

import numpy as np

GAIN = 0.5  # weight of each fitted scale, in log
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

    def registered(self, reg) -> None:
        """A verified registration fused: its scale corrects the height (module docstring)."""
        s = float(reg.scale)
        if (not self.cfg.height_from_map or reg.method != "features" or not (math.isfinite(s) and s > 0)
                or abs(math.log(s)) < NOISE):
            return
        f = self.factor * s**GAIN
        self.factor = min(MAX_FACTOR, max(1.0 / MAX_FACTOR, f))
