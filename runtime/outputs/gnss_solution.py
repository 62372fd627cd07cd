"""One instant of the track as a GNSS receiver would report it: the values every autopilot output (MAVLink
``GPS_INPUT``, ``ODOMETRY``, ``MAV_CMD_EXTERNAL_POSITION_ESTIMATE``, an emulated u-blox/NMEA receiver) sends,
decided once.

Every accuracy follows from one number, ``h_acc_m``: the 1-sigma of each horizontal axis, which is the
fix's calibrated 95 % radius / 2.45 (``Fix.accuracy_m = r95_m / 2.45``: the 95 % radius of a circular 2-D
Gaussian is 2.45 of its per-axis sigmas), grown with the time the track was predicted over
(:mod:`runtime.outputs.prediction`). The EKFs weigh a position by it as a per-axis standard deviation
(ArduPilot's ``horiz_accuracy``, PX4's ``eph`` from UBX ``hAcc``). What each value is:

- ``time_unix``: the instant the solution describes (UTC unix seconds); GPS week and milliseconds of week
  come from it (GPS epoch 1980-01-06, GPS = UTC + 18 s since 2017), so every time field agrees.
- ``h_acc_m`` (above); ``sigma_n_m``/``sigma_e_m``: the per-axis 1-sigmas in the shape of the fix's
  covariance, their mean variance ``h_acc_m^2`` (both ``h_acc_m`` without a covariance): what NMEA GST and
  the ODOMETRY pose covariance carry. PX4's NMEA driver takes ``eph`` as the root-sum-square of GST's two
  errors, so it reads ``sqrt(2) h_acc_m`` where UBX gives ``h_acc_m``: stricter, never understated.
  ``r95_m`` is ``2.45 h_acc_m``, the radius the replays check against the truth.
- ``vel_n_mps``/``vel_e_mps``: velocity over ground (NED: positive north/east), ``None`` when unknown;
  ``speed_acc_mps`` its 1-sigma per axis. ``vel_d_mps`` (positive down) and ``v_acc_m`` (1-sigma of
  ``alt_msl_m``) come from the altitude source (:mod:`runtime.outputs.vertical`); ``None`` when there is
  none, and each protocol then says "unknown" in its own form.
- ``yaw_deg``: the airframe's heading measured from the imagery (the camera's mounting offset subtracted).
- stand-ins, because autopilots gate on them and there are no satellites: ``satellites`` a configured
  count (default 10) on a valid solution, 0 without; ``hdop = h_acc_m / 5 m`` (a nominal range error, so
  ArduPilot's HDOP <= 2.5 gate passes while the accuracy is <= 12.5 m); ``vdop = v_acc_m / 5 m`` when the
  vertical is known, else ``hdop``; ``pdop = sqrt(hdop^2 + vdop^2)`` (PX4 computes PDOP so).
- ``age_s``: from the capture of the frame the solution was predicted from to ``time_unix``.

``valid`` False is "no fix": every output says so in its own form (``GPS_INPUT`` fix_type 1, UBX fixType 0,
NMEA quality 0 / status V, ``ODOMETRY`` quality -1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

GPS_EPOCH_UNIX = 315964800  # 1980-01-06T00:00:00Z
GPS_LEAP_SECONDS = 18  # GPS - UTC since 2017-01-01
NOMINAL_UERE_M = 5.0  # hdop = horizontal accuracy / this
MAX_DOP = 99.99
VACC_UNKNOWN_M = 1000.0  # reported vertical accuracy when no altitude is known
DEFAULT_SATELLITES = 10
R95_PER_SIGMA = math.sqrt(-2.0 * math.log(0.05))  # 2.448: 95 % radius / per-axis sigma (circular Gaussian)
EARTH_RADIUS_M = 6378137.0  # the spherical metres per degree ArduPilot's Location uses (1e-7 deg = 1.113 cm)


def gps_week_ms(unix_time: float) -> tuple[int, int]:
    """(GPS week, milliseconds of the week) for a UTC unix time."""
    gps = unix_time - GPS_EPOCH_UNIX + GPS_LEAP_SECONDS
    week = int(gps // 604800)
    return week, int(round((gps - week * 604800) * 1000)) % (604800 * 1000)


def offset_latlon(lat: float, lon: float, north_m: float, east_m: float) -> tuple[float, float]:
    """A WGS84 point moved by metres north/east (spherical, exact to millimetres over a few hundred metres)."""
    return (lat + math.degrees(north_m / EARTH_RADIUS_M),
            lon + math.degrees(east_m / (EARTH_RADIUS_M * max(math.cos(math.radians(lat)), 1e-6))))


def _finite(v) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


@dataclass(frozen=True)
class GnssSolution:
    time_unix: float
    valid: bool
    lat_deg: float = 0.0
    lon_deg: float = 0.0
    h_acc_m: float = 0.0
    sigma_n_m: float = 0.0
    sigma_e_m: float = 0.0
    vel_n_mps: float | None = None
    vel_e_mps: float | None = None
    speed_acc_mps: float | None = None
    vel_d_mps: float | None = None
    yaw_deg: float | None = None
    alt_msl_m: float | None = None
    v_acc_m: float | None = None
    satellites: int = 0
    age_s: float | None = None

    @property
    def week_ms(self) -> tuple[int, int]:
        return gps_week_ms(self.time_unix)

    @property
    def r95_m(self) -> float:
        return R95_PER_SIGMA * self.h_acc_m

    @property
    def hdop(self) -> float:
        return min(self.h_acc_m / NOMINAL_UERE_M, MAX_DOP) if self.valid else MAX_DOP

    @property
    def vdop(self) -> float:
        if not self.valid:
            return MAX_DOP
        return min(self.v_acc_m / NOMINAL_UERE_M, MAX_DOP) if self.has_altitude else self.hdop

    @property
    def pdop(self) -> float:
        return min(math.hypot(self.hdop, self.vdop), MAX_DOP)

    @property
    def has_altitude(self) -> bool:
        return self.alt_msl_m is not None and self.v_acc_m is not None

    @property
    def has_velocity(self) -> bool:
        return self.vel_n_mps is not None and self.vel_e_mps is not None

    @property
    def ground_speed_mps(self) -> float:
        return math.hypot(self.vel_n_mps, self.vel_e_mps) if self.has_velocity else 0.0

    @property
    def course_deg(self) -> float:
        """Course over ground, degrees clockwise from north in [0, 360) (0 when not moving or unknown)."""
        if not self.has_velocity or self.ground_speed_mps == 0:
            return 0.0
        return math.degrees(math.atan2(self.vel_e_mps, self.vel_n_mps)) % 360.0


def axis_sigmas(h_acc_m: float, cov_xy) -> tuple[float, float]:
    """(sigma north, sigma east) in the shape of ``cov_xy`` (var x east, var y north, cov) with
    ``(sn^2 + se^2) / 2 = h_acc_m^2``; both ``h_acc_m`` without a usable covariance."""
    sn = se = h_acc_m
    if cov_xy is not None and all(math.isfinite(v) for v in cov_xy) and min(cov_xy[:2]) >= 0 \
            and cov_xy[0] + cov_xy[1] > 0:
        k = h_acc_m * math.sqrt(2.0 / (cov_xy[0] + cov_xy[1]))
        se, sn = k * math.sqrt(cov_xy[0]), k * math.sqrt(cov_xy[1])
    return sn, se


def solution_from_fix(fix, *, time_unix: float, altitude_msl_m: float | None = None,
                      v_acc_m: float | None = None, satellites: int = DEFAULT_SATELLITES,
                      camera_yaw_offset_deg: float = 0.0) -> GnssSolution:
    """The receiver's view of ``fix`` (a :class:`runtime.localisation.fix.Fix` or None) as it stands, with no
    prediction: at its capture time (``time_unix`` when it has none). The outputs send predictions
    (:class:`runtime.outputs.prediction.FixPredictor`); this is their value at age 0."""
    if fix is not None and fix.capture_time_unix is not None and math.isfinite(fix.capture_time_unix):
        time_unix = float(fix.capture_time_unix)
    acc = _finite(getattr(fix, "accuracy_m", None))
    if fix is None or not fix.trusted or _finite(fix.lat) is None or _finite(fix.lon) is None or acc is None:
        return GnssSolution(time_unix=float(time_unix), valid=False)
    sn, se = axis_sigmas(acc, fix.cov_xy)
    vn, ve = _finite(fix.vel_n_mps), _finite(fix.vel_e_mps)
    if vn is None or ve is None:
        vn = ve = None
    yaw = _finite(fix.yaw_deg)
    if yaw is not None:
        yaw = (yaw - camera_yaw_offset_deg) % 360.0
    sacc = _finite(fix.speed_accuracy_mps) if vn is not None else None
    alt = _finite(altitude_msl_m)
    return GnssSolution(time_unix=float(time_unix), valid=True, lat_deg=float(fix.lat), lon_deg=float(fix.lon),
                        h_acc_m=acc, sigma_n_m=sn, sigma_e_m=se, vel_n_mps=vn, vel_e_mps=ve, speed_acc_mps=sacc,
                        yaw_deg=yaw, alt_msl_m=alt, v_acc_m=_finite(v_acc_m) if alt is not None else None,
                        satellites=int(satellites), age_s=0.0)
