"""MAVLink to the autopilot: GPS_INPUT, ODOMETRY (ExternalNav) and MAV_CMD_EXTERNAL_POSITION_ESTIMATE sent by
the runtime over loopback UDP, received and decoded by pymavlink (a simulated autopilot,
tests/fakes/mavlink_peer.py), and the reader and the outputs sharing one link."""

from __future__ import annotations

import math
import time
from dataclasses import replace

import pytest

from runtime.localisation.fix import Fix
from runtime.outputs.gnss_solution import GnssSolution, gps_week_ms, solution_from_fix
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
    out = MavlinkGpsOutput(f"udpout:127.0.0.1:{port}")
    fixes = [fix_for(i) for i in range(5)]
    try:
        for f in fixes:  # at each fix's capture time (no prediction), a camera turned 3 deg
            out.send_fix(f, unix_time=T0_UNIX + 99.0, camera_yaw_offset_deg=3.0)
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
    for m in (c, d):  # no trusted fix: ArduPilot's NO_FIX (1; 0 would be "no GPS"), nothing usable
        assert m.fix_type == 1 and m.ignore_flags == sum(F.values()) and m.lat == 0 and m.lon == 0
        assert m.satellites_visible == 0 and m.yaw == 0


def test_gps_input_instance_altitude_and_vertical_velocity(udp_pair):
    """``gps_id`` is the configured GPS instance (ArduPilot drops a GPS_INPUT for another instance); with an
    altitude source the altitude, its accuracy, VDOP and the vertical velocity are given, not ignored."""
    listener, port = udp_pair
    out = MavlinkGpsOutput(f"udpout:127.0.0.1:{port}", gps_id=1)
    s = GnssSolution(time_unix=T0_UNIX, valid=True, lat_deg=47.0, lon_deg=-99.0, h_acc_m=2.0, sigma_n_m=2.0,
                     sigma_e_m=2.0, vel_n_mps=3.0, vel_e_mps=-4.0, speed_acc_mps=0.3, vel_d_mps=-0.5,
                     alt_msl_m=512.25, v_acc_m=2.5, satellites=10, age_s=0.1)
    try:
        out.send_solution(s)
        m = _receive(listener, "GPS_INPUT", 1)[0]
    finally:
        out.close()
    F = ignore_flags()
    assert m.gps_id == 1 and m.fix_type == 3 and m.ignore_flags == 0  # every field given
    assert m.alt == pytest.approx(512.25) and m.vert_accuracy == pytest.approx(2.5) and m.vd == pytest.approx(-0.5)
    assert m.vdop == pytest.approx(0.5) and m.hdop == pytest.approx(0.4) and m.horiz_accuracy == pytest.approx(2.0)
    assert not m.ignore_flags & (F["ALT"] | F["VEL_VERT"] | F["VERTICAL_ACCURACY"])
    with pytest.raises(ValueError, match="--gps-id 300"):
        MavlinkGpsOutput("udpout:127.0.0.1:9", gps_id=300)


