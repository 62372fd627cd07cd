"""How a replayed airframe moves: its attitude along the path, the ground under it, its barometer.

- :func:`attitude_series`: roll, pitch, yaw (degrees, MAVLink's Z-Y-X) at times ``t`` of a flight along a
  path flown at constant ground speed. ``multirotor``: the thrust tilts to hold the speed against drag
  (nose down, ``tan(pitch) = tan(12 deg) (v / 15 m/s)^2``, at most 35 deg) and to turn (rolled into the
  turn, ``tan(roll) = v * yaw_rate / g``); ``fixed_wing``: a coordinated turn banks by
  ``atan(v * yaw_rate / g)`` (at most ``max_bank_deg``) with the nose 3 deg up; ``none``: level. The
  yaw rate is the track's, smoothed over 2 s (no airframe turns in an instant). ``noise_deg`` adds a
  wobble (every axis, Gaussian, correlated over 0.5 s) of that standard deviation.
- :func:`synthetic_relief`: smooth seeded hills over an area, ``relief_m`` from lowest to highest, above
  a base height: terrain to drape the map on when no DEM is at hand.
- :func:`baro_altitude`: what a barometer reports above the take-off point: the truth plus a bias, a
  drift per minute and noise.
"""

from __future__ import annotations

import math

import numpy as np

G = 9.81
AIRFRAMES = ("none", "multirotor", "fixed_wing")
MULTIROTOR_PITCH_AT_15_MPS_DEG = 12.0
MULTIROTOR_MAX_TILT_DEG = 35.0
FIXED_WING_PITCH_DEG = 3.0


def _smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of a series (sigma in samples), edges held."""
    if sigma <= 0 or len(x) < 2:
        return x
    r = int(math.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    return np.convolve(np.pad(x, r, mode="edge"), k, mode="valid")


def wobble(n: int, dt: float, std: float, rng: np.random.Generator, corr_s: float = 0.5) -> np.ndarray:
    """A smooth random series (n samples, ``dt`` apart) of standard deviation ``std``."""
    if std <= 0 or n == 0:
        return np.zeros(n)
    x = _smooth(rng.normal(size=n), corr_s / dt)
    s = x.std()
    return x * (std / s) if s > 0 else x


def attitude_series(t: np.ndarray, yaw_deg: np.ndarray, speed_mps: float, airframe: str = "none", *,
                    track_deg: np.ndarray | None = None, max_bank_deg: float = 25.0, noise_deg: float = 0.0,
                    rng: np.random.Generator | None = None) -> np.ndarray:
    """(N, 3) roll, pitch, yaw in degrees at times ``t`` (evenly spaced) for a body whose nose points to
    ``yaw_deg`` (compass) and which turns as ``track_deg`` does (default: the nose); yaw comes back
    unwrapped (continuous, not folded into [0, 360)). See the module docstring."""
    if airframe not in AIRFRAMES:
        raise ValueError(f"airframe {airframe!r} is not one of {AIRFRAMES}")
    t = np.asarray(t, float)
    n = len(t)
    dt = float(t[1] - t[0]) if n > 1 else 1.0
    yaw = np.degrees(np.unwrap(np.radians(yaw_deg)))
    track = yaw if track_deg is None else np.degrees(np.unwrap(np.radians(track_deg)))
    rate = np.gradient(_smooth(track, 2.0 / dt), dt) if n > 1 else np.zeros(n)  # deg/s, clockwise +
    lateral = speed_mps * np.radians(rate)  # centripetal acceleration, to the right when > 0
    roll = np.degrees(np.arctan2(lateral, G))
    pitch = np.zeros(n)
    if airframe == "multirotor":
        tan_drag = math.tan(math.radians(MULTIROTOR_PITCH_AT_15_MPS_DEG)) * (speed_mps / 15.0) ** 2
        pitch[:] = -min(math.degrees(math.atan(tan_drag)), MULTIROTOR_MAX_TILT_DEG)
        roll = np.clip(roll, -MULTIROTOR_MAX_TILT_DEG, MULTIROTOR_MAX_TILT_DEG)
    elif airframe == "fixed_wing":
        pitch[:] = FIXED_WING_PITCH_DEG
        roll = np.clip(roll, -max_bank_deg, max_bank_deg)
    else:
        roll = np.zeros(n)
    out = np.stack([roll, pitch, yaw], axis=1)
    if noise_deg > 0:
        rng = rng if rng is not None else np.random.default_rng()
        out += np.stack([wobble(n, dt, noise_deg, rng) for _ in range(3)], axis=1)
    return out


def turn_radius_m(speed_mps: float, bank_deg: float) -> float:
    """Radius of a coordinated turn at ``speed_mps`` banked ``bank_deg``: ``v^2 / (g tan(bank))``."""
    if not 0 < bank_deg < 80:
        raise ValueError(f"bank_deg must be in (0, 80) degrees for a turn, got {bank_deg}")
    return speed_mps ** 2 / (G * math.tan(math.radians(bank_deg)))


def synthetic_relief(bounds_m, relief_m: float, seed: int = 0, base_m: float = 500.0, cell_m: float = 10.0,
                     wavelength_m: float = 800.0, crs: str | None = None):
    """A :class:`tiles.terrain.TerrainGrid` of smooth hills over ``bounds_m`` (grown by one wavelength):
    heights from ``base_m`` to ``base_m + relief_m`` inside ``bounds_m`` (a little beyond outside them),
    hills about ``wavelength_m`` across."""
    import cv2

    from tiles.terrain import TerrainGrid

    xmin, ymin, xmax, ymax = (float(v) for v in bounds_m)
    xmin, ymin, xmax, ymax = xmin - wavelength_m, ymin - wavelength_m, xmax + wavelength_m, ymax + wavelength_m
    w, h = int(math.ceil((xmax - xmin) / cell_m)), int(math.ceil((ymax - ymin) / cell_m))
    rng = np.random.default_rng(seed)
    coarse = rng.normal(size=(max(2, int(h * cell_m / wavelength_m) + 2), max(2, int(w * cell_m / wavelength_m) + 2)))
    field = cv2.resize(coarse.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    field = cv2.GaussianBlur(field, (0, 0), wavelength_m / cell_m / 4)
    m = int(round(wavelength_m / cell_m))
    inner = field[m:h - m, m:w - m] if h > 2 * m and w > 2 * m else field
    lo, hi = float(inner.min()), float(inner.max())
    heights = base_m + relief_m * (field - lo) / (hi - lo if hi > lo else 1.0)
    return TerrainGrid(heights.astype(np.float32), xmin, ymax, cell_m, crs, {"name": "synthetic", "seed": seed,
                                                                            "relief_m": relief_m})


def baro_altitude(true_rel_m, t_s, bias_m: float = 0.0, drift_m_per_min: float = 0.0, noise_m: float = 0.0,
                  rng: np.random.Generator | None = None) -> np.ndarray:
    """Barometric altitude above the take-off point: ``true + bias + drift * t / 60 + noise``."""
    true_rel_m, t_s = np.asarray(true_rel_m, float), np.asarray(t_s, float)
    out = true_rel_m + bias_m + drift_m_per_min * t_s / 60.0
    if noise_m > 0:
        out = out + (rng if rng is not None else np.random.default_rng()).normal(0, noise_m, out.shape)
    return out
