"""The track as a GNSS receiver on a serial port (or a pseudo-terminal): for autopilots without ``GPS_INPUT``.

PX4 has no ``GPS_INPUT`` handler; its GPS driver reads a u-blox receiver (UBX) or an NMEA receiver on a
serial port. :class:`GnssSerialOutput` is that receiver: wire the companion computer's UART to the
autopilot's GPS port (or run PX4 SITL on a pseudo-terminal) and it writes one epoch per solution of the
output scheduler (a steady rate, >= 5 Hz: PX4's ``gps`` module reconfigures a receiver silent for 500 ms):

- UBX (``"ubx"``): ``NAV-DOP`` then ``NAV-PVT``. PX4's driver completes an epoch at NAV-PVT and publishes at
  once: a NAV-DOP after it would go into the next publication. NAV-PVT carries time, ``fixType``/
  ``gnssFixOK``, ``numSV``, lat/lon, ``hMSL``, ``hAcc``/``vAcc``, ``velN``/``velE``/``velD``, ``gSpeed``,
  ``headMot``, ``sAcc``, ``headAcc``, ``pDOP``; NAV-DOP the ``hDOP``/``vDOP`` PX4 takes its PDOP from.
  PX4's driver configures the receiver first and gives up without answers, so the output answers like a
  receiver: ``ACK-ACK`` to every ``CFG-*`` message it reads (``CFG-VALSET`` included: the driver tries it
  first and waits 2 s for its answer before falling back to the older protocol) and a ``MON-VER`` (a
  u-blox 9, protocol 27) to a ``MON-VER`` poll (per PX4-GPSDrivers ``src/ubx.cpp``; ``respond=False``
  turns it off). Frames are read raw and their checksum checked here: a receiver's input messages
  (``CFG-VALSET`` with any keys) are not messages a parser of the receiver's output knows.
- NMEA 0183 (``"nmea"``): ``GST`` (the 1-sigma latitude/longitude/height errors: PX4 takes ``eph``/``epv``
  only from GST), ``GSA`` (fix mode, PDOP/HDOP/VDOP), ``GGA`` (position, quality, satellites, HDOP, MSL
  altitude), ``RMC`` (status, speed, course, date) in that order: PX4's NMEA driver publishes once a
  position and a velocity came, which is at RMC, so everything of the epoch is in its publication. NMEA
  has no speed accuracy: PX4 takes 0 (a perfect velocity) from RMC; ArduPilot's NMEA driver needs GGA and
  RMC. Prefer UBX for PX4.

The values and their stand-ins are those of the :class:`~runtime.outputs.gnss_solution.GnssSolution`.
Velocities are NED (``velN`` north, ``velE`` east, ``velD`` down, mm/s); without a velocity ``velN``/
``velE`` are 0 with ``sAcc`` ``SACC_UNKNOWN_MPS``. The altitude is the MSL altitude source's
(:mod:`runtime.outputs.vertical`) with its accuracy in ``vAcc`` and the GST height error; without one
``hMSL`` is 0 and ``vAcc`` ``VACC_UNKNOWN_M``, so no EKF trusts it (PX4 then needs ``EKF2_GPS_CHECK`` without
its vertical bits). ``height`` (above the ellipsoid) equals ``hMSL``: the geoid separation is not known.
No fix: ``NAV-PVT`` with ``fixType`` 0 and ``gnssFixOK`` clear, ``GGA`` quality 0, ``RMC`` status V, GSA mode 1.

The port is a serial device's path (pyserial) or any object with ``write``/``close``: the replay's
recorder (:mod:`runtime.outputs.recorders`) takes the same bytes. Libraries: pyubx2 builds UBX, pynmea2
renders NMEA with its checksum, pyserial opens the port (``pip install 'geoloc-edge[gnss]'``).
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone

from runtime.outputs.gnss_solution import DEFAULT_SATELLITES, VACC_UNKNOWN_M, GnssSolution, solution_from_fix

logger = logging.getLogger(__name__)

PROTOCOLS = ("ubx", "nmea")
PIP_HINT = "pip install 'geoloc-edge[gnss]'"
KNOTS_PER_MPS = 3600.0 / 1852.0
# MON-VER: swVersion (30 bytes), hwVersion (10; "00190000" is a u-blox 9 to PX4), extensions (30 each)
SACC_UNKNOWN_MPS = 50.0  # sAcc when the filter has no velocity (or no accuracy for it): NAV-PVT has no "unknown"
MON_VER_PAYLOAD = b"".join(t.ljust(n, b"\0") for t, n in ((b"EXT CORE 1.00 (geoloc-edge)", 30), (b"00190000", 10),
                                                          (b"FWVER=HPG 1.32", 30), (b"PROTVER=27.31", 30)))


def _libs():
    try:
        import pynmea2
        import pyubx2
        import serial
    except ImportError as e:
        raise ImportError(f"the GNSS serial output needs pyubx2, pynmea2 and pyserial: `{PIP_HINT}`") from e
    return pyubx2, pynmea2, serial


def _utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, tz=timezone.utc)


def ubx_messages(s: GnssSolution) -> list[bytes]:
    """NAV-DOP and NAV-PVT for a solution, serialized, in the order PX4's driver wants them."""
    pyubx2 = _libs()[0]
    d = _utc(s.time_unix)
    week, week_ms = s.week_ms
    vel = s.has_velocity
    pvt = dict(iTOW=week_ms, year=d.year, month=d.month, day=d.day, hour=d.hour, min=d.minute, second=d.second,
               validDate=1, validTime=1, fullyResolved=1, tAcc=1_000_000, nano=d.microsecond * 1000,
               fixType=3 if s.valid else 0, gnssFixOk=int(s.valid), numSV=s.satellites if s.valid else 0,
               confirmedAvai=1, confirmedDate=1, confirmedTime=1)
    if s.valid:
        alt_mm = int(round((s.alt_msl_m if s.has_altitude else 0.0) * 1000))
        speed_acc = s.speed_acc_mps if vel and s.speed_acc_mps is not None else SACC_UNKNOWN_MPS
        v_acc = s.v_acc_m if s.has_altitude else VACC_UNKNOWN_M
        pvt.update(lon=s.lon_deg, lat=s.lat_deg, height=alt_mm, hMSL=alt_mm, hAcc=int(round(s.h_acc_m * 1000)),
                   vAcc=int(round(v_acc * 1000)), velN=int(round((s.vel_n_mps or 0.0) * 1000)),
                   velE=int(round((s.vel_e_mps or 0.0) * 1000)), velD=int(round((s.vel_d_mps or 0.0) * 1000)),
                   gSpeed=int(round(s.ground_speed_mps * 1000)), headMot=s.course_deg,
                   sAcc=int(round(speed_acc * 1000)), headAcc=180.0 if s.ground_speed_mps < 0.5 else 10.0,
                   pDOP=s.pdop)
        if s.yaw_deg is not None:
            pvt.update(headVehValid=1, headVeh=s.yaw_deg)
    else:
        pvt.update(hAcc=0xFFFFFFFF, vAcc=0xFFFFFFFF, sAcc=0xFFFFFFFF, headAcc=180.0, pDOP=99.99, invalidLlh=1)
    dop = dict(iTOW=week_ms, gDOP=s.pdop, pDOP=s.pdop, tDOP=s.hdop, vDOP=s.vdop, hDOP=s.hdop, nDOP=s.hdop,
               eDOP=s.hdop)
    return [pyubx2.UBXMessage("NAV", "NAV-DOP", pyubx2.GET, **dop).serialize(),
            pyubx2.UBXMessage("NAV", "NAV-PVT", pyubx2.GET, **pvt).serialize()]


