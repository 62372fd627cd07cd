"""Fixes to an ArduPilot autopilot over MAVLink: ``GPS_INPUT`` (a GPS) or
``MAV_CMD_EXTERNAL_POSITION_ESTIMATE`` (occasional position resets).

``GPS_INPUT`` (ArduPilot ``GPS1_TYPE`` = 14, "MAV"; PX4 has no handler for it: use
:mod:`runtime.outputs.gnss_serial` there). Field by field, from :func:`runtime.outputs.gnss_solution.solution_from_fix`:

- ``time_usec``: the frame's capture time (UTC unix, microseconds); ``time_week``/``time_week_ms`` from the
  same instant (ArduPilot's jitter correction reads the week fields);
- ``lat``/``lon`` degE7; ``alt`` flagged ignored unless a real MSL altitude is given (the runtime knows the
  height above ground, not MSL; ``fix_type`` stays 3 because ArduPilot's EKF uses only 3D fixes and keeps
  its barometer for height);
- ``vn``/``ve`` (m/s, NED: positive north/east) and ``speed_accuracy`` from the filter when it has them;
  ``vd`` is never known (``IGNORE_VEL_VERT``). Without a velocity ArduPilot fuses zero velocity and the
  vehicle drifts in loiter, so a velocity is sent whenever the filter has one;
- ``horiz_accuracy`` = ``Fix.accuracy_m`` (1-sigma-like metres), ``hdop`` = accuracy / 5 m, ``vdop`` and
  ``vert_accuracy`` ignored; ``satellites_visible`` a configured stand-in (see gnss_solution);
- ``yaw`` centidegrees of the airframe heading measured from the imagery, 36000 for north (0 means "no
  yaw" to ArduPilot); 0 when unknown. ArduPilot fuses it only with ``EK3_SRC1_YAW`` = 2 or 3 (GPS).

No trusted fix: ``fix_type`` 0, lat/lon 0 and every ignore flag set.

``MAV_CMD_EXTERNAL_POSITION_ESTIMATE`` (ArduPilot 4.5+; meant for occasional position resets while
dead-reckoning): sent as ``COMMAND_INT`` (frame ``MAV_FRAME_GLOBAL``, ``x``/``y`` = lat/lon degE7 exact;
ArduPilot handles this command as ``COMMAND_INT`` and converts a ``COMMAND_LONG`` to it, where float32
degrees would lose up to a metre), ``param1`` = transmit time (s, our clock wrapped at 10 hours, as the
command's description asks), ``param2`` = processing delay = now - capture time (s), ``param3`` = accuracy
(1-sigma m), ``z`` = NaN (altitude unused). Only trusted fixes are sent (the command has no "no fix").
"""

from __future__ import annotations

import logging
import math
import time

from runtime.outputs.gnss_solution import DEFAULT_SATELLITES, GnssSolution, solution_from_fix
from runtime.outputs.mavlink_link import mavlink_dialect, shared_link

logger = logging.getLogger(__name__)

MODES = ("gps_input", "external_position")
EXTERNAL_TIME_WRAP_S = 36000.0  # param1 wraps at 10 hours (about 1 ms resolution in a float32)


def ignore_flags() -> dict[str, int]:
    """pymavlink's GPS_INPUT_IGNORE_FLAG_* values keyed by their suffix (ALT, HDOP, VEL_HORIZ, ...)."""
    M = mavlink_dialect()
    return {k.removeprefix("GPS_INPUT_IGNORE_FLAG_"): getattr(M, k) for k in dir(M)
            if k.startswith("GPS_INPUT_IGNORE_FLAG_")}


def gps_input_from_solution(s: GnssSolution, gps_id: int = 0) -> dict:
    """The GPS_INPUT fields (keyword names of ``gps_input_send``) for a solution."""
    F = ignore_flags()
    week, week_ms = s.week_ms
    f = {"time_usec": int(round(s.time_unix * 1e6)), "gps_id": gps_id, "time_week_ms": week_ms, "time_week": week,
         "vn": 0.0, "ve": 0.0, "vd": 0.0, "speed_accuracy": 0.0, "vdop": 0.0, "vert_accuracy": 0.0, "yaw": 0}
    if not s.valid:
        f.update(ignore_flags=sum(F.values()), fix_type=0, lat=0, lon=0, alt=0.0, hdop=0.0, horiz_accuracy=0.0,
                 satellites_visible=0)
        return f
    flags = F["VDOP"] | F["VEL_VERT"] | F["VERTICAL_ACCURACY"]
    if s.alt_msl_m is None:
        flags |= F["ALT"]
    if s.has_velocity:
        f.update(vn=s.vel_n_mps, ve=s.vel_e_mps)
    else:
        flags |= F["VEL_HORIZ"]
    if s.speed_acc_mps is not None:
        f["speed_accuracy"] = s.speed_acc_mps
    else:
        flags |= F["SPEED_ACCURACY"]
    if s.yaw_deg is not None:
        cdeg = int(round(s.yaw_deg * 100.0)) % 36000
        f["yaw"] = cdeg or 36000  # 0 means "no yaw": north is 36000
    f.update(ignore_flags=flags, fix_type=3, lat=int(round(s.lat_deg * 1e7)), lon=int(round(s.lon_deg * 1e7)),
             alt=s.alt_msl_m if s.alt_msl_m is not None else 0.0, hdop=s.hdop, horiz_accuracy=s.h_acc_m,
             satellites_visible=s.satellites)
    return f


