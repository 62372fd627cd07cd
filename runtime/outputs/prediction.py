"""The track between frames: the latest fused fix predicted to any instant, its accuracy grown with the time.

An autopilot wants its GPS at 5-10 Hz, steadily (ArduPilot: an average gap under 215 ms, never two gaps over
245 ms; PX4's driver waits 500 ms, then reconfigures); frames come at the camera's rate and the chain's
pace. :class:`FixPredictor` keeps the last fix (position, covariance, velocity, capture time) and answers
for any instant ``t`` with a :class:`~runtime.outputs.gnss_solution.GnssSolution`:

- position: the fix moved by its velocity over ``h = t - capture time`` (constant velocity);
- velocity: the fix's. It was measured over the last keyframe interval ``dt`` (the odometry's displacement /
  dt), so it describes the middle of that interval: its age at ``t`` is ``h_v + dt/2``, ``h_v`` the time
  since that keyframe (frames between keyframes carry its velocity on:
  :mod:`runtime.localisation.prediction`, which also grew their position's accuracy to their own time);
- accuracy, from the fix's 1-sigma (``accuracy_m = r95_m / 2.45``) and speed accuracy::

      sigma_v(t)^2 = speed_accuracy^2 + (a * (h_v + dt/2))^2
      sigma_h(t)^2 = accuracy^2 + (sigma_v(t) * h)^2

  where ``a`` is the acceleration the track shows: the root mean square of the change of the fixes'
  velocities per second, less what their own errors explain (``(dv^2 / 2 - sacc_1^2 - sacc_2^2) / dt^2``
  per axis; exponentially weighted, ``ACCEL_GAIN`` per fix; at least ``ACCEL_FLOOR_MPS2``; the filter's
  ``accel_mps2`` until two velocities are known). A straight flight keeps it at the floor; a turn raises
  it for as long as it lasts;
- **the one "no fix" rule**: no trusted fix, or the fix is older than ``max_age_s`` at ``t`` (frames
  stopped: the camera or the chain stalled). The filter alone decides what is trusted; the outputs only
  refuse to predict beyond ``max_age_s``.

The output's instant may lie before the last frame's capture (it describes ``output_delay_ms`` before it
leaves, and a camera's frames come faster): the prediction then runs backwards, which the Localizer's
``predict_fix`` (forward only, from the map's coordinates) does not do; the speed accuracy grows here too.
"""

from __future__ import annotations

import math

from runtime.outputs.gnss_solution import GnssSolution, axis_sigmas, offset_latlon

ACCEL_FLOOR_MPS2 = 0.5  # the least acceleration assumed between fixes (gusts, a straight flight's corrections)
ACCEL_GAIN = 0.3  # weight of each new velocity change in the track's acceleration


def _finite(v) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


class FixPredictor:
    """The latest fix, predicted to any instant (module docstring). ``accel_mps2``: the acceleration assumed
    before the track shows its own (the map filter's); ``max_age_s``: the "no fix" rule."""

    def __init__(self, *, accel_mps2: float = 2.0, max_age_s: float = 2.0, satellites: int = 10,
                 camera_yaw_offset_deg: float = 0.0):
        if not max_age_s > 0:
            raise ValueError(f"max_age_s must be > 0, got {max_age_s}")
        self.accel_prior = float(accel_mps2)
        self.max_age_s = float(max_age_s)
        self.satellites = int(satellites)
        self.camera_yaw_offset_deg = float(camera_yaw_offset_deg)
        self.fix = None
        self.capture_unix: float | None = None
        self.dt_s = 0.0  # the interval the fix's velocity was measured over
        self._accel2: float | None = None  # the track's mean square acceleration per axis
        self._prev: tuple | None = None  # (capture time, vel north, vel east, speed accuracy)

    @property
    def accel_mps2(self) -> float:
        if self._accel2 is None:
            return self.accel_prior
        return max(ACCEL_FLOOR_MPS2, math.sqrt(self._accel2))

    def update(self, fix, capture_unix: float | None = None) -> None:
        """A new fused fix (trusted or not) of a frame captured at ``capture_unix`` (default: the fix's own
        capture time)."""
        t = _finite(capture_unix if capture_unix is not None else getattr(fix, "capture_time_unix", None))
        vn, ve = (_finite(getattr(fix, "vel_n_mps", None)), _finite(getattr(fix, "vel_e_mps", None)))
        sv = _finite(getattr(fix, "speed_accuracy_mps", None)) or 0.0
        prev = self._prev
        if t is None or vn is None or ve is None:
            self._prev, self.dt_s = None, 0.0  # the velocity's run broke: its changes are unknown
        elif prev is None or (vn, ve) != (prev[1], prev[2]):  # a new measurement (not a frame between keyframes,
            self.dt_s = 0.0                                   # which carries its keyframe's velocity on)
            if prev is not None and t > prev[0]:
                dt = self.dt_s = t - prev[0]
                change2 = ((vn - prev[1]) ** 2 + (ve - prev[2]) ** 2) / 2.0 - sv**2 - prev[3] ** 2
                a2 = max(change2, 0.0) / (dt * dt)
                self._accel2 = a2 if self._accel2 is None else (1 - ACCEL_GAIN) * self._accel2 + ACCEL_GAIN * a2
            self._prev = (t, vn, ve, sv)
        self.fix, self.capture_unix = fix, t

    def age_s(self, t_unix: float) -> float | None:
        return None if self.capture_unix is None else t_unix - self.capture_unix

    def solution(self, t_unix: float, vertical=None) -> GnssSolution:
        """The track at ``t_unix`` (``vertical``: a :class:`runtime.outputs.vertical.Vertical` or None)."""
        fix, age = self.fix, self.age_s(t_unix)
        acc = _finite(getattr(fix, "accuracy_m", None))
        if (fix is None or not fix.trusted or age is None or age > self.max_age_s or acc is None
                or _finite(fix.lat) is None or _finite(fix.lon) is None):
            return GnssSolution(time_unix=float(t_unix), valid=False, age_s=age)
        vn, ve = _finite(fix.vel_n_mps), _finite(fix.vel_e_mps)
        lat, lon = float(fix.lat), float(fix.lon)
        sacc = None
        h_acc = acc
        if vn is not None and ve is not None:
            sv0 = _finite(fix.speed_accuracy_mps)
            sv0 = sv0 if sv0 is not None else 0.0
            since = t_unix - self._prev[0] if self._prev is not None else age  # since the velocity was measured
            sacc = math.hypot(sv0, self.accel_mps2 * (abs(since) + self.dt_s / 2.0))
            lat, lon = offset_latlon(lat, lon, vn * age, ve * age)
            h_acc = math.hypot(acc, sacc * age)
        else:
            vn = ve = None
        sn, se = axis_sigmas(h_acc, fix.cov_xy)
        yaw = _finite(fix.yaw_deg)
        if yaw is not None:
            yaw = (yaw - self.camera_yaw_offset_deg) % 360.0
        v = vertical
        return GnssSolution(time_unix=float(t_unix), valid=True, lat_deg=lat, lon_deg=lon, h_acc_m=h_acc,
                            sigma_n_m=sn, sigma_e_m=se, vel_n_mps=vn, vel_e_mps=ve, speed_acc_mps=sacc,
                            vel_d_mps=getattr(v, "vel_d_mps", None), yaw_deg=yaw,
                            alt_msl_m=getattr(v, "alt_msl_m", None), v_acc_m=getattr(v, "v_acc_m", None),
                            satellites=self.satellites, age_s=age)