def _dm(deg: float, lat: bool) -> tuple[str, str]:
    """NMEA (d)ddmm.mmmmmmm and hemisphere."""
    a = abs(deg)
    d = int(a)
    m = (a - d) * 60.0
    if round(m, 7) >= 60.0:
        d, m = d + 1, 0.0
    txt = f"{d:02d}{m:010.7f}" if lat else f"{d:03d}{m:010.7f}"
    return txt, ("N" if deg >= 0 else "S") if lat else ("E" if deg >= 0 else "W")


def nmea_sentences(s: GnssSolution, talker: str = "GP") -> list[str]:
    """GST (valid only), GSA, GGA and RMC for a solution, each rendered with its checksum (no line ending)."""
    pynmea2 = _libs()[1]
    d = _utc(round(s.time_unix * 100.0) / 100.0)  # NMEA's hundredths of a second, rounded (not cut)
    hms = d.strftime("%H%M%S") + f".{d.microsecond // 10000:02d}"
    lat, ns = _dm(s.lat_deg, True) if s.valid else ("", "")
    lon, ew = _dm(s.lon_deg, False) if s.valid else ("", "")
    knots = f"{s.ground_speed_mps * KNOTS_PER_MPS:.3f}" if s.valid and s.has_velocity else ""
    course = f"{s.course_deg:.2f}" if s.valid and s.has_velocity else ""
    mode = ("A" if s.valid else "N")
    alt = (f"{s.alt_msl_m:.2f}" if s.has_altitude else "0.00") if s.valid else ""
    dop = (f"{s.pdop:.2f}", f"{s.hdop:.2f}", f"{s.vdop:.2f}") if s.valid else ("", "", "")
    sats = f"{s.satellites:02d}" if s.valid else "00"
    rows = []
    if s.valid:
        v_acc = s.v_acc_m if s.has_altitude else VACC_UNKNOWN_M
        smaj, smin = max(s.sigma_n_m, s.sigma_e_m), min(s.sigma_n_m, s.sigma_e_m)
        orient = "0.0" if s.sigma_n_m >= s.sigma_e_m else "90.0"
        rows.append(("GST", (hms, "", f"{smaj:.2f}", f"{smin:.2f}", orient, f"{s.sigma_n_m:.2f}",
                             f"{s.sigma_e_m:.2f}", f"{v_acc:.2f}")))
    rows += [
        ("GSA", ("A", "3" if s.valid else "1", *[""] * 12, *dop)),
        ("GGA", (hms, lat, ns, lon, ew, "1" if s.valid else "0", sats, dop[1], alt, "M", "0.0", "M", "", "")),
        ("RMC", (hms, "A" if s.valid else "V", lat, ns, lon, ew, knots, course, d.strftime("%d%m%y"), "", "", mode)),
    ]
    return [str(pynmea2.TalkerSentence.sentence_types[kind](talker, kind, fields)) for kind, fields in rows]


