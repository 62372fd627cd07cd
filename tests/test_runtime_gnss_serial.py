"""The emulated GNSS receiver over a real pseudo-terminal pair (os.openpty): what the runtime writes is
decoded with pyubx2 (UBX) and pynmea2 (NMEA), in the order PX4's drivers complete an epoch, and it answers
a u-blox driver's configuration (CFG-VALSET included)."""

from __future__ import annotations

import math
import time
from datetime import datetime, timezone

import pytest

from runtime.localisation.fix import Fix
from runtime.outputs.gnss_solution import VACC_UNKNOWN_M, gps_week_ms, solution_from_fix
from tests.trajectory import fix_for, ground_m, truth

pyubx2 = pytest.importorskip("pyubx2")
pynmea2 = pytest.importorskip("pynmea2")
pytest.importorskip("serial")

from runtime.outputs.gnss_serial import SACC_UNKNOWN_MPS, GnssSerialOutput  # noqa: E402
from tests.fakes.gnss_port import PtyPeer, decode  # noqa: E402

KNOT = 1852.0 / 3600.0


@pytest.fixture
def pty():
    p = PtyPeer()
    yield p
    p.close()


def _epochs(pty, fixes, protocols="ubx,nmea", altitude=None, **kw):
    out = GnssSerialOutput(pty.path, protocols=protocols, **kw)
    try:
        sizes = [len(out.send_solution(solution_from_fix(f, time_unix=0.0, camera_yaw_offset_deg=3.0,
                                                         altitude_msl_m=altitude, v_acc_m=3.0)))
                 for f in fixes]
        data = pty.wait_bytes(sum(sizes))
    finally:
        out.close()
    assert len(data) == sum(sizes)
    return decode(data)


def test_ubx_nav_pvt_matches_the_trajectory(pty):
    fixes = [fix_for(i) for i in range(4)]
    ubx, nmea = _epochs(pty, fixes, protocols="ubx")
    # NAV-DOP first: PX4's driver publishes at NAV-PVT, a NAV-DOP after it would go into the next epoch
    assert nmea == [] and [m.identity for m in ubx] == ["NAV-DOP", "NAV-PVT"] * 4
    for i, (dop, pvt) in enumerate(zip(ubx[0::2], ubx[1::2])):
        tr = truth(i)
        d = datetime.fromtimestamp(tr["time_unix"], tz=timezone.utc)
        # time of the capture: calendar fields, nanoseconds, and iTOW of the same instant
        assert (pvt.year, pvt.month, pvt.day, pvt.hour, pvt.min, pvt.second) == \
               (d.year, d.month, d.day, d.hour, d.minute, d.second)
        assert pvt.nano == d.microsecond * 1000 and pvt.validDate and pvt.validTime and pvt.fullyResolved
        raw_itow = int.from_bytes(pvt.serialize()[6:10], "little")
        assert raw_itow == gps_week_ms(tr["time_unix"])[1] == dop_itow(dop)
        # a 3D fix PX4 takes (gnssFixOK), position within hAcc (mm) of the truth
        assert pvt.fixType == 3 and pvt.gnssFixOk == 1 and pvt.numSV == 10
        assert pvt.hAcc == 12000 and pvt.vAcc == VACC_UNKNOWN_M * 1000
        assert ground_m(tr["lat"], tr["lon"], pvt.lat, pvt.lon) <= pvt.hAcc / 1000
        # velocity NED in mm/s (north +, east -: flying north-west), its accuracy, course and speed
        assert (pvt.velN, pvt.velE, pvt.velD) == (6200, -8200, 0) and pvt.sAcc == 500
        assert pvt.gSpeed == round(math.hypot(6200, 8200))
        assert pvt.headMot == pytest.approx(math.degrees(math.atan2(-8.2, 6.2)) % 360, abs=1e-4)
        assert pvt.headVehValid == 1 and pvt.headVeh == pytest.approx(30.0, abs=1e-4)
        # DOPs: hdop = accuracy / 5 m, PX4's PDOP = sqrt(hdop^2 + vdop^2)
        assert dop.hDOP == pytest.approx(2.4) and pvt.pDOP == pytest.approx(math.hypot(2.4, 2.4), abs=0.01)


def dop_itow(dop) -> int:
    return int.from_bytes(dop.serialize()[6:10], "little")


