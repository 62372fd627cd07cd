"""The track to an ArduPilot autopilot as a GPS: ``GPS_INPUT``, or ``MAV_CMD_EXTERNAL_POSITION_ESTIMATE``.

``GPS_INPUT`` (ArduPilot ``GPSn_TYPE`` = 14, "MAV"; PX4 has no handler for it: use
:mod:`runtime.outputs.gnss_serial` there), field by field from a
:class:`~runtime.outputs.gnss_solution.GnssSolution` (the output scheduler's prediction for one instant):

- ``gps_id``: the GPS instance it is for (0 = GPS1; ArduPilot drops a message whose ``gps_id`` is not the
  instance of the ``GPSn_TYPE`` = 14 backend, AP_GPS_MAV ``handle_msg``);
- ``time_usec`` and ``time_week``/``time_week_ms``: the instant the solution describes (ArduPilot maps the
  week fields to its own clock with the smallest delay it has seen, then subtracts ``GPSn_DELAY_MS``);
- ``lat``/``lon`` degE7; ``alt`` (m MSL), ``vd`` and ``vert_accuracy``/``vdop`` when the altitude source
  knows them, else flagged ignored (ArduPilot then takes 0 m for its origin's height);
- ``vn``/``ve`` (m/s NED) and ``speed_accuracy`` (1-sigma) when the track has a velocity (without one
  ArduPilot fuses zero velocity: the vehicle drifts in loiter);
- ``horiz_accuracy`` (the 1-sigma per axis), ``hdop`` (= accuracy / 5 m), ``satellites_visible`` (a
  stand-in: see gnss_solution);
- ``yaw`` centidegrees of the airframe heading measured from the imagery, 36000 for north (0 means "no
  yaw"); 0 when unknown. ArduPilot fuses it only with ``EK3_SRC1_YAW`` = 2 or 3.

No fix: ``fix_type`` 1 (ArduPilot's NO_FIX; 0 would be "no GPS"), lat/lon 0 and every ignore flag set.

``MAV_CMD_EXTERNAL_POSITION_ESTIMATE`` (ArduPilot 4.5+): a position *reset* that ArduPilot takes only while
it dead-reckons with an origin on another source (never as the only source: measured 0 of 73 accepted):
sent as ``COMMAND_INT`` (frame ``MAV_FRAME_GLOBAL``, ``x``/``y`` = lat/lon degE7), ``param1`` = transmit
time (s, our clock wrapped at 10 hours), ``param2`` = the solution's age when sent (s), ``param3`` =
accuracy (1-sigma m), ``z`` = NaN. Only valid solutions (the command has no "no fix").
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
FIX_NONE, FIX_3D = 1, 3  # GPS_FIX_TYPE_NO_FIX, GPS_FIX_TYPE_3D_FIX


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
         "vn": 0.0, "ve": 0.0, "vd": 0.0, "speed_accuracy": 0.0, "vdop": 0.0, "vert_accuracy": 0.0, "yaw": 0,
         "alt": 0.0}
    if not s.valid:
        f.update(ignore_flags=sum(F.values()), fix_type=FIX_NONE, lat=0, lon=0, hdop=0.0, horiz_accuracy=0.0,
                 satellites_visible=0)
        return f
    flags = 0
    if s.has_altitude:
        f.update(alt=s.alt_msl_m, vert_accuracy=s.v_acc_m, vdop=s.vdop)
    else:
        flags |= F["ALT"] | F["VERTICAL_ACCURACY"] | F["VDOP"]
    if s.has_velocity:
        f.update(vn=s.vel_n_mps, ve=s.vel_e_mps)
        if s.vel_d_mps is not None:
            f["vd"] = s.vel_d_mps
        else:
            flags |= F["VEL_VERT"]
    else:
        flags |= F["VEL_HORIZ"] | F["VEL_VERT"]  # ArduPilot reads vd only with the horizontal velocity
    if s.speed_acc_mps is not None:
        f["speed_accuracy"] = s.speed_acc_mps
    else:
        flags |= F["SPEED_ACCURACY"]
    if s.yaw_deg is not None:
        cdeg = int(round(s.yaw_deg * 100.0)) % 36000
        f["yaw"] = cdeg or 36000  # 0 means "no yaw": north is 36000
    f.update(ignore_flags=flags, fix_type=FIX_3D, lat=int(round(s.lat_deg * 1e7)), lon=int(round(s.lon_deg * 1e7)),
             hdop=s.hdop, horiz_accuracy=s.h_acc_m, satellites_visible=s.satellites)
    return f


def external_position_args(s: GnssSolution, now_unix: float, target_system: int = 1,
                           target_component: int = 1) -> tuple:
    """``command_int_send`` arguments for MAV_CMD_EXTERNAL_POSITION_ESTIMATE (a valid solution)."""
    M = mavlink_dialect()
    delay = max(0.0, now_unix - s.time_unix)
    return (target_system, target_component, M.MAV_FRAME_GLOBAL, M.MAV_CMD_EXTERNAL_POSITION_ESTIMATE, 0, 0,
            now_unix % EXTERNAL_TIME_WRAP_S, delay, s.h_acc_m, math.nan,
            int(round(s.lat_deg * 1e7)), int(round(s.lon_deg * 1e7)), math.nan)


class MavlinkGpsOutput:
    """Solutions to the autopilot as ``GPS_INPUT`` or external position estimates (``mode``), over ``link``
    (a :class:`runtime.outputs.mavlink_link.MavlinkLink`, or one opened for ``url``: ``udpout:HOST:PORT``,
    ``udpin:...``, ``tcp:...`` or a serial device at ``baud``; the autopilot reader on the same address
    shares it), or a recording link (:mod:`runtime.outputs.recorders`)."""

    def __init__(self, url: str | None = None, *, baud: int = 57600, mode: str = "gps_input", gps_id: int = 0,
                 target_system: int = 1, target_component: int = 1, link=None):
        if mode not in MODES:
            raise ValueError(f"mavlink mode must be one of {MODES}, got {mode!r}")
        if not 0 <= int(gps_id) <= 255:
            raise ValueError(f"--gps-id {gps_id}: a GPS instance is 0 (GPS1), 1 (GPS2) ...")
        self.link = link or shared_link(url, baud=baud)
        self.url = url or self.link.url
        self.mode, self.gps_id = mode, int(gps_id)
        self.target = (target_system, target_component)
        self.sent = 0

    def describe(self) -> str:
        what = f"GPS_INPUT (gps_id {self.gps_id})" if self.mode == "gps_input" else "MAV_CMD_EXTERNAL_POSITION_ESTIMATE"
        return f"MAVLink {what} to {self.url}"

    def send_solution(self, s: GnssSolution, now_unix: float | None = None) -> dict | None:
        """Send one solution (``now_unix``: the send time, default now); returns the fields sent (None when
        nothing was sent)."""
        now_unix = time.time() if now_unix is None else now_unix
        self.link.heartbeat()
        if self.mode == "external_position":
            if not s.valid:
                return None
            args = external_position_args(s, now_unix, *self.target)
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

    def send_fix(self, fix, *, unix_time: float | None = None, satellites: int = DEFAULT_SATELLITES,
                 camera_yaw_offset_deg: float = 0.0) -> dict | None:
        """One fix as it stands, at its capture time (no prediction): a direct use without the scheduler."""
        s = solution_from_fix(fix, time_unix=time.time() if unix_time is None else unix_time,
                              satellites=satellites, camera_yaw_offset_deg=camera_yaw_offset_deg)
        return self.send_solution(s)

    def close(self) -> None:
        self.link.close()
