"""Where fixes go: JSON lines (file, stdout, UDP) and MAVLink ``GPS_INPUT`` to an autopilot.

A record (one JSON object per line)::

    {"type": "fix", "t": 12.3, "frame": 41, "time_utc": 1760000000.123,
     "fix": {"x", "y", "lat", "lon", "confidence", "accuracy_m", "trusted", "reason", "label"},
     "raw": {...the single-frame estimate before fusion...},
     "matches": [{"row", "label", "score", "lat", "lon"}, ...],
     "latency_ms": {"preprocess", "inference", "search", "fusion", "total"}}

MAVLink (REFERENCE.md §5): ``GPS_INPUT`` with lat/lon in degE7, ``horiz_accuracy`` from the fix,
``hdop`` = accuracy / 5 m (a nominal range error, documented stand-in), GPS week and milliseconds of week
from the GPS epoch (1980-01-06, +18 leap seconds). When the fix is not trusted: ``fix_type`` 0, lat/lon 0
and every ignore flag set, so the autopilot's EKF drops the message instead of using a wrong position.
Velocities are never provided (their ignore flags are always set).

Altitude: GPS_INPUT's ``alt`` is metres above mean sea level. The runtime knows the height above ground
(the flight altitude), not MSL, so by default ``alt`` is flagged ignored while ``fix_type`` stays 3:
ArduPilot (GPS_TYPE=14) takes the horizontal position from a 3D fix and reads ``alt`` only when its ignore
flag is clear, and the EKF keeps its barometric height. Pass ``altitude_msl_m`` only with a real MSL value.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import sys
import threading
import time

logger = logging.getLogger(__name__)

# GPS_INPUT ignore flags (MAVLink GPS_INPUT_IGNORE_FLAGS)
IGNORE_ALT = 1
IGNORE_HDOP = 2
IGNORE_VDOP = 4
IGNORE_VEL_HORIZ = 8
IGNORE_VEL_VERT = 16
IGNORE_SPEED_ACCURACY = 32
IGNORE_HORIZONTAL_ACCURACY = 64
IGNORE_VERTICAL_ACCURACY = 128
IGNORE_ALL = 255

GPS_EPOCH_UNIX = 315964800  # 1980-01-06T00:00:00Z
GPS_LEAP_SECONDS = 18  # GPS - UTC since 2017-01-01
NOMINAL_UERE_M = 5.0  # hdop = horizontal accuracy / this


def gps_week_ms(unix_time: float) -> tuple[int, int]:
    """(GPS week, milliseconds of the week) for a UTC unix time."""
    gps = unix_time - GPS_EPOCH_UNIX + GPS_LEAP_SECONDS
    week = int(gps // 604800)
    return week, int(round((gps - week * 604800) * 1000)) % (604800 * 1000)


class JsonLinesOutput:
    """JSON lines to a file path or '-' (stdout); each line is written whole with one system call, so a
    consumer tailing the file sees complete lines. The parent folder is created. A write that fails
    (disk full, file too large) leaves no partial line behind and raises :class:`OutputError`."""

    def __init__(self, path):
        self.path = str(path)
        self.lines = 0
        self.lock = threading.Lock()
        if self.path == "-":
            self._fd, self._own = -1, False
            return
        self._fd, self._own = _open_append(self.path), True

    def describe(self) -> str:
        return "JSON lines to stdout" if self.path == "-" else f"JSON lines to {self.path}"

    def emit(self, record: dict, fix=None) -> None:
        self.write(record)

    def write(self, record: dict) -> None:
        line = json_line(record)
        data = line.encode("utf-8")
        done = 0
        with self.lock:
            try:
                if not self._own:
                    sys.stdout.write(line)
                    sys.stdout.flush()
                    self.lines += 1
                    return
                while done < len(data):
                    done += os.write(self._fd, data[done:])
            except OSError as e:
                if self._own and done:  # drop the partial line (measured from the end: rotation-safe)
                    with contextlib.suppress(OSError):
                        os.ftruncate(self._fd, max(0, os.fstat(self._fd).st_size - done))
                raise OutputError(e.errno, f"cannot write a JSON line to {self.path}: {e.strerror} "
                                  f"({self.lines} lines written so far; free space or choose another path)") from e
            self.lines += 1

    def close(self) -> None:
        with self.lock:
            if self._own and self._fd >= 0:
                with contextlib.suppress(OSError):
                    os.fsync(self._fd)
                os.close(self._fd)
                self._fd = -1


class OutputError(OSError):
    """An output that cannot be opened or written (missing folder that cannot be made, disk full)."""


def json_safe(obj):
    """``obj`` with every NaN/inf float replaced by None and numpy scalars/arrays made plain, so that
    ``json.dumps(..., allow_nan=False)`` cannot refuse a record (JSON has no NaN; a reader treats null as
    "no value"). Other unknown objects become their ``str``."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy scalar or array
        return json_safe(obj.tolist())
    return str(obj)


