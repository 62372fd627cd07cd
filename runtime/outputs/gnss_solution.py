"""One fix as a GNSS receiver would report it: the values every autopilot output (MAVLink ``GPS_INPUT``,
``MAV_CMD_EXTERNAL_POSITION_ESTIMATE``, an emulated u-blox/NMEA receiver) sends, decided once.

What each value is (and what it is not):

- ``time_unix``: when the frame was captured (``Fix.capture_time_unix``), not when the message leaves; the
  caller's fallback when the capture time is unknown. GPS week and milliseconds of week are derived from
  it (GPS epoch 1980-01-06, GPS = UTC + 18 s since 2017), so every time field of a message agrees.
- ``h_acc_m``: ``Fix.accuracy_m``, the localiser's 1-sigma-like horizontal radius in metres (the EKFs
  use it as the measurement's standard deviation: ArduPilot's ``horiz_accuracy``, PX4's ``eph`` from
  UBX ``hAcc`` or NMEA ``GST``). ``sigma_n_m``/``sigma_e_m`` split it per axis in the shape of ``cov_xy`` when
  known (else ``h_acc_m / sqrt(2)`` each), so that ``sqrt(sigma_n^2 + sigma_e^2) = h_acc_m``.
- ``vel_n_mps``/``vel_e_mps``: velocity over ground, NED (north, east; positive north/east), from the
  filter; ``None`` when unknown. ``speed_acc_mps``: its 1-sigma, ``None`` when unknown. The vertical
  velocity is never known (``vel_d`` is always reported unknown where the protocol allows it).
- ``yaw_deg``: the airframe's heading measured from the imagery (``Fix.yaw_deg`` is the image top's
  compass heading; the camera's mounting offset is subtracted), ``None`` when unknown.
- ``satellites`` and the DOPs: there are no satellites. Autopilots gate on them (ArduPilot EKF3: HDOP
  <= 2.5 and >= 6 satellites before it uses a GPS; PX4 EKF2: ``EKF2_REQ_NSATS`` 6, ``EKF2_REQ_PDOP``
  2.5), so they are stand-ins tied to the accuracy: ``satellites`` is a fixed, configurable count
  (default 10) on a valid fix and 0 without one; ``hdop = h_acc_m / 5 m`` (a nominal range error), so the
  HDOP gate passes only while the accuracy is <= 12.5 m; ``vdop = hdop`` (no vertical measurement:
  geometry-like, not a claim) and ``pdop = sqrt(hdop^2 + vdop^2)`` (PX4 computes PDOP so), so PX4's PDOP
  gate passes while the accuracy is <= 8.8 m.
- ``alt_msl_m``: only a real MSL altitude when the caller knows one; ``None`` otherwise (the runtime
  knows the height above ground, not MSL): outputs then flag it ignored (``GPS_INPUT``) or report a 2D-
  quality vertical (UBX ``vAcc``/NMEA altitude error set to ``VACC_UNKNOWN_M``).

No trusted fix (``valid`` False): every output says "no fix" (``fix_type`` 0, every ignore flag).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

GPS_EPOCH_UNIX = 315964800  # 1980-01-06T00:00:00Z
GPS_LEAP_SECONDS = 18  # GPS - UTC since 2017-01-01
NOMINAL_UERE_M = 5.0  # hdop = horizontal accuracy / this
MAX_DOP = 99.99
VACC_UNKNOWN_M = 1000.0  # reported vertical accuracy when no vertical is measured
DEFAULT_SATELLITES = 10


def gps_week_ms(unix_time: float) -> tuple[int, int]:
    """(GPS week, milliseconds of the week) for a UTC unix time."""
    gps = unix_time - GPS_EPOCH_UNIX + GPS_LEAP_SECONDS
    week = int(gps // 604800)
    return week, int(round((gps - week * 604800) * 1000)) % (604800 * 1000)


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
    yaw_deg: float | None = None
    alt_msl_m: float | None = None
    satellites: int = 0
    hdop: float = 0.0

    @property
    def week_ms(self) -> tuple[int, int]:
        return gps_week_ms(self.time_unix)

    @property
    def vdop(self) -> float:
        return self.hdop

    @property
    def pdop(self) -> float:
        return min(math.hypot(self.hdop, self.vdop), MAX_DOP)

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


def solution_from_fix(fix, *, time_unix: float, altitude_msl_m: float | None = None,
                      satellites: int = DEFAULT_SATELLITES, camera_yaw_offset_deg: float = 0.0) -> GnssSolution:
    """The receiver's view of ``fix`` (a :class:`runtime.localisation.fix.Fix` or None). ``time_unix`` is used when
    the fix carries no capture time."""
    if fix is not None and fix.capture_time_unix is not None and math.isfinite(fix.capture_time_unix):
        time_unix = float(fix.capture_time_unix)
    acc = _finite(getattr(fix, "accuracy_m", None))
    if fix is None or not fix.trusted or _finite(fix.lat) is None or _finite(fix.lon) is None or acc is None:
        return GnssSolution(time_unix=float(time_unix), valid=False)
    sn = se = acc / math.sqrt(2.0)
    cov = fix.cov_xy
    if cov is not None and all(math.isfinite(v) for v in cov) and min(cov[:2]) >= 0 and cov[0] + cov[1] > 0:
        # the covariance's shape (x east, y north), scaled so that sqrt(sn^2 + se^2) is the accuracy: the
        # horizontal error PX4 computes from GST is then the same number every other field carries
        k = acc / math.sqrt(cov[0] + cov[1])
        se, sn = k * math.sqrt(cov[0]), k * math.sqrt(cov[1])
    vn, ve = _finite(fix.vel_n_mps), _finite(fix.vel_e_mps)
    if vn is None or ve is None:
        vn = ve = None
    yaw = _finite(fix.yaw_deg)
    if yaw is not None:
        yaw = (yaw - camera_yaw_offset_deg) % 360.0
    sacc = _finite(fix.speed_accuracy_mps) if vn is not None else None
    return GnssSolution(time_unix=float(time_unix), valid=True, lat_deg=float(fix.lat), lon_deg=float(fix.lon),
                        h_acc_m=acc, sigma_n_m=sn, sigma_e_m=se, vel_n_mps=vn, vel_e_mps=ve, speed_acc_mps=sacc,
                        yaw_deg=yaw, alt_msl_m=_finite(altitude_msl_m), satellites=int(satellites),
                        hdop=min(acc / NOMINAL_UERE_M, MAX_DOP))