def epoch_bytes(s: GnssSolution, protocols) -> bytes:
    """One epoch of ``protocols`` (UBX first) for a solution, as it goes down the wire."""
    data = b""
    if "ubx" in protocols:
        data += b"".join(ubx_messages(s))
    if "nmea" in protocols:
        data += "".join(line + "\r\n" for line in nmea_sentences(s)).encode("ascii")
    return data


def parse_protocols(protocols) -> tuple[str, ...]:
    got = tuple(p.strip().lower() for p in (protocols.split(",") if isinstance(protocols, str) else protocols))
    bad = [p for p in got if p not in PROTOCOLS]
    if bad or not got:
        raise ValueError(f"GNSS protocols must be some of {PROTOCOLS}, got {got!r} (e.g. 'ubx,nmea')")
    return got


def _open_serial(port: str, baud: int):
    serial = _libs()[2]
    try:
        return serial.Serial(port, baudrate=int(baud), timeout=0.2, write_timeout=1.0)
    except (serial.SerialException, ValueError) as e:
        raise ValueError(f"cannot open the GNSS serial port {port!r}: {e}; give the UART wired to the "
                         "autopilot's GPS port (e.g. /dev/ttyTHS2) or a pseudo-terminal") from e


def ubx_frames(read, stop: threading.Event):
    """Checksummed UBX frames from ``read(n) -> bytes`` (a serial port's), until ``stop``; garbage between
    frames is skipped."""
    calc_checksum = _libs()[0].calc_checksum
    buf = bytearray()
    while not stop.is_set():
        chunk = read(256)
        if not chunk:
            continue
        buf += chunk
        while True:
            i = buf.find(b"\xb5\x62")
            if i < 0:
                del buf[:-1]
                break
            del buf[:i]
            if len(buf) < 8:
                break
            n = buf[4] | (buf[5] << 8)
            if n > 4096:
                del buf[:2]
                continue
            if len(buf) < n + 8:
                break
            frame = bytes(buf[:n + 8])
            if calc_checksum(frame[2:-2]) == frame[-2:]:
                del buf[:n + 8]
                yield frame
            else:
                del buf[:2]


