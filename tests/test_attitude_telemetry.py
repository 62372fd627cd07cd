"""The attitude from the autopilot at a frame's capture time: a real pymavlink sender on 127.0.0.1 streams
ATTITUDE and GIMBAL_DEVICE_ATTITUDE_STATUS of a known motion with its own boot clock; the reader puts them
on this computer's clock and interpolates them to capture times, with the link's delay."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest

from runtime.inputs.attitude import euler_matrix, matrix_quaternion
from runtime.inputs.attitude_history import (
    GIMBAL_YAW_IN_EARTH_FRAME,
    GIMBAL_YAW_IN_VEHICLE_FRAME,
    GIMBAL_YAW_LOCK,
    AttitudeHistory,
    attitude_sample,
)
from runtime.inputs.autopilot import AutopilotReader
from tests.loopback import free_port, wait_for

mavutil = pytest.importorskip("pymavlink.mavutil")


def roll_deg(t):  # the airframe's motion, degrees, on the sender's clock
    return 12.0 * math.sin(2 * math.pi * 0.5 * t)


def pitch_deg(t):
    return -8.0 + 3.0 * math.cos(2 * math.pi * 0.3 * t)


def yaw_deg(t):
    return 40.0 + 20.0 * t


class Sender(threading.Thread):
    """ATTITUDE at 50 Hz and a gimbal at 20 Hz, stamped with a boot clock that started 100 s ago."""

    def __init__(self, port, boot_offset_s=100.0):
        super().__init__(daemon=True)
        self.conn = mavutil.mavlink_connection(f"udpout:127.0.0.1:{port}", source_system=1, source_component=1)
        self.t0 = time.monotonic() - boot_offset_s  # the autopilot booted before us
        self.stop = threading.Event()

    def run(self):
        k = 0
        while not self.stop.is_set():
            t = time.monotonic() - self.t0
            self.conn.mav.attitude_send(int(t * 1000), math.radians(roll_deg(t)), math.radians(pitch_deg(t)),
                                        math.radians(yaw_deg(t)), 0, 0, 0)
            if k % 3 == 0:
                q = matrix_quaternion(euler_matrix(0, math.radians(-90 + 5 * math.sin(t)), 0))
                self.conn.mav.gimbal_device_attitude_status_send(0, 0, int(t * 1000), GIMBAL_YAW_IN_VEHICLE_FRAME,
                                                                 [float(v) for v in q], 0, 0, 0, 0)
            k += 1
            self.stop.wait(0.02)


def test_attitude_interpolated_to_capture_times_over_udp():
    port = free_port()
    reader = AutopilotReader(f"udpin:127.0.0.1:{port}", request_hz=0).start()
    sender = Sender(port)
    sender.start()
    try:
        assert wait_for(lambda: len(reader.attitudes) > 60 and len(reader.gimbal) > 20, timeout=10)
        now = time.monotonic()
        errs = []
        for back in np.linspace(0.1, 1.0, 19):  # frames captured between 0.1 and 1 s ago
            t = now - back
            a = reader.attitude_at(t)
            assert a is not None and not a.held and a.gap_s <= 0.03
            ts = t - sender.t0  # the same instant on the sender's clock
            r, p, y = a.euler_deg
            errs.append(max(abs(r - roll_deg(ts)), abs(p - pitch_deg(ts)), abs((y - yaw_deg(ts) + 180) % 360 - 180)))
        assert max(errs) < 0.6, errs  # loopback: the only error is the interpolation and sub-ms jitter
        g = reader.gimbal_at(now - 0.3)
        assert g is not None and g.yaw_in_earth is False and g.source == "gimbal"
        assert g.euler_deg[1] == pytest.approx(-90 + 5 * math.sin(now - 0.3 - sender.t0), abs=1.5)
        # a link slower than loopback: the same sample is then reported for a capture 0.2 s earlier
        a0 = reader.attitude_at(now - 0.5)
        a1 = reader.attitude_at(now - 0.7, link_delay_s=0.2)
        assert np.allclose(a0.euler_deg, a1.euler_deg, atol=0.6)
        # nothing for a frame before the history or long after the newest sample
        assert reader.attitude_at(now - 1000) is None
        assert reader.attitude_at(time.monotonic() + 5) is None
    finally:
        sender.stop.set()
        sender.join(2)
        reader.close()


def test_history_rules_reboot_hold_and_holes():
    h = AttitudeHistory(max_hold_s=0.2)
    q = [matrix_quaternion(euler_matrix(0, 0, math.radians(a))) for a in (0, 10, 20, 30)]
    for i, qi in enumerate(q):
        h.add(5000 + 100 * i, qi, arrival=50.0 + 0.1 * i + (0.03 if i == 2 else 0.0))  # one late packet
    assert h.clock_offset_s() == pytest.approx(45.0)  # the fastest packet sets the clock
    assert h.at(50.15).euler_deg[2] == pytest.approx(15.0, abs=1e-6)  # slerp half way between 10 and 20
    held = h.at(50.4)
    assert held.held and held.euler_deg[2] == pytest.approx(30) and held.gap_s == pytest.approx(0.1)
    assert h.at(50.6) is None  # past max_hold_s
    assert h.at(49.9) is None
    h.add(5200, q[0], arrival=51.0)  # a duplicate time: ignored
    assert len(h) == 4
    h.add(9000, q[0], arrival=55.0)  # a hole of 3.7 s in the stream
    assert h.at(53.0) is None
    h.add(200, q[1], arrival=60.0)  # the sender rebooted: its boot clock went back
    assert len(h) == 1 and h.at(60.0).euler_deg[2] == pytest.approx(10)


def test_messages_to_samples_and_the_gimbal_yaw_frame():
    from pymavlink.dialects.v20 import common as v2

    att = v2.MAVLink_attitude_message(1234, 0.1, -0.2, 3.0, 0, 0, 0)
    boot, q, _ = attitude_sample(att)
    assert boot == 1234 and np.allclose(q, matrix_quaternion(euler_matrix(0.1, -0.2, 3.0)))
    assert attitude_sample(v2.MAVLink_attitude_message(1, math.nan, 0, 0, 0, 0, 0)) is None

    def gimbal(flags, q=(0.7071, 0, -0.7071, 0)):
        return v2.MAVLink_gimbal_device_attitude_status_message(0, 0, 99, flags, q, 0, 0, 0, 0, 0, 0, 0)

    assert attitude_sample(gimbal(GIMBAL_YAW_IN_EARTH_FRAME))[2] is True
    assert attitude_sample(gimbal(GIMBAL_YAW_IN_VEHICLE_FRAME | GIMBAL_YAW_LOCK))[2] is False
    assert attitude_sample(gimbal(GIMBAL_YAW_LOCK))[2] is True  # the older gimbals' rule
    assert attitude_sample(gimbal(0))[2] is False
    assert attitude_sample(gimbal(0, (math.nan, 0, 0, 0))) is None
    assert attitude_sample(v2.MAVLink_heartbeat_message(2, 3, 0, 0, 0, 3)) is None


def test_the_service_telemetry_gives_the_camera_attitude_at_the_capture_time():
    """The service's own telemetry (runtime.inputs.telemetry) through a fixed mount 10 degrees forward of
    nadir: the camera's attitude at a frame captured 0.3 s ago, from the autopilot's stream over UDP."""
    from runtime.config import ServiceConfig
    from runtime.inputs.attitude import CameraMount, camera_attitude_deg
    from runtime.inputs.telemetry import TelemetryPolicy

    port = free_port()
    cfg = ServiceConfig(altitude_from=f"udpin:127.0.0.1:{port}", altitude_request_hz=0.0, camera_pitch_deg=-80.0,
                        altitude_m=150.0)
    policy = TelemetryPolicy(cfg)
    policy.altitude_reader.start()
    sender = Sender(port)
    sender.start()
    try:
        assert wait_for(lambda: len(policy.altitude_reader.attitudes) > 30, timeout=10)
        capture = time.time() - 0.3
        tel = policy.for_frame(1.0, capture)
        ts = time.monotonic() - 0.3 - sender.t0  # the capture on the sender's clock
        truth = camera_attitude_deg(roll_deg(ts), pitch_deg(ts), yaw_deg(ts), CameraMount("fixed", pitch_deg=-80.0))
        assert tel.camera_attitude is not None
        assert tel.camera_attitude.tilt_deg == pytest.approx(truth.tilt_deg, abs=0.7)
        assert tel.camera_attitude.tilt_deg > 5.0  # the mount's 10 degrees and the airframe's roll and pitch
        off = ServiceConfig(altitude_from=f"udpin:127.0.0.1:{free_port()}", altitude_request_hz=0.0,
                            rectify=False, altitude_m=150.0)
        assert TelemetryPolicy(off).camera_attitude(capture) is None  # --no-rectify: none asked for
    finally:
        sender.stop.set()
        policy.close()
