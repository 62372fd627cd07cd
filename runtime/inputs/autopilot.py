"""The current height above ground and compass heading, read from the flight controller over MAVLink.

The tile database has one layer per altitude; the service picks the layer for the height the drone flies
at now. Its tiles are north-up, so the service also turns every frame north-up by the heading the camera
faces (:func:`runtime.engines.preprocess.north_up`). :class:`AutopilotReader` (also importable under its first
name, ``AutopilotAltitude``) listens to the autopilot in a daemon thread (pymavlink, the same
connection strings as ``--mavlink``: ``udpin:0.0.0.0:14551``, ``udpout:HOST:PORT``, ``tcp:HOST:PORT``,
or a serial device such as ``/dev/ttyTHS1`` with a baud rate) and keeps the latest value of each source,
with the time it arrived. :meth:`AutopilotReader.current` answers with the best source that is fresh
(younger than ``stale_s``), in this order:

1. ``rangefinder``: ``DISTANCE_SENSOR`` facing down (``orientation`` = MAV_SENSOR_ROTATION_PITCH_270),
   ``current_distance`` (cm) within the sensor's own ``[min_distance, max_distance]`` and not flagged
   invalid (``signal_quality`` 1). The distance along the sensor axis: on a tilted vehicle it is the slant
   range, no attitude correction. Most rangefinders end well below survey heights (out of range there,
   so the next source is used).
2. ``relative_alt``: ``GLOBAL_POSITION_INT.relative_alt`` (mm -> m), the EKF's height above home (above
   ground only over flat terrain around home). Both ArduPilot and PX4 stream it.
3. ``altitude_terrain`` then ``altitude_relative``: ``ALTITUDE`` (PX4 sends it; values below -1000 m or
   NaN mean unknown).

Nothing older than ``stale_s`` (default 2 s) is ever returned: ``current()`` is then ``None`` and the
caller falls back (the service to ``--altitude``, then to "no fix: no altitude").

:meth:`AutopilotReader.heading` answers the same way (same ``stale_s``) with the airframe's compass
heading, degrees clockwise from north in ``[0, 360)``, from the first fresh of:

1. ``attitude``: ``ATTITUDE.yaw`` (radians, -pi..pi), the EKF attitude. Every autopilot streams it and
   it needs no GPS (compass and gyros).
2. ``vfr_hud``: ``VFR_HUD.heading`` (whole degrees, 0..360).
3. ``global_position_int``: ``GLOBAL_POSITION_INT.hdg`` (centidegrees; 65535 means unknown).

This is the nose's heading; a camera mounted turned relative to the nose adds its own offset (the
service's ``camera_yaw_offset_deg``).

The full attitude is kept too, as a short history put on this computer's clock
(:mod:`runtime.inputs.attitude_history`): ``ATTITUDE`` (the airframe) and
``GIMBAL_DEVICE_ATTITUDE_STATUS`` (a gimbal's own attitude). :meth:`AutopilotReader.attitude_at` and
:meth:`AutopilotReader.gimbal_at` interpolate them to a frame's capture time, given the link's delay.

The autopilot must stream these messages. ArduPilot: ``SRn_POSITION`` (GLOBAL_POSITION_INT),
``SRn_EXTRA1`` (ATTITUDE), ``SRn_EXTRA2`` (VFR_HUD) and ``SRn_EXTRA3`` (DISTANCE_SENSOR) on the serial port the companion computer uses; PX4: the MAVLink
instance's mode or ``mavlink stream``. Unless ``request_hz`` is 0, the reader also asks for them itself
with ``MAV_CMD_SET_MESSAGE_INTERVAL`` once it has seen the autopilot's heartbeat (and again if the
autopilot restarts). It sends a heartbeat of its own every second, so that a ``udpout:`` peer (a
MAVLink router) learns where to send.

The link is a :class:`runtime.outputs.mavlink_link.MavlinkLink` (``link=``, or opened by address through
:func:`runtime.outputs.mavlink_link.shared_link`), so the reader and the GPS outputs on one address share one
connection, one send lock and one heartbeat (one serial port cannot be opened twice). An already open
pymavlink connection can still be given as ``conn`` with the ``send_lock`` its other sender holds.
Message ids, commands and enum values are pymavlink's (``runtime.outputs.mavlink_link.mavlink_dialect``).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass

from runtime.inputs.attitude_history import AttitudeAt, AttitudeHistory
from runtime.outputs.mavlink_link import MavlinkLink, mavlink_dialect, shared_link

logger = logging.getLogger(__name__)

# the order in which sources are preferred (the first fresh one wins)
SOURCES = ("rangefinder", "relative_alt", "altitude_terrain", "altitude_relative")
HEADING_SOURCES = ("attitude", "vfr_hud", "global_position_int")

# asked for with MAV_CMD_SET_MESSAGE_INTERVAL (ATTITUDE carries the heading; VFR_HUD is only a fallback)
STREAMED = ("GLOBAL_POSITION_INT", "DISTANCE_SENSOR", "ALTITUDE", "ATTITUDE")

PIP_HINT = "pip install 'geoloc-edge[mavlink]'"


def _dialect():
    try:
        return mavlink_dialect()
    except ImportError as e:
        raise ImportError(f"reading the altitude or heading from the autopilot needs pymavlink: `{PIP_HINT}`") from e


@dataclass(frozen=True)
class AltitudeReading:
    altitude_m: float  # height above ground (or home, see ``source``), metres
    source: str  # one of SOURCES
    age_s: float  # seconds since the message arrived
    system_id: int = 0  # MAVLink system that sent it

    def as_dict(self) -> dict:
        return {"altitude_m": round(self.altitude_m, 3), "source": self.source, "age_s": round(self.age_s, 3)}


@dataclass(frozen=True)
class HeadingReading:
    heading_deg: float  # compass heading of the airframe's nose, degrees clockwise from north, [0, 360)
    source: str  # one of HEADING_SOURCES
    age_s: float  # seconds since the message arrived
    system_id: int = 0

    def as_dict(self) -> dict:
        return {"heading_deg": round(self.heading_deg, 3), "source": self.source, "age_s": round(self.age_s, 3)}


def compass_deg(deg: float) -> float:
    """Any angle in degrees as a compass heading in [0, 360)."""
    h = float(deg) % 360.0
    return 0.0 if h >= 360.0 else h  # -1e-17 % 360 rounds to 360.0


def headings_from_message(msg) -> dict[str, float]:
    """The compass headings (degrees in [0, 360), keyed by source) one MAVLink message carries; {} if none."""
    kind = msg.get_type()
    if kind == "ATTITUDE":
        yaw = float(msg.yaw)
        return {"attitude": compass_deg(math.degrees(yaw))} if math.isfinite(yaw) else {}
    if kind == "VFR_HUD":
        hdg = float(msg.heading)
        return {"vfr_hud": compass_deg(hdg)} if math.isfinite(hdg) and 0 <= hdg <= 360 else {}
    if kind == "GLOBAL_POSITION_INT":
        if msg.hdg == 65535 or msg.hdg > 36000:  # UINT16_MAX: unknown
            return {}
        return {"global_position_int": compass_deg(msg.hdg / 100.0)}
    return {}


def readings_from_message(msg) -> dict[str, float]:
    """The altitude values (metres, keyed by source) that one MAVLink message carries; {} if none is valid."""
    kind = msg.get_type()
    if kind == "DISTANCE_SENSOR":
        if msg.orientation != _dialect().MAV_SENSOR_ROTATION_PITCH_270:
            return {}
        if getattr(msg, "signal_quality", 0) == 1:  # 1: invalid (0: unknown, 100: best)
            return {}
        d, lo, hi = msg.current_distance, msg.min_distance, msg.max_distance
        if hi <= 0 or not lo <= d <= hi:  # out of the sensor's range: no reading
            return {}
        return {"rangefinder": d / 100.0}
    if kind == "GLOBAL_POSITION_INT":
        return {"relative_alt": msg.relative_alt / 1000.0}
    if kind == "ALTITUDE":
        out = {}
        for name in ("altitude_terrain", "altitude_relative"):
            v = float(getattr(msg, name))
            if math.isfinite(v) and v > -1000.0:
                out[name] = v
        return out
    return {}


class AutopilotReader:
    """The latest height above ground and heading from an autopilot (see the module docstring).

    ``reader = AutopilotReader("udpin:0.0.0.0:14551").start()``; ``reader.current()`` ->
    :class:`AltitudeReading` or ``None``; ``reader.heading()`` -> :class:`HeadingReading` or ``None``;
    ``reader.status()`` for health; ``reader.close()``.
    ``system_id`` restricts the reader to one vehicle (default: any system's messages).
    """

    def __init__(self, url: str | None = None, *, baud: int = 57600, stale_s: float = 2.0,
                 request_hz: float = 5.0, system_id: int | None = None, link: MavlinkLink | None = None,
                 conn=None, send_lock=None, source_system: int = 1, source_component: int | None = None,
                 heartbeat_s: float = 1.0):
        if not stale_s > 0:
            raise ValueError(f"stale_s must be > 0 seconds, got {stale_s}")
        if request_hz < 0:
            raise ValueError(f"request_hz must be >= 0 (0: do not ask the autopilot), got {request_hz}")
        if link is None and conn is None and not url:
            raise ValueError("give the autopilot's MAVLink address (e.g. udpin:0.0.0.0:14551 or /dev/ttyTHS1)")
        _dialect()  # pymavlink present (an error naming the install otherwise)
        if link is None and conn is not None:
            link = MavlinkLink.adopt(conn, send_lock, url or getattr(conn, "address", "shared connection"))
        elif link is None:
            link = shared_link(url, baud=baud, source_system=source_system, source_component=source_component,
                               heartbeat_s=heartbeat_s)
        self.link = link
        self.url = url or link.url
        self.stale_s = float(stale_s)
        self.request_hz = float(request_hz)
        self.system_id = system_id
        self.conn = link.conn
        self.send_lock = link.send_lock
        self._lock = threading.Lock()
        self._latest: dict[str, tuple[float, float, int]] = {}  # source -> (metres, monotonic time, sysid)
        self._headings: dict[str, tuple[float, float, int]] = {}  # source -> (degrees, monotonic time, sysid)
        self._global: tuple | None = None  # GLOBAL_POSITION_INT: (alt MSL m or None, relative alt m, vz m/s, time)
        self._origin: tuple[float, float, float] | None = None  # GPS_GLOBAL_ORIGIN: lat, lon, alt MSL
        self.attitudes = AttitudeHistory("attitude")  # ATTITUDE: the airframe
        self.gimbal = AttitudeHistory("gimbal")  # GIMBAL_DEVICE_ATTITUDE_STATUS
        self._requested: set[tuple[int, int]] = set()
        self._last_boot_ms: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.messages = 0
        self.requests_sent = 0

    def describe(self, what: str = "altitude") -> str:
        return f"{what} from the autopilot at {self.url} (stale after {self.stale_s:g} s)"

    # ---- state --------------------------------------------------------------------------------
    def handle(self, msg, now: float | None = None) -> None:
        """Take one received message (the reader thread calls this; public so a caller that already
        reads the link can feed it)."""
        now = time.monotonic() if now is None else now
        kind = msg.get_type()
        sysid = msg.get_srcSystem()
        if kind == "HEARTBEAT":
            self._on_heartbeat(msg)
            return
        if self.system_id is not None and sysid != self.system_id:
            return
        self._note_global(msg, kind, now)
        if kind == "ATTITUDE":
            self.attitudes.add_message(msg, now)
        elif kind == "GIMBAL_DEVICE_ATTITUDE_STATUS":
            self.gimbal.add_message(msg, now)
        values = readings_from_message(msg)
        headings = headings_from_message(msg)
        if not values and not headings:
            return
        with self._lock:
            for source, metres in values.items():
                self._latest[source] = (metres, now, sysid)
            for source, deg in headings.items():
                self._headings[source] = (deg, now, sysid)

    def current(self, now: float | None = None) -> AltitudeReading | None:
        """The best fresh reading, or ``None`` when every source is older than ``stale_s`` (or absent)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            for source in SOURCES:
                if source in self._latest:
                    metres, t, sysid = self._latest[source]
                    age = now - t
                    if age <= self.stale_s:
                        return AltitudeReading(metres, source, max(age, 0.0), sysid)
        return None

    def heading(self, now: float | None = None) -> HeadingReading | None:
        """The airframe's heading from the best fresh source, or ``None`` when all are stale (or absent)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            for source in HEADING_SOURCES:
                if source in self._headings:
                    deg, t, sysid = self._headings[source]
                    age = now - t
                    if age <= self.stale_s:
                        return HeadingReading(deg, source, max(age, 0.0), sysid)
        return None

    # ---- what the autopilot outputs need: MSL altitude, height above home, the EKF origin --------------
    def _note_global(self, msg, kind: str, now: float) -> None:
        """Keep GLOBAL_POSITION_INT's altitudes and vertical velocity, and the autopilot's GPS_GLOBAL_ORIGIN."""
        if kind == "GLOBAL_POSITION_INT":
            known = msg.lat != 0 or msg.lon != 0  # ArduPilot sends zeros while it has no position
            with self._lock:
                self._global = (msg.alt / 1000.0 if known else None, msg.relative_alt / 1000.0, msg.vz / 100.0, now)
        elif kind == "GPS_GLOBAL_ORIGIN":
            with self._lock:
                self._origin = (msg.latitude * 1e-7, msg.longitude * 1e-7, msg.altitude / 1000.0)

    def _fresh_global(self, now: float | None):
        now = time.monotonic() if now is None else now
        with self._lock:
            g = self._global
        return g if g is not None and now - g[3] <= self.stale_s else None

    def msl(self, now: float | None = None) -> tuple[float, float] | None:
        """(altitude above mean sea level m, vertical velocity m/s positive down) from GLOBAL_POSITION_INT
        while fresh and while the autopilot has a position; else None."""
        g = self._fresh_global(now)
        return None if g is None or g[0] is None else (g[0], g[2])

    def above_home(self, now: float | None = None) -> tuple[float, float] | None:
        """(height above home m, vertical velocity m/s positive down) from GLOBAL_POSITION_INT while fresh."""
        g = self._fresh_global(now)
        return None if g is None else (g[1], g[2])

    def origin(self) -> tuple[float, float, float] | None:
        """The autopilot's EKF origin (lat, lon deg, altitude m MSL) once it reported one (GPS_GLOBAL_ORIGIN)."""
        with self._lock:
            return self._origin
    def attitude_at(self, t: float, link_delay_s: float = 0.0) -> AttitudeAt | None:
        """The airframe's attitude (``ATTITUDE``) at capture time ``t`` (``time.monotonic()`` clock), the
        samples placed on that clock with the link's one-way delay; None when none is near enough."""
        return self.attitudes.at(t, link_delay_s)

    def gimbal_at(self, t: float, link_delay_s: float = 0.0) -> AttitudeAt | None:
        """The gimbal's attitude (``GIMBAL_DEVICE_ATTITUDE_STATUS``) at capture time ``t``, as
        :meth:`attitude_at`."""
        return self.gimbal.at(t, link_delay_s)

    def status(self, now: float | None = None) -> dict:
        """For health: the readings in use (or None) and every source's last value and age."""
        now = time.monotonic() if now is None else now
        cur, hdg = self.current(now), self.heading(now)
        with self._lock:
            sources = {s: {"altitude_m": round(v, 3), "age_s": round(now - t, 3)}
                       for s, (v, t, _) in self._latest.items()}
            heading_sources = {s: {"heading_deg": round(v, 3), "age_s": round(now - t, 3)}
                               for s, (v, t, _) in self._headings.items()}
        return {"url": self.url, "current": cur.as_dict() if cur else None, "sources": sources,
                "heading": hdg.as_dict() if hdg else None, "heading_sources": heading_sources,
                "messages": self.messages, "stale_s": self.stale_s}

    # ---- the link -----------------------------------------------------------------------------
    def _on_heartbeat(self, msg) -> None:
        """Ask an autopilot that appears (or reboots) to stream the altitude and attitude messages."""
        M = _dialect()
        if msg.autopilot == M.MAV_AUTOPILOT_INVALID or msg.type == M.MAV_TYPE_GCS or not self.request_hz:
            return
        key = (msg.get_srcSystem(), msg.get_srcComponent())
        if self.system_id is not None and key[0] != self.system_id:
            return
        if key in self._requested:
            return
        self._requested.add(key)
        interval_us = int(round(1e6 / self.request_hz))
        for name in STREAMED:
            self.link.send("command_long", key[0], key[1], M.MAV_CMD_SET_MESSAGE_INTERVAL, 0,
                           getattr(M, f"MAVLINK_MSG_ID_{name}"), interval_us, 0, 0, 0, 0, 0)
            self.requests_sent += 1
        logger.info("asked autopilot %d/%d for GLOBAL_POSITION_INT, DISTANCE_SENSOR, ALTITUDE, ATTITUDE at %g Hz",
                    key[0], key[1], self.request_hz)

    def _note_reboot(self, msg) -> None:
        """A time_boot_ms that goes backwards means the autopilot restarted: ask for the streams again."""
        boot_ms = getattr(msg, "time_boot_ms", None)
        if boot_ms is None:
            return
        sysid = msg.get_srcSystem()
        if boot_ms + 1000 < self._last_boot_ms.get(sysid, 0):
            self._requested = {k for k in self._requested if k[0] != sysid}
        self._last_boot_ms[sysid] = boot_ms

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.link.heartbeat()  # rate-limited by the link, whoever else sends it
                msg = self.link.recv(timeout=0.2)
            except Exception as e:  # a link error must not end the reader: log and retry
                if self._stop.is_set():
                    return
                logger.warning("autopilot link %s: %s", self.url, e)
                self._stop.wait(0.5)
                continue
            if msg is None or msg.get_type() == "BAD_DATA":
                continue
            self.messages += 1
            self._note_reboot(msg)
            self.handle(msg)

    def start(self) -> AutopilotReader:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="autopilot-reader", daemon=True)
            self._thread.start()
            logger.info("reading %s", self.describe("altitude and heading"))
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        self.link.close()


AutopilotAltitude = AutopilotReader  # its first name (altitude only); same class