def test_nmea_sentences_match_the_trajectory(pty):
    fixes = [fix_for(i) for i in range(3)]
    ubx, nmea = _epochs(pty, fixes, protocols="nmea", altitude=412.5)
    # PX4's NMEA driver publishes once a position and a velocity came (RMC): GST and GSA before it
    assert ubx == [] and [s.sentence_type for s in nmea] == ["GST", "GSA", "GGA", "RMC"] * 3
    for i in range(3):
        gst, gsa, gga, rmc = nmea[4 * i:4 * i + 4]
        tr = truth(i)
        d = datetime.fromtimestamp(tr["time_unix"], tz=timezone.utc)
        assert gga.timestamp == d.timetz().replace(microsecond=d.microsecond // 10000 * 10000)
        assert rmc.datestamp == d.date() and rmc.timestamp == gga.timestamp
        # GST: each axis's 1-sigma is the accuracy (PX4 takes eph as their root-sum-square: sqrt(2) x 12 m),
        # the height's the altitude source's
        assert gst.std_dev_latitude == gst.std_dev_longitude == pytest.approx(12.0, abs=0.01)
        assert gst.std_dev_altitude == pytest.approx(3.0) and float(gga.altitude) == pytest.approx(412.5)
        for s in (gga, rmc):
            assert ground_m(tr["lat"], tr["lon"], s.latitude, s.longitude) <= gst.std_dev_latitude
        assert gga.gps_qual == 1 and int(gga.num_sats) == 10 and float(gga.horizontal_dil) == pytest.approx(2.4)
        # PDOP from HDOP (12 / 5) and VDOP (3 m / 5)
        assert rmc.status == "A" and gsa.mode_fix_type == "3"
        assert float(gsa.pdop) == pytest.approx(math.hypot(2.4, 0.6), abs=0.01)
        # speed in knots and the course over ground give back the NED velocity
        v = rmc.spd_over_grnd * KNOT
        c = math.radians(rmc.true_course)
        assert v * math.cos(c) == pytest.approx(6.2, abs=0.01) and v * math.sin(c) == pytest.approx(-8.2, abs=0.01)


def test_no_trusted_fix_is_reported_as_no_fix(pty):
    untrusted = Fix(t=0.0, x=0, y=0, lat=47.0, lon=-99.0, confidence=0.1, accuracy_m=900.0, trusted=False,
                    capture_time_unix=truth(0)["time_unix"])
    ubx, nmea = _epochs(pty, [untrusted, None])
    pvts = [m for m in ubx if m.identity == "NAV-PVT"]
    assert len(pvts) == 2 and all(p.fixType == 0 and p.gnssFixOk == 0 and p.numSV == 0 for p in pvts)
    assert all(p.lat == 0 and p.lon == 0 for p in pvts)
    ggas = [s for s in nmea if s.sentence_type == "GGA"]
    rmcs = [s for s in nmea if s.sentence_type == "RMC"]
    gsas = [s for s in nmea if s.sentence_type == "GSA"]
    assert [g.gps_qual for g in ggas] == [0, 0] and [r.status for r in rmcs] == ["V", "V"]
    assert [g.mode_fix_type for g in gsas] == ["1", "1"]
    assert not [s for s in nmea if s.sentence_type == "GST"]  # no error ellipse for no position


def test_answers_a_ublox_drivers_configuration(pty):
    """PX4's u-blox driver waits for ACK-ACK to its CFG messages and for a MON-VER answer to its poll. It
    starts with a CFG-VALSET (protocol 27+) and waits 2 s for its ACK before falling back: the answering
    reader must take the messages a receiver is sent (a parser of its output dropped CFG-VALSET), with
    keys pyubx2 may not know (PX4's jamming-detection key), and skip garbage and a bad checksum."""
    out = GnssSerialOutput(pty.path, protocols="ubx,nmea")
    valset = pyubx2.UBXMessage.config_set(1, 0, [("CFG_UART1_BAUDRATE", 115200), (0x10F60051, 0)]).serialize()
    broken = bytearray(pyubx2.UBXMessage("CFG", "CFG-MSG", pyubx2.SET, msgClass=1, msgID=3, rateUART1=1).serialize())
    broken[-1] ^= 0xFF
    polls = [valset, b"\x00garbage$GPXXX", bytes(broken),
             pyubx2.UBXMessage("CFG", "CFG-MSG", pyubx2.SET, msgClass=0x01, msgID=0x07, rateUART1=1).serialize(),
             pyubx2.UBXMessage("CFG", "CFG-RATE", pyubx2.SET, measRate=100, navRate=1, timeRef=0).serialize(),
             pyubx2.UBXMessage("MON", "MON-VER", pyubx2.POLL).serialize()]
    try:
        for p in polls:
            pty.write(p)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and pty.data.count(b"\xb5\x62") < 4:
            time.sleep(0.02)
        ubx, _ = decode(bytes(pty.data))
    finally:
        out.close()
    acks = [m for m in ubx if m.identity == "ACK-ACK"]
    assert [(a.clsID, a.msgID) for a in acks] == [(0x06, 0x8A), (0x06, 0x01), (0x06, 0x08)] and out.acks == 3
    assert out.answered == {"CFG-VALSET": 1, "CFG-0x01": 1, "CFG-0x08": 1, "MON-VER": 1}
    ver = [m for m in ubx if m.identity == "MON-VER"]
    assert len(ver) == 1 and ver[0].hwVersion.rstrip(b"\0") == b"00190000"
    assert b"PROTVER=" in ver[0].extension_02


def test_bad_settings_name_the_value():
    with pytest.raises(ValueError, match=r"GNSS protocols must be some of .*'rtcm'"):
        GnssSerialOutput("/dev/null", protocols="ubx,rtcm")
    with pytest.raises(ValueError, match=r"cannot open the GNSS serial port '/dev/ttyNOPE9'.*pseudo-terminal"):
        GnssSerialOutput("/dev/ttyNOPE9")


def test_open_outputs_builds_every_output_from_the_config(tmp_path, pty):
    import json

    from runtime.config import ServiceConfig
    from runtime.outputs.json_lines import open_outputs
    from tests.loopback import free_port

    mavutil = pytest.importorskip("pymavlink.mavutil")
    port = free_port()
    listener = mavutil.mavlink_connection(f"udpin:127.0.0.1:{port}")
    cfg = ServiceConfig(bundle="b", db="d", source="s", jsonl=str(tmp_path / "f.jsonl"),
                        mavlink=f"udpout:127.0.0.1:{port}", mavlink_mode="gps_input", gps_id=1,
                        gnss_serial=pty.path, gnss_protocols="nmea")
    outs = open_outputs(cfg)
    try:
        assert [type(o).__name__ for o in outs] == ["JsonLinesOutput", "MavlinkGpsOutput", "GnssSerialOutput"]
        assert outs[2].describe() == f"GNSS receiver (NMEA) on {pty.path} at 115200 baud"
        f = fix_for(0)
        outs[0].emit({"type": "fix", "time_utc": 1.0, "fix": f.as_dict()}, f)
        outs[0].emit({"type": "summary"}, None)
        for o in outs[1:]:  # the autopilot outputs take the scheduler's solutions
            assert not hasattr(o, "emit") and hasattr(o, "send_solution")
            o.send_solution(solution_from_fix(f, time_unix=1.0))
        gps = listener.recv_match(type="GPS_INPUT", blocking=True, timeout=3)
        data = pty.wait_bytes(300)
    finally:
        for o in outs:
            o.close()
        listener.close()
    lines = [json.loads(x) for x in (tmp_path / "f.jsonl").read_text().splitlines()]
    assert [r["type"] for r in lines] == ["fix", "summary"]
    assert gps is not None and gps.fix_type == 3 and gps.gps_id == 1
    assert [s.sentence_type for s in decode(data)[1]] == ["GST", "GSA", "GGA", "RMC"]
    cfg.gnss_protocols = "sbf"
    with pytest.raises(ValueError, match="GNSS protocols"):
        open_outputs(cfg)


def test_a_fix_without_velocity_says_so(pty):
    bare = Fix(t=0.0, x=0, y=0, lat=47.0, lon=-99.0, confidence=0.8, accuracy_m=20.0, trusted=True,
               capture_time_unix=truth(0)["time_unix"])
    ubx, nmea = _epochs(pty, [bare])
    pvt = ubx[1]
    assert pvt.fixType == 3 and (pvt.velN, pvt.velE, pvt.gSpeed) == (0, 0, 0)
    assert pvt.sAcc == SACC_UNKNOWN_MPS * 1000 and pvt.headVehValid == 0  # no velocity, no heading claimed
    rmc = next(s for s in nmea if s.sentence_type == "RMC")
    assert rmc.spd_over_grnd is None and rmc.true_course is None
    assert pvt.vAcc == VACC_UNKNOWN_M * 1000 and pvt.hMSL == 0  # no altitude source: an unknown vertical
