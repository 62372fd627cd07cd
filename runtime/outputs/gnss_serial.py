"""Fixes as a GNSS receiver on a serial port (or a pseudo-terminal): for autopilots without ``GPS_INPUT``.

PX4 has no ``GPS_INPUT`` handler; its GPS driver reads a u-blox receiver (UBX) or an NMEA receiver on a
serial port. :class:`GnssSerialOutput` is that receiver: wire the companion computer's UART to the
autopilot's GPS port (or run PX4 SITL on a pseudo-terminal) and it writes, per fix:

- UBX (``"ubx"``): ``NAV-PVT`` (time, ``fixType``/``gnssFixOK``, ``numSV``, lat/lon, ``hMSL``, ``hAcc``/
  ``vAcc``, ``velN``/``velE``/``velD``, ``gSpeed``, ``headMot``, ``sAcc``, ``headAcc``, ``pDOP``: what PX4's
  u-blox driver reads from it) and ``NAV-DOP`` (PX4 takes ``hdop``/``vdop`` from it, EKF2 its PDOP from
  those). PX4's driver configures the receiver first and gives up on it without answers, so the output
  also answers like a receiver: ``ACK-ACK`` to every ``CFG-*`` message and a ``MON-VER`` (a u-blox 9,
  protocol 27) to a ``MON-VER`` poll (per PX4-GPSDrivers ``src/ubx.cpp``; ``respond=False`` turns it off).
- NMEA 0183 (``"nmea"``): ``GGA`` (position, quality, satellites, HDOP, MSL altitude), ``RMC`` (status,
  speed, course, date), ``GSA`` (fix mode, PDOP/HDOP/VDOP), ``VTG`` (course, speed) and ``GST`` (the 1-sigma
  latitude/longitude/height errors: PX4's NMEA driver takes ``eph``/``epv`` only from GST). NMEA has no
  speed accuracy: PX4's NMEA driver sets it to 0 (a perfect velocity), and reads an empty speed as 0 m/s,
  so without a velocity from the filter PX4 would fuse "standing still" as exact; prefer UBX for PX4.

The values and their stand-ins (satellites, DOPs, accuracy, the capture time) are those of
:func:`runtime.outputs.gnss_solution.solution_from_fix`; velocities are NED (``velN`` north, ``velE`` east, mm/s;
``velD`` 0: NAV-PVT has no "unknown"; without a filter velocity ``velN``/``velE`` are 0 with ``sAcc``
``SACC_UNKNOWN_MPS``). The vertical is not measured: ``hMSL`` is the given MSL
altitude or 0, ``vAcc`` and the GST height error are ``VACC_UNKNOWN_M`` so no EKF trusts it (PX4: keep
``EKF2_HGT_REF`` on the barometer and drop the vertical checks from ``EKF2_GPS_CHECK``, README).
No trusted fix: ``NAV-PVT`` with ``fixType`` 0 and ``gnssFixOK`` clear, ``GGA`` quality 0, ``RMC`` status V.

Libraries: pyubx2 builds and parses UBX, pynmea2 renders NMEA with its checksum, pyserial opens the port
(``pip install 'geoloc-edge[gnss]'``).
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
    """NAV-PVT and NAV-DOP for a solution, serialized."""
    pyubx2 = _libs()[0]
    d = _utc(s.time_unix)
    week, week_ms = s.week_ms
    nano = d.microsecond * 1000
    vel = s.has_velocity
    pvt = dict(iTOW=week_ms, year=d.year, month=d.month, day=d.day, hour=d.hour, min=d.minute, second=d.second,
               validDate=1, validTime=1, fullyResolved=1, tAcc=1_000_000, nano=nano,
               fixType=3 if s.valid else 0, gnssFixOk=int(s.valid), numSV=s.satellites if s.valid else 0,
               confirmedAvai=1, confirmedDate=1, confirmedTime=1)
    if s.valid:
        alt_mm = int(round((s.alt_msl_m or 0.0) * 1000))
        speed_acc = s.speed_acc_mps if vel and s.speed_acc_mps is not None else SACC_UNKNOWN_MPS
        pvt.update(lon=s.lon_deg, lat=s.lat_deg, height=alt_mm, hMSL=alt_mm, hAcc=int(round(s.h_acc_m * 1000)),
                   vAcc=int(VACC_UNKNOWN_M * 1000) if s.alt_msl_m is None else int(round(s.h_acc_m * 1500)),
                   velN=int(round((s.vel_n_mps or 0.0) * 1000)), velE=int(round((s.vel_e_mps or 0.0) * 1000)),
                   velD=0, gSpeed=int(round(s.ground_speed_mps * 1000)), headMot=s.course_deg,
                   sAcc=int(round(speed_acc * 1000)), headAcc=180.0 if s.ground_speed_mps < 0.5 else 10.0,
                   pDOP=s.pdop)
        if s.yaw_deg is not None:
            pvt.update(headVehValid=1, headVeh=s.yaw_deg)
    else:
        pvt.update(hAcc=0xFFFFFFFF, vAcc=0xFFFFFFFF, sAcc=0xFFFFFFFF, headAcc=180.0, pDOP=99.99, invalidLlh=1)
    dop = dict(iTOW=week_ms, gDOP=s.pdop, pDOP=s.pdop, tDOP=s.hdop, vDOP=s.vdop, hDOP=s.hdop, nDOP=s.hdop,
               eDOP=s.hdop) if s.valid else dict(iTOW=week_ms, gDOP=99.99, pDOP=99.99, tDOP=99.99, vDOP=99.99,
                                                  hDOP=99.99, nDOP=99.99, eDOP=99.99)
    return [pyubx2.UBXMessage("NAV", "NAV-PVT", pyubx2.GET, **pvt).serialize(),
            pyubx2.UBXMessage("NAV", "NAV-DOP", pyubx2.GET, **dop).serialize()]


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
    """GGA, RMC, GSA, VTG and GST for a solution, each rendered with its checksum (no line ending)."""
    pynmea2 = _libs()[1]
    d = _utc(s.time_unix)
    hms = d.strftime("%H%M%S") + f".{d.microsecond // 10000:02d}"
    lat, ns = _dm(s.lat_deg, True) if s.valid else ("", "")
    lon, ew = _dm(s.lon_deg, False) if s.valid else ("", "")
    knots = f"{s.ground_speed_mps * KNOTS_PER_MPS:.3f}" if s.valid and s.has_velocity else ""
    kph = f"{s.ground_speed_mps * 3.6:.3f}" if s.valid and s.has_velocity else ""
    course = f"{s.course_deg:.2f}" if s.valid and s.has_velocity else ""
    mode = ("A" if s.valid else "N")
    alt = f"{s.alt_msl_m:.2f}" if s.valid and s.alt_msl_m is not None else ("0.00" if s.valid else "")
    dop = (f"{s.pdop:.2f}", f"{s.hdop:.2f}", f"{s.vdop:.2f}") if s.valid else ("", "", "")
    sats = f"{s.satellites:02d}" if s.valid else "00"
    vacc = VACC_UNKNOWN_M if s.alt_msl_m is None else 1.5 * s.h_acc_m
    smaj = max(s.sigma_n_m, s.sigma_e_m)
    smin = min(s.sigma_n_m, s.sigma_e_m)
    orient = "0.0" if s.sigma_n_m >= s.sigma_e_m else "90.0"
    rows = [
        ("GGA", (hms, lat, ns, lon, ew, "1" if s.valid else "0", sats, dop[1], alt, "M", "0.0", "M", "", "")),
        ("RMC", (hms, "A" if s.valid else "V", lat, ns, lon, ew, knots, course, d.strftime("%d%m%y"), "", "", mode)),
        ("GSA", ("A", "3" if s.valid else "1", *[""] * 12, *dop)),
        ("VTG", (course, "T", "", "M", knots, "N", kph, "K", mode)),
    ]
    if s.valid:
        rows.append(("GST", (hms, "", f"{smaj:.2f}", f"{smin:.2f}", orient, f"{s.sigma_n_m:.2f}",
                             f"{s.sigma_e_m:.2f}", f"{vacc:.2f}")))
    return [str(pynmea2.TalkerSentence.sentence_types[kind](talker, kind, fields)) for kind, fields in rows]


class GnssSerialOutput:
    """A GNSS receiver on ``port`` (a serial device or a pseudo-terminal's path) at ``baud``, speaking
    ``protocols`` (see the module docstring). ``emit(record, fix)`` writes one epoch per fix."""

    def __init__(self, port: str, *, baud: int = 115200, protocols=PROTOCOLS, satellites: int = DEFAULT_SATELLITES,
                 camera_yaw_offset_deg: float = 0.0, altitude_msl_m: float | None = None, respond: bool = True):
        protocols = tuple(p.strip().lower() for p in (protocols.split(",") if isinstance(protocols, str)
                                                     else protocols))
        bad = [p for p in protocols if p not in PROTOCOLS]
        if bad or not protocols:
            raise ValueError(f"GNSS protocols must be some of {PROTOCOLS}, got {protocols!r} (e.g. 'ubx,nmea')")
        serial = _libs()[2]
        try:
            self.ser = serial.Serial(port, baudrate=int(baud), timeout=0.2, write_timeout=1.0)
        except (serial.SerialException, ValueError) as e:
            raise ValueError(f"cannot open the GNSS serial port {port!r}: {e}; give the UART wired to the "
                             "autopilot's GPS port (e.g. /dev/ttyTHS2) or a pseudo-terminal") from e
        self.port, self.baud, self.protocols = port, int(baud), protocols
        self.satellites = int(satellites)
        self.camera_yaw_offset_deg = float(camera_yaw_offset_deg)
        self.altitude_msl_m = altitude_msl_m
        self.lock = threading.Lock()
        self.epochs = 0
        self.acks = 0
        self._stop = threading.Event()
        self._thread = None
        if respond and "ubx" in protocols:
            self._thread = threading.Thread(target=self._answer, name="gnss-ubx-answer", daemon=True)
            self._thread.start()

    def describe(self) -> str:
        return f"GNSS receiver ({'+'.join(p.upper() for p in self.protocols)}) on {self.port} at {self.baud} baud"

    def solution(self, fix, unix_time: float | None = None) -> GnssSolution:
        return solution_from_fix(fix, time_unix=time.time() if unix_time is None else unix_time,
                                 altitude_msl_m=self.altitude_msl_m, satellites=self.satellites,
                                 camera_yaw_offset_deg=self.camera_yaw_offset_deg)

    def write_solution(self, s: GnssSolution) -> bytes:
        data = b""
        if "ubx" in self.protocols:
            data += b"".join(ubx_messages(s))
        if "nmea" in self.protocols:
            data += "".join(line + "\r\n" for line in nmea_sentences(s)).encode("ascii")
        self._write(data)
        self.epochs += 1
        return data

    def emit(self, record: dict, fix) -> None:
        """The service's output call (fix None: the summary record, not an epoch)."""
        if fix is None:
            return
        self.write_solution(self.solution(fix, record.get("time_utc")))

    def _write(self, data: bytes) -> None:
        with self.lock:
            self.ser.write(data)

    def _answer(self) -> None:
        """Answer the autopilot's receiver configuration: ACK-ACK every CFG-*, MON-VER to its poll."""
        pyubx2 = _libs()[0]
        reader = pyubx2.UBXReader(self.ser, protfilter=pyubx2.UBX_PROTOCOL, quitonerror=pyubx2.ERR_IGNORE)
        while not self._stop.is_set():
            try:
                raw, msg = reader.read()
            except Exception as e:  # a closed port or garbage: keep serving until closed
                if self._stop.is_set():
                    return
                logger.debug("gnss answer: %s", e)
                continue
            if raw is None or msg is None:
                continue
            cls, mid = raw[2], raw[3]
            if cls == 0x06:  # CFG
                out = pyubx2.UBXMessage("ACK", "ACK-ACK", pyubx2.GET, clsID=cls, msgID=mid)
                self.acks += 1
            elif (cls, mid) == (0x0A, 0x04) and len(raw) == 8:  # MON-VER poll (empty payload)
                out = pyubx2.UBXMessage("MON", "MON-VER", pyubx2.GET, payload=MON_VER_PAYLOAD)
            else:
                continue
            self._write(out.serialize())

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        with self.lock:
            self.ser.close()
