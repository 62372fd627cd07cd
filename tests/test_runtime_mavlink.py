"""MAVLink to the autopilot: GPS_INPUT and MAV_CMD_EXTERNAL_POSITION_ESTIMATE sent by the runtime over
loopback UDP, received and decoded by pymavlink (a simulated autopilot, tests/fakes/mavlink_peer.py), and
the reader and the GPS output sharing one link."""

from __future__ import annotations

import math
import time

import pytest

from runtime.localisation.fix import Fix
from runtime.outputs.gnss_solution import gps_week_ms
from runtime.outputs.mavlink_gps import MavlinkGpsOutput, ignore_flags
from tests.fakes.mavlink_peer import FakeAutopilot
from tests.loopback import free_port
from tests.loopback import wait_for as _wait_for
from tests.trajectory import T0_UNIX, fix_for, ground_m, truth

mavutil = pytest.importorskip("pymavlink.mavutil")


def _receive(listener, kind, n, timeout=5.0):
    msgs, deadline = [], time.monotonic() + timeout
    while len(msgs) < n and time.monotonic() < deadline:
        m = listener.recv_match(type=kind, blocking=True, timeout=0.5)
        if m is not None:
            msgs.append(m)
    return msgs


@pytest.fixture
def udp_pair():
    """(listener, port): a pymavlink udpin socket on a free loopback port."""
    port = free_port()
    listener = mavutil.mavlink_connection(f"udpin:127.0.0.1:{port}")
    yield listener, port
    listener.close()


def test_gps_week_from_gps_epoch():
    # 2024-01-01T00:00:00Z is GPS week 2295, 86418 s into the week (Monday 00:00 + 18 leap seconds)
    week, ms = gps_week_ms(1704067200.0)
    assert week == 2295 and ms == (24 * 3600 + 18) * 1000


def test_flags_are_pymavlinks_own():
    F = ignore_flags()
    M = mavutil.mavlink
    assert F["VEL_HORIZ"] == M.GPS_INPUT_IGNORE_FLAG_VEL_HORIZ and F["ALT"] == M.GPS_INPUT_IGNORE_FLAG_ALT
    assert len(F) == 8 and sum(F.values()) == 255  # eight distinct bits


def test_gps_input_carries_velocity_accuracy_capture_time_and_yaw(udp_pair):
    listener, port = udp_pair
    out = MavlinkGpsOutput(f"udpout:127.0.0.1:{port}", camera_yaw_offset_deg=3.0)
    fixes = [fix_for(i) for i in range(5)]
    try:
        for f in fixes:
            out.emit({"time_utc": T0_UNIX + 99.0}, f)  # the send time is not the capture time
        out.emit({"type": "summary"}, None)  # the summary record is no fix: nothing sent
        msgs = _receive(listener, "GPS_INPUT", 6, timeout=3)
    finally:
        out.close()
    assert len(msgs) == 5 and out.sent == 5
    F = ignore_flags()
    for i, m in enumerate(msgs):
        tr = truth(i)
        assert m.get_msgId() == mavutil.mavlink.MAVLINK_MSG_ID_GPS_INPUT and m.fix_type == 3
        # NED velocity in m/s: this flight goes north-west (north positive, east negative)
        assert m.vn == pytest.approx(6.2, abs=1e-5) and m.ve == pytest.approx(-8.2, abs=1e-5)
        assert m.speed_accuracy == pytest.approx(0.5) and m.horiz_accuracy == pytest.approx(12.0)
        assert not m.ignore_flags & (F["VEL_HORIZ"] | F["SPEED_ACCURACY"] | F["HORIZONTAL_ACCURACY"] | F["HDOP"])
        assert m.ignore_flags & F["VEL_VERT"] and m.ignore_flags & F["ALT"] and m.ignore_flags & F["VDOP"]
        # capture time, and the week fields of the same instant
        assert m.time_usec == round(tr["time_unix"] * 1e6)
        assert (m.time_week, m.time_week_ms) == gps_week_ms(tr["time_unix"])
        assert m.time_week == 2295 and m.time_week_ms == (86400 + 18) * 1000 + 250 + 100 * i
        # the position is within the reported accuracy of the truth
        assert ground_m(tr["lat"], tr["lon"], m.lat * 1e-7, m.lon * 1e-7) <= m.horiz_accuracy
        assert m.yaw == 3000  # image top at 33 deg, camera turned 3 deg: the airframe heads 30 deg
        assert m.hdop == pytest.approx(12.0 / 5.0) and m.satellites_visible == 10


def test_gps_input_yaw_north_is_36000_and_unknowns_are_flagged(udp_pair):
    listener, port = udp_pair
    out = MavlinkGpsOutput(f"udpout:127.0.0.1:{port}")
    north = fix_for(0, yaw_deg=0.0)
    bare = Fix(t=0.0, x=0, y=0, lat=47.0, lon=-99.0, confidence=0.8, accuracy_m=20.0, trusted=True)
    untrusted = Fix(t=0.0, x=0, y=0, lat=47.0, lon=-99.0, confidence=0.1, accuracy_m=800.0, trusted=False)
    try:
        out.send_fix(north)
        out.send_fix(bare, unix_time=T0_UNIX)  # no velocity, no yaw, no capture time: the given time
        out.send_fix(untrusted, unix_time=T0_UNIX + 1)
        out.send_fix(None, unix_time=T0_UNIX + 2)
        msgs = _receive(listener, "GPS_INPUT", 4)
    finally:
        out.close()
    assert len(msgs) == 4
    a, b, c, d = msgs
    F = ignore_flags()
    assert a.yaw == 36000  # north: 0 would mean "no yaw" to ArduPilot
    assert b.yaw == 0 and b.ignore_flags & F["VEL_HORIZ"] and b.ignore_flags & F["SPEED_ACCURACY"]
    assert b.vn == 0 and b.fix_type == 3 and b.time_usec == round(T0_UNIX * 1e6)
    for m in (c, d):  # no trusted fix: nothing usable
        assert m.fix_type == 0 and m.ignore_flags == sum(F.values()) and m.lat == 0 and m.lon == 0
        assert m.satellites_visible == 0 and m.yaw == 0


