"""GPS_INPUT sent by the runtime, received and decoded by pymavlink on a loopback UDP socket."""

from __future__ import annotations

import math
import time

import pytest

from runtime.outputs import (
    IGNORE_ALL,
    IGNORE_ALT,
    IGNORE_HDOP,
    IGNORE_HORIZONTAL_ACCURACY,
    IGNORE_VEL_HORIZ,
    MavlinkGpsOutput,
    gps_week_ms,
)
from runtime.position import Fix
from tests.loopback import free_port as _free_port

mavutil = pytest.importorskip("pymavlink.mavutil")


def _receive(listener, n, timeout=5.0):
    msgs, deadline = [], time.monotonic() + timeout
    while len(msgs) < n and time.monotonic() < deadline:
        m = listener.recv_match(type="GPS_INPUT", blocking=True, timeout=0.5)
        if m is not None:
            msgs.append(m)
    return msgs


def test_gps_week_from_gps_epoch():
    # 2024-01-01T00:00:00Z is GPS week 2295, 86418 s into the week (Monday 00:00 + 18 leap seconds)
    week, ms = gps_week_ms(1704067200.0)
    assert week == 2295 and ms == (24 * 3600 + 18) * 1000


def test_gps_input_over_udp_trusted_and_no_fix():
    port = _free_port()
    listener = mavutil.mavlink_connection(f"udpin:127.0.0.1:{port}")
    out = MavlinkGpsOutput(f"udpout:127.0.0.1:{port}")
    try:
        trusted = Fix(t=1.0, x=0, y=0, lat=47.0123456, lon=-99.1234567, confidence=0.8, accuracy_m=42.5,
                      trusted=True)
        untrusted = Fix(t=2.0, x=0, y=0, lat=47.0, lon=-99.0, confidence=0.1, accuracy_m=800.0, trusted=False)
        now = 1704067200.5
        out.send_fix(trusted, altitude_msl_m=612.0, unix_time=now)  # a real MSL altitude, if one is known
        out.send_fix(untrusted, altitude_msl_m=612.0, unix_time=now + 1)
        out.send_fix(trusted, unix_time=now + 2)
        msgs = _receive(listener, 3)
    finally:
        out.close()
        listener.close()
    assert len(msgs) == 3, f"received {len(msgs)} GPS_INPUT messages"
    a, b, c = msgs
    assert a.get_msgId() == 232
    assert a.lat == 470123456 and a.lon == -991234567
    assert a.fix_type == 3 and math.isclose(a.alt, 612.0) and math.isclose(a.horiz_accuracy, 42.5)
    assert math.isclose(a.hdop, 42.5 / 5.0, rel_tol=1e-6)
    assert not a.ignore_flags & (IGNORE_ALT | IGNORE_HDOP | IGNORE_HORIZONTAL_ACCURACY)
    assert a.ignore_flags & IGNORE_VEL_HORIZ
    assert a.time_week == 2295 and a.time_week_ms == (24 * 3600 + 18) * 1000 + 500
    assert a.time_usec == int(now * 1e6) and a.satellites_visible == 10
    # not trusted: no fix, nothing usable
    assert b.fix_type == 0 and b.ignore_flags == IGNORE_ALL and b.lat == 0 and b.lon == 0
    assert b.satellites_visible == 0
    # the usual case: no MSL altitude known. The horizontal fix stays 3D (ArduPilot's EKF uses only 3D
    # fixes) and alt is flagged ignored, so the height above ground is never mistaken for MSL
    assert c.fix_type == 3 and c.ignore_flags & IGNORE_ALT and c.alt == 0
    assert c.lat == 470123456