def test_odometry_is_external_navigation_from_a_set_origin(udp_pair):
    """ODOMETRY in ArduPilot's ExternalNav form: the origin set once with SET_GPS_GLOBAL_ORIGIN, then local NED
    positions from it (frame LOCAL_FRD, child BODY_FRD), the velocity in the body frame of the heading,
    per-axis variances, a quality, and reset_counter raised when the track is trusted again."""
    from runtime.outputs.mavlink_odometry import MavlinkOdometryOutput, local_ned

    listener, port = udp_pair
    M = mavutil.mavlink
    out = MavlinkOdometryOutput(f"udpout:127.0.0.1:{port}")
    base = dict(valid=True, h_acc_m=4.0, sigma_n_m=4.0, sigma_e_m=4.0, vel_n_mps=10.0, vel_e_mps=0.0,
                speed_acc_mps=0.4, vel_d_mps=0.0, alt_msl_m=500.0, v_acc_m=3.0, yaw_deg=90.0, satellites=10)
    try:
        assert out.send_solution(GnssSolution(time_unix=T0_UNIX, valid=False)) is None  # no origin yet: nothing
        first = out.send_solution(GnssSolution(time_unix=T0_UNIX + 0.1, lat_deg=47.0, lon_deg=-99.0, **base))
        north = GnssSolution(time_unix=T0_UNIX + 0.2, lat_deg=47.0 + 1e-4, lon_deg=-99.0, **{**base, "alt_msl_m": 510.0})
        second = out.send_solution(north)
        lost = out.send_solution(GnssSolution(time_unix=T0_UNIX + 0.3, valid=False))
        back = out.send_solution(north)
        got = _receive(listener, ["ODOMETRY", "SET_GPS_GLOBAL_ORIGIN"], 5)
        odo = [m for m in got if m.get_type() == "ODOMETRY"]
        origin = [m for m in got if m.get_type() == "SET_GPS_GLOBAL_ORIGIN"]
    finally:
        out.close()
    assert len(odo) == 4 and len(origin) == 1  # the origin is repeated once a second, not per message
    assert (origin[0].latitude, origin[0].longitude, origin[0].altitude) == (470000000, -990000000, 500000)
    o1, o2, o3, o4 = odo
    assert {(m.frame_id, m.child_frame_id) for m in odo} == {(M.MAV_FRAME_LOCAL_FRD, M.MAV_FRAME_BODY_FRD)}
    assert (o1.x, o1.y, o1.z) == (0.0, 0.0, 0.0) and first["quality"] == 25  # 100 / 4 m
    n, e, d = local_ned((47.0, -99.0, 500.0), 47.0 + 1e-4, -99.0, 510.0)
    assert (o2.x, o2.y, o2.z) == pytest.approx((n, e, d), abs=1e-3) and 11.1 < o2.x < 11.2 and o2.z == -10.0
    # heading east: 10 m/s north is 10 m/s to the left of the nose (body y negative)
    assert (o2.vx, o2.vy) == pytest.approx((0.0, -10.0), abs=1e-4)
    assert o2.q == pytest.approx([math.cos(math.pi / 4), 0, 0, math.sin(math.pi / 4)], abs=1e-6)
    assert o2.pose_covariance[0] == o2.pose_covariance[6] == 16.0 and o2.pose_covariance[11] == 9.0
    assert o2.velocity_covariance[0] == pytest.approx(0.16) and math.isnan(o2.rollspeed)
    assert o3.quality == -1 and lost["quality"] == -1 and math.isnan(o3.x)  # no fix: "failed", not fused
    assert (o1.reset_counter, o2.reset_counter, o4.reset_counter) == (0, 0, 1) and back["reset_counter"] == 1
    assert second["time_usec"] == round((T0_UNIX + 0.2) * 1e6)


def test_external_position_estimate_command(udp_pair):
    listener, port = udp_pair
    out = MavlinkGpsOutput(f"udpout:127.0.0.1:{port}", mode="external_position")
    f = fix_for(3)
    captured = time.time() - 0.35  # the frame was captured 0.35 s before the send
    try:
        assert out.send_fix(Fix(t=0.0)) is None  # no trusted fix: the command has no "no fix", nothing sent
        sent = out.send_solution(replace(solution_from_fix(f, time_unix=0.0), time_unix=captured))
        msgs = _receive(listener, "COMMAND_INT", 1)
    finally:
        out.close()
    assert len(msgs) == 1 and out.sent == 1
    m = msgs[0]
    M = mavutil.mavlink
    assert m.command == M.MAV_CMD_EXTERNAL_POSITION_ESTIMATE and m.frame == M.MAV_FRAME_GLOBAL
    assert (m.x, m.y) == (round(f.lat * 1e7), round(f.lon * 1e7))  # degE7, exact
    assert math.isnan(m.z) and math.isnan(m.param4)
    assert m.param2 == pytest.approx(0.35, abs=0.05)  # the age when sent = now - the instant it describes
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
                out.send_fix(fix_for(i, yaw_deg=hdg.heading_deg))
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
