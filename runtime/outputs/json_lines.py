"""Where fixes go: JSON lines (file, stdout, UDP), MAVLink to an ArduPilot autopilot, and an emulated GNSS
receiver on a serial port (PX4, or any autopilot that reads a u-blox/NMEA GPS).

Every output has ``describe()`` and ``close()``; the JSON ones ``emit(record, fix)`` (the frame's JSON record
and its fused :class:`runtime.localisation.fix.Fix`; ``fix`` is None for the final summary record), the
autopilot ones ``send_solution(solution, now)``. :func:`open_outputs` builds them all from the service's
config.

A record (one JSON object per line)::

    {"type": "fix", "t": 12.3, "frame": 41, "time_utc": 1760000000.123,
     "fix": {"x", "y", "lat", "lon", "confidence", "accuracy_m", "trusted", "reason", "label", "vel_n_mps", ...},
     "raw": {...the single-frame estimate before fusion...},
     "matches": [{"row", "label", "score", "lat", "lon"}, ...],
     "latency_ms": {"preprocess", "inference", "search", "fusion", "total"}}

JSON lines are written per frame. The autopilot outputs live in their own modules and are driven at their
own steady rate by :mod:`runtime.outputs.scheduler` (``send_solution(solution, now)``, the track predicted
between frames): :mod:`runtime.outputs.mavlink_gps` (``GPS_INPUT`` or
``MAV_CMD_EXTERNAL_POSITION_ESTIMATE``), :mod:`runtime.outputs.mavlink_odometry` (``ODOMETRY``, ExternalNav)
and :mod:`runtime.outputs.gnss_serial` (UBX, NMEA); what they send is decided once in
:mod:`runtime.outputs.gnss_solution`.
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
from pathlib import Path

from runtime.outputs.gnss_solution import gps_week_ms  # noqa: F401  (re-exported: the time helper of the outputs)
from runtime.outputs.mavlink_gps import MavlinkGpsOutput

logger = logging.getLogger(__name__)

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


def _jsonl_folder(path: str) -> None:
    """Create the folder of a JSON lines file, or say in one line why it cannot be."""
    if path == "-":
        return
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--jsonl {path}: cannot create the folder {e.filename} ({e.strerror}); give a path in a "
                         "folder this user can write") from e


def open_outputs(cfg) -> list:
    """Every output the config asks for, in order: ``jsonl``, ``udp_json`` (per frame), ``mavlink`` (mode
    ``mavlink_mode``: ``gps_input`` with ``gps_id``, ``odometry`` or ``external_position``) and
    ``gnss_serial`` (``gnss_baud``, ``gnss_protocols``), the last two for the scheduler (``send_solution``).
    Outputs already opened are closed again if a later one fails to open."""
    makers = []
    if getattr(cfg, "jsonl", None):
        _jsonl_folder(cfg.jsonl)
        makers.append(lambda: JsonLinesOutput(cfg.jsonl))
    if getattr(cfg, "udp_json", None):
        makers.append(lambda: UdpJsonOutput(cfg.udp_json))
    if getattr(cfg, "mavlink", None):
        makers.append(lambda: mavlink_output(cfg))
    if getattr(cfg, "gnss_serial", None):
        from runtime.outputs.gnss_serial import GnssSerialOutput

        makers.append(lambda: GnssSerialOutput(cfg.gnss_serial, baud=getattr(cfg, "gnss_baud", 115200),
                                               protocols=getattr(cfg, "gnss_protocols", "ubx,nmea")))
    outputs = []
    try:
        for make in makers:
            outputs.append(make())
    except Exception:
        for out in outputs:
            out.close()
        raise
    return outputs


def mavlink_output(cfg, link=None):
    """The MAVLink output of ``cfg.mavlink_mode`` (on ``link``, else the shared link of ``cfg.mavlink``)."""
    mode = getattr(cfg, "mavlink_mode", "gps_input")
    baud = getattr(cfg, "mavlink_baud", 57600)
    if mode == "odometry":
        from runtime.outputs.mavlink_odometry import MavlinkOdometryOutput

        return MavlinkOdometryOutput(cfg.mavlink if link is None else None, baud=baud, link=link)
    return MavlinkGpsOutput(cfg.mavlink if link is None else None, baud=baud, mode=mode,
                            gps_id=getattr(cfg, "gps_id", 0), link=link)
