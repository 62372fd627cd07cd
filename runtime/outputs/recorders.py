"""Recordings of exactly what the autopilot outputs send, timed: what the replay writes with
``--record-autopilot``, and what the autopilots' rules are checked on.

The writers are the live ones (:class:`~runtime.outputs.mavlink_gps.MavlinkGpsOutput`,
:class:`~runtime.outputs.mavlink_odometry.MavlinkOdometryOutput`,
:class:`~runtime.outputs.gnss_serial.GnssSerialOutput`); only the wire is replaced by a file that stamps
each write with the time it would have left (``recorder.now_unix``, set by the output scheduler before it
sends):

- :class:`TlogRecorder`: pymavlink's telemetry log, each message preceded by its time as 8 bytes
  big-endian microseconds since 1970 (what ``mavutil.mavlink_connection("x.tlog")`` reads back, and
  ``ardupilot-gps/check.py`` replays); :class:`RecordingLink` is a MAVLink link writing into one, with
  the heartbeat of the live link (once a second);
- :class:`CaptureRecorder`: the timed capture of a serial line (``PX4GPSCAP1\\n``, then per write a
  little-endian u64 time in microseconds, a u32 byte count and the bytes), which ``px4-gps/check.py
  --replay`` plays to a port of PX4's GPS drivers.

A recording is kept in memory and written atomically when closed (a flight of minutes is kilobytes).
"""

from __future__ import annotations

import struct
import threading
from pathlib import Path

from tiles.io import atomic_write_bytes

CAPTURE_MAGIC = b"PX4GPSCAP1\n"


class _TimedRecorder:
    def __init__(self, path):
        self.path = Path(path)
        self.name = str(self.path)
        self.now_unix = 0.0  # the send time of what is written next (set by the scheduler)
        self.buf = bytearray()
        self.writes = 0
        self.closed = False

    def _us(self) -> int:
        return int(round(self.now_unix * 1e6))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            atomic_write_bytes(self.path, bytes(self.buf))


class TlogRecorder(_TimedRecorder):
    """A pymavlink tlog (module docstring): ``write(message bytes)`` stamps them with ``now_unix``."""

    def write(self, data: bytes) -> int:
        self.buf += struct.pack(">Q", self._us()) + bytes(data)
        self.writes += 1
        return len(data)


class CaptureRecorder(_TimedRecorder):
    """A PX4GPSCAP1 timed capture (module docstring): ``write(bytes)`` is one record at ``now_unix``."""

    def __init__(self, path):
        super().__init__(path)
        self.buf += CAPTURE_MAGIC

    def write(self, data: bytes) -> int:
        self.buf += struct.pack("<QI", self._us(), len(data)) + bytes(data)
        self.writes += 1
        return len(data)

    def read(self, n: int = 1) -> bytes:
        return b""  # nobody answers a recording


class RecordingLink:
    """A MAVLink link (the interface of :class:`runtime.outputs.mavlink_link.MavlinkLink` the outputs use:
    ``send``, ``heartbeat``, ``close``) that writes into a :class:`TlogRecorder`, as system 1, component
    ``MAV_COMP_ID_ONBOARD_COMPUTER``, MAVLink 2, like the live link."""

    def __init__(self, recorder: TlogRecorder, *, source_system: int = 1, source_component: int | None = None,
                 heartbeat_s: float = 1.0):
        from runtime.outputs.mavlink_link import mavlink_dialect

        M = mavlink_dialect()
        self.M, self.recorder, self.url = M, recorder, recorder.name
        comp = M.MAV_COMP_ID_ONBOARD_COMPUTER if source_component is None else source_component
        self.mav = M.MAVLink(recorder, srcSystem=source_system, srcComponent=comp)
        self.send_lock = threading.Lock()
        self.heartbeat_s = float(heartbeat_s)
        self._last_hb: float | None = None

    def send(self, name: str, *args) -> None:
        with self.send_lock:
            getattr(self.mav, f"{name}_send")(*args)

    def heartbeat(self, now: float | None = None) -> bool:
        now = self.recorder.now_unix if now is None else now
        if self._last_hb is not None and now - self._last_hb < self.heartbeat_s:
            return False
        self._last_hb = now
        self.send("heartbeat", self.M.MAV_TYPE_ONBOARD_CONTROLLER, self.M.MAV_AUTOPILOT_INVALID, 0, 0, 0)
        return True

    def close(self) -> None:
        self.recorder.close()