def test_gps_input_message_rate_follows_the_fixes(udp_pair):
    """One GPS_INPUT per fix, as fast as the fixes come (10 Hz here), plus a 1 Hz heartbeat."""
    listener, port = udp_pair
    out = MavlinkGpsOutput(f"udpout:127.0.0.1:{port}")
    n, period = 15, 0.1
    try:
        t0 = time.monotonic()
        for i in range(n):
            out.emit({"time_utc": time.time()}, fix_for(i))
            time.sleep(max(0.0, t0 + (i + 1) * period - time.monotonic()))
        msgs, beats, deadline = [], 0, time.monotonic() + 3
        while len(msgs) < n and time.monotonic() < deadline:
            m = listener.recv_match(blocking=True, timeout=0.5)
            if m is not None and m.get_type() == "GPS_INPUT":
                msgs.append((time.monotonic(), m))
            elif m is not None and m.get_type() == "HEARTBEAT":
                beats += 1
    finally:
        out.close()
    assert len(msgs) == n and 1 <= beats <= 3 < n  # the heartbeat is once a second, not once a message
    times_ms = [m.time_week_ms for _, m in msgs]
    assert all(b - a == 100 for a, b in zip(times_ms, times_ms[1:]))  # capture times 0.1 s apart
    M = mavutil.mavlink
    assert msgs[0][1].get_srcComponent() == M.MAV_COMP_ID_ONBOARD_COMPUTER


def test_external_position_estimate_command(udp_pair):
    listener, port = udp_pair
    out = MavlinkGpsOutput(f"udpout:127.0.0.1:{port}", mode="external_position")
    f = fix_for(3)
    captured = time.time() - 0.35  # the frame was captured 0.35 s before the send
    f.capture_time_unix = captured
    try:
        assert out.send_fix(Fix(t=0.0)) is None  # no trusted fix: the command has no "no fix", nothing sent
        sent = out.send_fix(f)
        msgs = _receive(listener, "COMMAND_INT", 1)
    finally:
        out.close()
    assert len(msgs) == 1 and out.sent == 1
    m = msgs[0]
    M = mavutil.mavlink
    assert m.command == M.MAV_CMD_EXTERNAL_POSITION_ESTIMATE and m.frame == M.MAV_FRAME_GLOBAL
    assert (m.x, m.y) == (round(f.lat * 1e7), round(f.lon * 1e7))  # degE7, exact
    assert math.isnan(m.z) and math.isnan(m.param4)
    assert m.param2 == pytest.approx(0.35, abs=0.05)  # processing delay = now - capture
    assert m.param3 == pytest.approx(12.0)  # 1-sigma accuracy
    assert 0 <= m.param1 < 36000 and m.param1 == pytest.approx(sent["param1"], abs=1e-2)
    with pytest.raises(ValueError, match="mavlink mode must be one of"):
        MavlinkGpsOutput("udpout:127.0.0.1:9", mode="vision")


def test_reader_and_output_share_one_link_with_a_simulated_autopilot():
    """The reader hears ATTITUDE/GLOBAL_POSITION_INT from the simulated autopilot, asks it for its streams,
    and the GPS output answers on the same link (one socket, one heartbeat)."""
    from runtime.inputs.autopilot import AutopilotReader

    port = free_port()
    url = f"udpin:127.0.0.1:{port}"
    out = MavlinkGpsOutput(url)
    reader = AutopilotReader(url, stale_s=1.0, request_hz=5.0)
    assert reader.link is out.link and out.link.users == 2
    reader.start()
    try:
        with FakeAutopilot(port) as ap:
            ap.alt_mm, ap.yaw_rad = 123450, math.radians(-90.0)
            hdg = _wait_for(reader.heading, timeout=5)
            alt = _wait_for(reader.current, timeout=5)
            assert hdg and hdg.source == "attitude" and hdg.heading_deg == pytest.approx(270.0)
            assert alt and alt.source == "relative_alt" and alt.altitude_m == pytest.approx(123.45)
            for i in range(3):
                out.emit({"time_utc": time.time()}, fix_for(i, yaw_deg=hdg.heading_deg))
            assert _wait_for(lambda: len(ap.types("GPS_INPUT")) >= 3
                             and len(ap.types("COMMAND_LONG")) >= 4, timeout=5)
            gps = ap.types("GPS_INPUT")
            beats = ap.types("HEARTBEAT")
    finally:
        reader.close()
        out.close()
    assert out.link.closed and out.link.users == 0
    assert gps[0].yaw == 27000 and gps[0].fix_type == 3
    assert {m.get_srcSystem() for m in gps + beats} == {1}
    M = mavutil.mavlink
    assert {int(m.param1) for m in ap.types("COMMAND_LONG")} == {
        M.MAVLINK_MSG_ID_GLOBAL_POSITION_INT, M.MAVLINK_MSG_ID_DISTANCE_SENSOR, M.MAVLINK_MSG_ID_ALTITUDE,
        M.MAVLINK_MSG_ID_ATTITUDE}
