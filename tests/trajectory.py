"""A known trajectory for the output tests: a drone flying a straight line at constant velocity, and the
fused fixes a localiser would give for it (a known position error inside the reported accuracy)."""

from __future__ import annotations

import math

from runtime.localisation.fix import Fix

LAT0, LON0 = 47.0123456, -99.1234567
R_EARTH = 6378137.0
T0_UNIX = 1704067200.25  # 2024-01-01T00:00:00.25Z: GPS week 2295, (86400 + 18) s + 250 ms into it


def offset(lat: float, lon: float, north_m: float, east_m: float) -> tuple[float, float]:
    """lat/lon moved by metres north/east (small offsets, spherical)."""
    return (lat + math.degrees(north_m / R_EARTH),
            lon + math.degrees(east_m / (R_EARTH * math.cos(math.radians(lat)))))


def ground_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Horizontal distance (m) between two nearby points."""
    n = math.radians(lat2 - lat1) * R_EARTH
    e = math.radians(lon2 - lon1) * R_EARTH * math.cos(math.radians(lat1))
    return math.hypot(n, e)


def truth(i: int, dt: float = 0.1, vn: float = 6.0, ve: float = -8.0) -> dict:
    """Frame ``i``: capture time, true position and velocity (NED, m/s)."""
    t = i * dt
    lat, lon = offset(LAT0, LON0, vn * t, ve * t)
    return {"t": t, "time_unix": T0_UNIX + t, "lat": lat, "lon": lon, "vn": vn, "ve": ve}


def fix_for(i: int, *, accuracy_m: float = 12.0, err_m: float = 7.0, yaw_deg: float = 33.0, **kw) -> Fix:
    """The fused fix of frame ``i``: ``err_m`` (< accuracy) off the truth in a direction that turns with i,
    the true velocity (0.2 m/s off) with its accuracy, and the capture time of the frame."""
    tr = truth(i, **kw)
    a = math.radians(37.0 * i)
    lat, lon = offset(tr["lat"], tr["lon"], err_m * math.cos(a), err_m * math.sin(a))
    return Fix(t=tr["t"], x=0.0, y=0.0, lat=lat, lon=lon, confidence=0.9, accuracy_m=accuracy_m, trusted=True,
               vel_n_mps=tr["vn"] + 0.2, vel_e_mps=tr["ve"] - 0.2, speed_accuracy_mps=0.5, r95_m=2.45 * accuracy_m,
               yaw_deg=yaw_deg, capture_time_unix=tr["time_unix"])
