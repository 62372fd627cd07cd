"""The altitude above mean sea level and the vertical velocity the autopilot outputs send.

The localiser measures nothing vertical: the height comes from elsewhere, and an autopilot needs it as an
altitude above mean sea level (ArduPilot takes its EKF origin's height from the GPS altitude: without one
it is 0 m; PX4's EKF2 refuses a GNSS whose ``epv`` exceeds ``EKF2_REQ_EPV``, 5 m). The sources, one chosen by
``altitude_msl_from``:

- ``home``: the take-off point's MSL altitude (``home_alt_msl_m``: surveyed, or read from a map) plus the
  height above it: the autopilot's ``GLOBAL_POSITION_INT.relative_alt`` (its barometric height above home)
  while fresh, else the height the frames were flown at (``--altitude-m`` or the autopilot's, over a flat
  site). Vertical velocity: the autopilot's ``GLOBAL_POSITION_INT.vz`` while fresh, else the change of
  that height between frames.
- ``autopilot``: the autopilot's own ``GLOBAL_POSITION_INT.alt`` and ``vz`` (meaningful when its EKF has an
  origin from another source: a GPS lost in flight, an origin set by the ground station).
- ``none``: unknown; each protocol says so (``GPS_INPUT`` ALT/VEL_VERT ignored, UBX ``vAcc`` 1000 m).
- ``auto`` (the default): ``home`` when ``home_alt_msl_m`` is given, else ``none``.

``altitude_msl_sigma_m`` is the 1-sigma of the altitude sent (the home altitude's error and the
barometer's drift over a flight together); every vertical accuracy field carries it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SOURCES = ("auto", "home", "autopilot", "none")
HEIGHT_GAIN = 0.5  # weight of each new height change in the vertical velocity from frame heights
MAX_EXTRAPOLATION_S = 2.0  # a frame's height is carried on by its rate for at most this long


@dataclass(frozen=True)
class Vertical:
    alt_msl_m: float | None = None  # metres above mean sea level
    v_acc_m: float | None = None  # its 1-sigma
    vel_d_mps: float | None = None  # vertical velocity, positive down (NED)
    source: str = "none"


class VerticalSource:
    """MSL altitude and vertical velocity at any instant (module docstring). ``reader``: an
    :class:`runtime.inputs.autopilot.AutopilotReader` (its ``above_home()`` and ``msl()``), or None."""

    def __init__(self, mode: str = "auto", *, home_alt_msl_m: float | None = None, sigma_m: float = 3.0,
                 reader=None):
        if mode not in SOURCES:
            raise ValueError(f"altitude_msl_from {mode!r} is not one of {SOURCES}")
        if mode == "home" and home_alt_msl_m is None:
            raise ValueError("--altitude-msl-from home needs --home-alt-msl-m METRES (the take-off point's MSL "
                             "altitude)")
        if mode == "auto":
            mode = "home" if home_alt_msl_m is not None else "none"
        if not (sigma_m > 0 and math.isfinite(sigma_m)):
            raise ValueError(f"--altitude-msl-sigma-m {sigma_m}: must be a positive number of metres")
        self.mode, self.home, self.sigma_m, self.reader = mode, home_alt_msl_m, float(sigma_m), reader
        self._height: tuple[float, float] | None = None  # (unix time, height above home) of the last frame
        self._vd: float | None = None

    def describe(self) -> str:
        if self.mode == "home":
            return f"MSL altitude: take-off {self.home:g} m + height above it (1-sigma {self.sigma_m:g} m)"
        if self.mode == "autopilot":
            return f"MSL altitude: the autopilot's GLOBAL_POSITION_INT (1-sigma {self.sigma_m:g} m)"
        return "MSL altitude: unknown (give --home-alt-msl-m or --altitude-msl-from autopilot)"

    def observe(self, t_unix: float | None, height_m: float | None) -> None:
        """The height above home a frame was flown at (its telemetry), for ``home`` without the autopilot."""
        if t_unix is None or height_m is None or not math.isfinite(height_m):
            return
        prev = self._height
        if prev is not None and t_unix > prev[0]:
            vd = -(height_m - prev[1]) / (t_unix - prev[0])
            self._vd = vd if self._vd is None else (1 - HEIGHT_GAIN) * self._vd + HEIGHT_GAIN * vd
        self._height = (float(t_unix), float(height_m))

    def at(self, t_unix: float) -> Vertical:
        """The vertical at ``t_unix`` (unknown fields None)."""
        if self.mode == "none":
            return Vertical()
        if self.mode == "autopilot":
            got = self.reader.msl() if self.reader is not None else None
            if got is None:
                return Vertical()
            alt, vd = got
            return Vertical(alt, self.sigma_m, vd, "autopilot")
        got = self.reader.above_home() if self.reader is not None else None
        if got is not None:
            height, vd = got
            return Vertical(self.home + height, self.sigma_m, vd, "home+relative_alt")
        if self._height is None:
            return Vertical()
        t0, height = self._height
        vd = self._vd if self._vd is not None else 0.0
        ahead = min(max(t_unix - t0, 0.0), MAX_EXTRAPOLATION_S)  # the height carried on by its rate
        return Vertical(self.home + height - vd * ahead, self.sigma_m, vd, "home+flight_height")
