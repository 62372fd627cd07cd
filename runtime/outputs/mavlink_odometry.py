"""The track to an ArduPilot autopilot as external navigation: MAVLink ``ODOMETRY`` (``--mavlink-mode odometry``).

ArduPilot's documented route for vision positioning (``VISO_TYPE`` = 1 MAVLink, ``EK3_SRC1_POSXY`` = 6
ExternalNav): a position in a local frame whose origin the EKF knows. The output

1. sets that origin once, at the first valid solution: ``SET_GPS_GLOBAL_ORIGIN`` (lat, lon degE7, altitude
   mm MSL: the solution's, else 0), repeated once a second (a lost message; ArduPilot ignores it once its
   origin is set). When the autopilot already has an origin (it reports ``GPS_GLOBAL_ORIGIN``, seen by the
   autopilot reader on the same link: :meth:`MavlinkOdometryOutput.use_origin`), that one is used instead;
2. sends ``ODOMETRY`` per solution: ``frame_id`` ``MAV_FRAME_LOCAL_FRD`` with x north, y east, z down
   (metres from the origin, ArduPilot's own metres per degree), ``child_frame_id`` ``MAV_FRAME_BODY_FRD``;
   ``q``: the attitude known (the heading measured from the imagery, level: roll and pitch are not
   measured); ``vx, vy, vz``: the velocity in the body frame (ArduPilot turns it back with ``q``);
   ``pose_covariance``: per-axis variances (the solution's sigmas north/east, the vertical accuracy, angles:
   the heading's (10 deg when measured, else unknown: pi) and unknown roll/pitch), cross terms 0;
   ``velocity_covariance`` the speed accuracy squared; angular rates NaN (no body-rate measurement);
   ``reset_counter``: +1 each time the track is trusted again after it was lost (a jump is possible there);
   ``estimator_type`` ``MAV_ESTIMATOR_TYPE_VISION``; ``quality`` 1-100 from the accuracy (100 / metres of
   1-sigma, within 1..100).

No fix (after the origin): ``quality`` -1 ("failed": ArduPilot does not fuse it) with a NaN pose; before the
first fix nothing is sent (there is no frame to send it in). ArduPilot ages ExtNav out after 300 ms: the
steady output rate (>= 5 Hz) keeps it fresh. Set ``VISO_DELAY_MS`` to the output delay.
"""

from __future__ import annotations

import math
import time

from runtime.outputs.gnss_solution import GnssSolution
from runtime.outputs.mavlink_link import mavlink_dialect, shared_link

LOCATION_SCALING_FACTOR = 0.011131884502145034  # ArduPilot: metres per 1e-7 degree of latitude
HEADING_SIGMA_RAD = math.radians(10.0)  # the imagery's heading, when measured (registration: median 0.85 deg)
UNKNOWN_ANGLE_VAR = math.pi**2
ORIGIN_REPEAT_S = 1.0


def local_ned(origin: tuple[float, float, float], lat: float, lon: float, alt: float | None) -> tuple[float, ...]:
    """(north, east, down) metres of a point from ``origin`` (lat, lon, alt MSL), as ArduPilot's
    ``Location::get_distance_NE`` measures them (longitude scaled at the mean latitude)."""
    lat0, lon0, alt0 = origin
    scale = max(math.cos(math.radians((lat0 + lat) / 2.0)), 0.01)
    north = (lat - lat0) * 1e7 * LOCATION_SCALING_FACTOR
    east = (lon - lon0) * 1e7 * LOCATION_SCALING_FACTOR * scale
    return north, east, (alt0 - alt) if alt is not None else 0.0


def yaw_quaternion(yaw_deg: float | None) -> list[float]:
    """(w, x, y, z) of a level attitude heading ``yaw_deg`` (identity when unknown)."""
    if yaw_deg is None:
        return [1.0, 0.0, 0.0, 0.0]
    h = math.radians(yaw_deg) / 2.0
    return [math.cos(h), 0.0, 0.0, math.sin(h)]


def odometry_quality(h_acc_m: float) -> int:
    """1..100: 100 for a 1-sigma of 1 m or better, 100 / sigma beyond (10 m: 10)."""
    return int(max(1, min(100, round(100.0 / max(h_acc_m, 1e-3)))))