def json_line(record: dict) -> str:
    """One compact JSON line; the fast path when the record is already plain and finite."""
    try:
        return json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n"
    except (ValueError, TypeError):
        return json.dumps(json_safe(record), separators=(",", ":"), allow_nan=False) + "\n"


def _open_append(path: str) -> int:
    """An O_APPEND descriptor on ``path``, its folder created; a one-line error when impossible."""
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as e:
        raise OutputError(e.errno, f"cannot open {path} for JSON lines: {e.strerror} ({e.filename}); "
                          "give a path in a folder this user can write") from None


class UdpJsonOutput:
    """One JSON datagram per record to HOST:PORT."""

    def __init__(self, address: str):
        host, _, port = str(address).rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--udp-json needs HOST:PORT, got {address!r} (e.g. 127.0.0.1:5005)")
        self.addr = (host, int(port))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def describe(self) -> str:
        return f"JSON datagrams to udp {self.addr[0]}:{self.addr[1]}"

    def emit(self, record: dict, fix=None) -> None:
        self.write(record)

    def write(self, record: dict) -> None:
        data = json_line(record).encode()
        try:
            self.sock.sendto(data, self.addr)
        except OSError as e:  # nobody listening is not fatal for a broadcast-like output
            logger.debug("udp json send failed: %s", e)

    def close(self) -> None:
        self.sock.close()


def gps_input_fields(fix, *, altitude_msl_m: float | None = None, unix_time: float | None = None,
                     gps_id: int = 0, satellites_visible: int = 10) -> dict:
    """The GPS_INPUT fields for a fix (pure function; see the module docstring for the choices)."""
    now = time.time() if unix_time is None else unix_time
    week, week_ms = gps_week_ms(now)
    trusted = bool(fix is not None and fix.trusted and math.isfinite(fix.lat) and math.isfinite(fix.lon))
    f = {"time_usec": int(now * 1e6), "gps_id": gps_id, "time_week_ms": week_ms, "time_week": week,
         "vn": 0.0, "ve": 0.0, "vd": 0.0, "speed_accuracy": 0.0, "vdop": 0.0, "vert_accuracy": 0.0, "yaw": 0}
    if not trusted:
        f.update(ignore_flags=IGNORE_ALL, fix_type=0, lat=0, lon=0, alt=0.0, hdop=0.0,
                 horiz_accuracy=0.0, satellites_visible=0)
        return f
    flags = IGNORE_VDOP | IGNORE_VEL_HORIZ | IGNORE_VEL_VERT | IGNORE_SPEED_ACCURACY | IGNORE_VERTICAL_ACCURACY
    if altitude_msl_m is None:
        flags |= IGNORE_ALT
    acc = float(fix.accuracy_m) if math.isfinite(fix.accuracy_m) else 9999.0
    f.update(ignore_flags=flags, fix_type=3,
             lat=int(round(fix.lat * 1e7)), lon=int(round(fix.lon * 1e7)),
             alt=float(altitude_msl_m) if altitude_msl_m is not None else 0.0,
             hdop=min(acc / NOMINAL_UERE_M, 99.0), horiz_accuracy=acc, satellites_visible=satellites_visible)
    return f


