"""Between keyframes: the fix carried forward by the track's velocity, its radius growing with the time.

A camera gives 30 frames a second; the ground under a drone at 40 m/s moves 1.3 m between two of them,
under 1 % of a footprint. Retrieval, the map filter and registration learn nothing new from such a frame
(the filter would even count the same evidence thirty times a second), so the Localizer runs the whole
chain on keyframes (at most every ``keyframe_s`` of the flight's clock, :class:`KeyframeClock`) and gives
the frames between them the last keyframe's fix predicted to their time (:func:`predict_fix`): position
moved by the filter's velocity, covariance grown by the velocity's uncertainty and an unknown acceleration,
trusted while the prediction is young (``max_age_s``). The same prediction serves an output that must send
at its own steady rate between frames.
"""

from __future__ import annotations

import math
from dataclasses import replace

from runtime.localisation.geo import R95_PER_SIGMA

ACCEL_SIGMA_MPS2 = 2.0  # an unknown acceleration (1 sigma per axis): a multirotor changing speed
MAX_AGE_S = 1.0  # a prediction older than this is not a fix to fly on


class KeyframeClock:
    """Which frames are keyframes: the first, then the first at least ``keyframe_s`` after the last one
    (0: every frame). Deterministic in the frames' times alone, so the service's embed thread and fusion
    thread, each with its own clock, agree frame by frame."""

    def __init__(self, keyframe_s: float):
        self.keyframe_s = float(keyframe_s)
        self.last: float | None = None

    def reset(self) -> None:
        self.last = None

    def is_key(self, t: float, *, commit: bool = True, force: bool = False) -> bool:
        """Whether the frame at ``t`` is a keyframe (``force``: it is, for another reason); ``commit``: it
        becomes the last keyframe."""
        key = (force or self.last is None or t <= self.last  # <=: the same frame asked again, or a new flight
               or t - self.last >= self.keyframe_s - 1e-6)
        if key and commit:
            self.last = float(t)
        return key


def predict_fix(fix, t: float, db=None, grid=None, *, max_age_s: float = MAX_AGE_S,
                accel_mps2: float = ACCEL_SIGMA_MPS2):
    """``fix`` (a :class:`runtime.localisation.fix.Fix` at ``fix.t``) predicted to time ``t``: moved by its
    velocity, its covariance grown by the velocity's variance and an unknown acceleration over the time
    elapsed (per axis: (speed_accuracy dt)^2 + (accel dt^2 / 2)^2), its r95 and accuracy from that; WGS84
    from ``db``/``grid`` (:func:`runtime.localisation.geo.latlon_at`) when given. Untrusted once older than
    ``max_age_s`` or without a velocity (reason says which)."""
    dt = float(t) - float(fix.t)
    if not fix.has_position or dt < 0:
        return replace(fix, t=float(t), trusted=False, reason=fix.reason or "no fix to predict")
    ve, vn = fix.vel_e_mps, fix.vel_n_mps
    if not (math.isfinite(ve) and math.isfinite(vn)):
        return replace(fix, t=float(t), trusted=False, reason="predicted without a velocity")
    sa = fix.speed_accuracy_mps if math.isfinite(fix.speed_accuracy_mps) else 0.0
    grow = (sa * dt) ** 2 + (0.5 * accel_mps2 * dt * dt) ** 2
    s0 = fix.r95_m / R95_PER_SIGMA  # the reported radius's own per-axis sigma, grown (never shrunk)
    vx, vy, cxy = fix.cov_xy if fix.cov_xy is not None else (s0**2, s0**2, 0.0)
    cov = (vx + grow, vy + grow, cxy)
    r95 = R95_PER_SIGMA * math.sqrt(s0**2 + grow)
    x, y = fix.x + ve * dt, fix.y + vn * dt
    lat, lon = fix.lat, fix.lon
    if db is not None and grid is not None:
        from runtime.localisation.geo import latlon_at

        lat, lon = latlon_at(db, grid, x, y)
    trusted, reason = fix.trusted, fix.reason
    if trusted and dt > max_age_s:
        trusted, reason = False, f"prediction {dt:.1f} s old (limit {max_age_s:g} s)"
    return replace(fix, t=float(t), x=x, y=y, lat=lat, lon=lon, cov_xy=cov, r95_m=r95, accuracy_m=r95 / 2.45,
                   trusted=trusted, reason=reason, capture_time_unix=None)