def odometry_fields(s: GnssSolution, origin, reset_counter: int) -> dict:
    """The ODOMETRY fields (keyword names of ``odometry_send``) for a solution, in ``origin``'s frame."""
    M = mavlink_dialect()
    nan = math.nan
    f = {"time_usec": int(round(s.time_unix * 1e6)), "frame_id": M.MAV_FRAME_LOCAL_FRD,
         "child_frame_id": M.MAV_FRAME_BODY_FRD, "rollspeed": nan, "pitchspeed": nan, "yawspeed": nan,
         "reset_counter": reset_counter & 0xFF, "estimator_type": M.MAV_ESTIMATOR_TYPE_VISION}
    if not s.valid:
        f.update(x=nan, y=nan, z=nan, q=[1.0, 0.0, 0.0, 0.0], vx=nan, vy=nan, vz=nan, pose_covariance=[nan] * 21,
                 velocity_covariance=[nan] * 21, quality=-1)
        return f
    n, e, d = local_ned(origin, s.lat_deg, s.lon_deg, s.alt_msl_m)
    yaw = s.yaw_deg
    vn, ve = (s.vel_n_mps, s.vel_e_mps) if s.has_velocity else (nan, nan)
    c, si = (math.cos(math.radians(yaw)), math.sin(math.radians(yaw))) if yaw is not None else (1.0, 0.0)
    vd = s.vel_d_mps if s.vel_d_mps is not None else (0.0 if s.has_velocity else nan)
    pose = [0.0] * 21
    pose[0], pose[6] = s.sigma_n_m**2, s.sigma_e_m**2
    pose[11] = s.v_acc_m**2 if s.has_altitude else 1e6  # 1 km: the height is not known
    pose[15] = pose[18] = UNKNOWN_ANGLE_VAR
    pose[20] = HEADING_SIGMA_RAD**2 if yaw is not None else UNKNOWN_ANGLE_VAR
    vel = [0.0] * 21
    sv2 = s.speed_acc_mps**2 if s.speed_acc_mps is not None else nan
    vel[0] = vel[6] = sv2
    vel[11] = 1.0 if s.vel_d_mps is not None else 1e4
    f.update(x=n, y=e, z=d, q=yaw_quaternion(yaw), vx=vn * c + ve * si, vy=-vn * si + ve * c, vz=vd,
             pose_covariance=pose, velocity_covariance=vel, quality=odometry_quality(s.h_acc_m))
    return f


class MavlinkOdometryOutput:
    """Solutions as ExtNav ``ODOMETRY`` (module docstring), over ``link`` or one opened for ``url``."""

    def __init__(self, url: str | None = None, *, baud: int = 57600, target_system: int = 1,
                 target_component: int = 1, link=None):
        self.link = link or shared_link(url, baud=baud)
        self.url = url or self.link.url
        self.target = (target_system, target_component)
        self.origin: tuple[float, float, float] | None = None
        self.reset_counter = 0
        self.sent = 0
        self._lost = False
        self._origin_sent_at: float | None = None
        self._origin_from_autopilot = False

    def describe(self) -> str:
        return f"MAVLink ODOMETRY (ExternalNav) to {self.url}"

    def use_origin(self, lat: float, lon: float, alt_msl_m: float) -> None:
        """The autopilot's own EKF origin (its ``GPS_GLOBAL_ORIGIN``): positions are sent from it."""
        new = (float(lat), float(lon), float(alt_msl_m))
        if self.origin != new:
            if self.origin is not None:
                self.reset_counter += 1
            self.origin, self._origin_from_autopilot = new, True

    def _send_origin(self, now_unix: float) -> None:
        if self._origin_from_autopilot:
            return
        if self._origin_sent_at is not None and now_unix - self._origin_sent_at < ORIGIN_REPEAT_S:
            return
        lat, lon, alt = self.origin
        self.link.send("set_gps_global_origin", self.target[0], int(round(lat * 1e7)), int(round(lon * 1e7)),
                       int(round(alt * 1000)), int(round(now_unix * 1e6)))
        self._origin_sent_at = now_unix

    def send_solution(self, s: GnssSolution, now_unix: float | None = None) -> dict | None:
        """One ODOMETRY (after the origin) for a solution; returns the fields sent (None before the origin)."""
        now_unix = time.time() if now_unix is None else now_unix
        self.link.heartbeat()
        if s.valid and self.origin is None:
            self.origin = (s.lat_deg, s.lon_deg, s.alt_msl_m if s.alt_msl_m is not None else 0.0)
        if self.origin is None:
            return None
        self._send_origin(now_unix)
        if not s.valid:
            self._lost = True
        elif self._lost:
            self._lost = False
            self.reset_counter += 1
        f = odometry_fields(s, self.origin, self.reset_counter)
        self.link.send("odometry", f["time_usec"], f["frame_id"], f["child_frame_id"], f["x"], f["y"], f["z"],
                       f["q"], f["vx"], f["vy"], f["vz"], f["rollspeed"], f["pitchspeed"], f["yawspeed"],
                       f["pose_covariance"], f["velocity_covariance"], f["reset_counter"], f["estimator_type"],
                       f["quality"])
        self.sent += 1
        return f

    def close(self) -> None:
        self.link.close()