def gps_input_fields(fix, *, altitude_msl_m: float | None = None, unix_time: float | None = None,
                     gps_id: int = 0, satellites_visible: int = DEFAULT_SATELLITES,
                     camera_yaw_offset_deg: float = 0.0) -> dict:
    """The GPS_INPUT fields for a fix (``unix_time``: used when the fix has no capture time; default now)."""
    s = solution_from_fix(fix, time_unix=time.time() if unix_time is None else unix_time,
                          altitude_msl_m=altitude_msl_m, satellites=satellites_visible,
                          camera_yaw_offset_deg=camera_yaw_offset_deg)
    return gps_input_from_solution(s, gps_id)


def external_position_args(s: GnssSolution, now_unix: float, target_system: int = 1,
                           target_component: int = 1) -> tuple:
    """``command_int_send`` arguments for MAV_CMD_EXTERNAL_POSITION_ESTIMATE (a valid solution)."""
    M = mavlink_dialect()
    delay = max(0.0, now_unix - s.time_unix)
    return (target_system, target_component, M.MAV_FRAME_GLOBAL, M.MAV_CMD_EXTERNAL_POSITION_ESTIMATE, 0, 0,
            now_unix % EXTERNAL_TIME_WRAP_S, delay, s.h_acc_m, math.nan,
            int(round(s.lat_deg * 1e7)), int(round(s.lon_deg * 1e7)), math.nan)


class MavlinkGpsOutput:
    """Fixes to the autopilot at ``url`` (``udpout:HOST:PORT``, ``udpin:...``, ``tcp:...`` or a serial
    device with ``baud``), as ``GPS_INPUT`` or external position estimates (``mode``). The link is
    :func:`runtime.outputs.mavlink_link.shared_link`: the autopilot reader on the same address shares it."""

    def __init__(self, url: str, *, baud: int = 57600, mode: str = "gps_input", gps_id: int = 0,
                 satellites_visible: int = DEFAULT_SATELLITES, camera_yaw_offset_deg: float = 0.0,
                 altitude_msl_m: float | None = None, target_system: int = 1, target_component: int = 1,
                 link=None):
        if mode not in MODES:
            raise ValueError(f"mavlink mode must be one of {MODES}, got {mode!r}")
        self.link = link or shared_link(url, baud=baud)
        self.url, self.mode, self.gps_id = url, mode, gps_id
        self.satellites_visible = int(satellites_visible)
        self.camera_yaw_offset_deg = float(camera_yaw_offset_deg)
        self.altitude_msl_m = altitude_msl_m
        self.target = (target_system, target_component)
        self.sent = 0

    # the pymavlink connection and send lock (the service of before the link object reads these)
    @property
    def conn(self):
        return self.link.conn

    @property
    def lock(self):
        return self.link.send_lock

    def describe(self) -> str:
        what = "GPS_INPUT" if self.mode == "gps_input" else "MAV_CMD_EXTERNAL_POSITION_ESTIMATE"
        return f"MAVLink {what} to {self.url}"

    def solution(self, fix, unix_time: float | None = None) -> GnssSolution:
        return solution_from_fix(fix, time_unix=time.time() if unix_time is None else unix_time,
                                 altitude_msl_m=self.altitude_msl_m, satellites=self.satellites_visible,
                                 camera_yaw_offset_deg=self.camera_yaw_offset_deg)

    def send_fix(self, fix, altitude_msl_m: float | None = None, unix_time: float | None = None) -> dict | None:
        """Send one fix; returns the fields sent (None when nothing was sent)."""
        s = solution_from_fix(fix, time_unix=time.time() if unix_time is None else unix_time,
                              altitude_msl_m=self.altitude_msl_m if altitude_msl_m is None else altitude_msl_m,
                              satellites=self.satellites_visible, camera_yaw_offset_deg=self.camera_yaw_offset_deg)
        self.link.heartbeat()
        if self.mode == "external_position":
            if not s.valid:
                return None
            args = external_position_args(s, time.time(), *self.target)
            self.link.send("command_int", *args)
            self.sent += 1
            return {"param1": args[6], "param2": args[7], "param3": args[8], "x": args[10], "y": args[11]}
        f = gps_input_from_solution(s, self.gps_id)
        self.link.send("gps_input", f["time_usec"], f["gps_id"], f["ignore_flags"], f["time_week_ms"],
                       f["time_week"], f["fix_type"], f["lat"], f["lon"], f["alt"], f["hdop"], f["vdop"], f["vn"],
                       f["ve"], f["vd"], f["speed_accuracy"], f["horiz_accuracy"], f["vert_accuracy"],
                       f["satellites_visible"], f["yaw"])
        self.sent += 1
        return f

    def emit(self, record: dict, fix) -> None:
        """The service's output call: one frame's record and fused fix (None for the summary: skipped)."""
        if fix is None:
            return
        self.send_fix(fix, unix_time=record.get("time_utc"))

    def close(self) -> None:
        self.link.close()