class MavlinkGpsOutput:
    """GPS_INPUT through pymavlink: ``udpout:HOST:PORT``, ``udpin:HOST:PORT``, ``tcp:...`` or a serial
    device (``/dev/ttyTHS1`` with ``baud``). ``satellites_visible`` is reported on trusted fixes because
    autopilots gate on it; it is a configurable stand-in, not a satellite count."""

    def __init__(self, url: str, *, baud: int = 57600, source_system: int = 1, source_component: int = 220,
                 gps_id: int = 0, satellites_visible: int = 10, heartbeat_s: float = 1.0):
        try:
            from pymavlink import mavutil
        except ImportError as e:
            raise ImportError("--mavlink needs pymavlink: `pip install pymavlink`") from e
        self.url = url
        self.conn = mavutil.mavlink_connection(url, baud=baud, source_system=source_system,
                                               source_component=source_component)
        self.gps_id = gps_id
        self.satellites_visible = satellites_visible
        self.heartbeat_s = heartbeat_s
        self._last_hb = 0.0
        self.sent = 0
        self.lock = threading.Lock()

    def describe(self) -> str:
        return f"MAVLink GPS_INPUT to {self.url}"

    def send_fix(self, fix, altitude_msl_m: float | None = None, unix_time: float | None = None) -> dict:
        f = gps_input_fields(fix, altitude_msl_m=altitude_msl_m, unix_time=unix_time, gps_id=self.gps_id,
                             satellites_visible=self.satellites_visible)
        mav = self.conn.mav
        with self.lock:
            now = time.monotonic()
            if self.heartbeat_s and now - self._last_hb >= self.heartbeat_s:
                from pymavlink import mavutil

                mav.heartbeat_send(mavutil.mavlink.MAV_TYPE_ONBOARD_CONTROLLER, mavutil.mavlink.MAV_AUTOPILOT_INVALID,
                                   0, 0, 0)
                self._last_hb = now
            mav.gps_input_send(f["time_usec"], f["gps_id"], f["ignore_flags"], f["time_week_ms"], f["time_week"],
                               f["fix_type"], f["lat"], f["lon"], f["alt"], f["hdop"], f["vdop"], f["vn"], f["ve"],
                               f["vd"], f["speed_accuracy"], f["horiz_accuracy"], f["vert_accuracy"],
                               f["satellites_visible"], f["yaw"])
            self.sent += 1
        return f

    def write(self, record: dict) -> None:
        """Output-interface form: send the record's fused fix (see :func:`fix_from_record`)."""
        self.send_fix(fix_from_record(record),
                      unix_time=record.get("time_utc"))

    def close(self) -> None:
        with self.lock:
            self.conn.close()


def fix_from_record(record: dict):
    from .position import Fix

    f = record.get("fix") or {}

    def num(v):
        return math.nan if v is None else float(v)

    return Fix(t=float(record.get("t", 0.0)), x=num(f.get("x")), y=num(f.get("y")), lat=num(f.get("lat")),
               lon=num(f.get("lon")), confidence=float(f.get("confidence", 0.0)),
               accuracy_m=num(f.get("accuracy_m")) if f.get("accuracy_m") is not None else math.inf,
               trusted=bool(f.get("trusted", False)))


def fix_record(fix, raw, db, matches_rows, matches_scores, *, frame_index: int, latency_ms: dict,
               altitude_m: float | None = None, meta: dict | None = None) -> dict:
    """The JSON line for one processed frame."""
    ent = db.entries
    matches = []
    for r, s in zip(matches_rows, matches_scores):
        if r < 0:
            continue
        e = ent[int(r)]

        def num(v, nd):
            return round(float(v), nd) if math.isfinite(v) else None

        matches.append({"row": int(r), "label": str(e["label"]), "score": round(float(s), 5),
                        "lat": num(e["lat"], 7), "lon": num(e["lon"], 7)})
    rec = {"type": "fix", "t": round(float(fix.t), 4), "frame": int(frame_index), "time_utc": time.time(),
           "altitude_m": altitude_m, "fix": fix.as_dict(), "raw": raw.as_dict(), "matches": matches,
           "latency_ms": {k: round(v, 3) for k, v in latency_ms.items()}}
    if meta:
        rec["meta"] = {k: v for k, v in meta.items() if isinstance(v, (int, float, str, bool)) and k != "capture_time"}
    return rec