class GnssSerialOutput:
    """A GNSS receiver on ``port`` (a serial device or a pseudo-terminal's path at ``baud``, or an object
    with ``write``/``close``) speaking ``protocols`` (module docstring). ``send_solution(s)`` writes one epoch."""

    def __init__(self, port, *, baud: int = 115200, protocols=PROTOCOLS, respond: bool = True,
                 satellites: int = DEFAULT_SATELLITES, camera_yaw_offset_deg: float = 0.0):
        self.protocols = parse_protocols(protocols)
        if isinstance(port, str):
            self.ser, self.port = _open_serial(port, baud), port
        else:
            self.ser, self.port = port, getattr(port, "name", "a recorder")
            respond = False
        self.baud = int(baud)
        self.satellites = int(satellites)  # for send_fix (a direct use without the scheduler)
        self.camera_yaw_offset_deg = float(camera_yaw_offset_deg)
        self.lock = threading.Lock()
        self.epochs = 0
        self.acks = 0
        self.answered: dict[str, int] = {}  # what the receiver answered, by message name
        self._stop = threading.Event()
        self._thread = None
        if respond and "ubx" in self.protocols:
            self._thread = threading.Thread(target=self._answer, name="gnss-ubx-answer", daemon=True)
            self._thread.start()

    def describe(self) -> str:
        return f"GNSS receiver ({'+'.join(p.upper() for p in self.protocols)}) on {self.port} at {self.baud} baud"

    def send_solution(self, s: GnssSolution, now_unix: float | None = None) -> bytes:
        data = epoch_bytes(s, self.protocols)
        self._write(data)
        self.epochs += 1
        return data

    def send_fix(self, fix, unix_time: float | None = None) -> bytes:
        """One fix as it stands, at its capture time (no prediction): a direct use without the scheduler."""
        return self.send_solution(solution_from_fix(fix, time_unix=time.time() if unix_time is None else unix_time,
                                                    satellites=self.satellites,
                                                    camera_yaw_offset_deg=self.camera_yaw_offset_deg))

    def _write(self, data: bytes) -> None:
        with self.lock:
            self.ser.write(data)

    def _answer(self) -> None:
        """Answer the autopilot's receiver configuration: ACK-ACK every CFG-*, MON-VER to its poll."""
        pyubx2 = _libs()[0]
        def read(_n: int) -> bytes:  # what has come, waiting at most the port's timeout for its first byte
            first = self.ser.read(1)
            return first + self.ser.read(self.ser.in_waiting) if first else first

        try:
            for frame in ubx_frames(read, self._stop):
                cls, mid = frame[2], frame[3]
                if cls == 0x06:  # CFG
                    out = pyubx2.UBXMessage("ACK", "ACK-ACK", pyubx2.GET, clsID=cls, msgID=mid)
                    self.acks += 1
                    name = "CFG-VALSET" if mid == 0x8A else f"CFG-0x{mid:02X}"
                elif (cls, mid) == (0x0A, 0x04) and len(frame) == 8:  # MON-VER poll (empty payload)
                    out = pyubx2.UBXMessage("MON", "MON-VER", pyubx2.GET, payload=MON_VER_PAYLOAD)
                    name = "MON-VER"
                else:
                    continue
                self.answered[name] = self.answered.get(name, 0) + 1
                self._write(out.serialize())
        except Exception as e:  # a closed port: the answering ends with the output
            if not self._stop.is_set():
                logger.warning("the GNSS receiver's answers stopped: %s", e)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        with self.lock:
            self.ser.close()
