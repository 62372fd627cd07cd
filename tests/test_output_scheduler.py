"""The autopilot stream between frames (runtime.outputs.prediction, vertical, scheduler, recorders): the last
fix predicted to each message's instant with its accuracy grown by the time since that frame's capture, a
steady rate whatever the frame rate, one "no fix" rule, the MSL altitude, and recordings in the formats
the autopilots' checkers read (pymavlink's tlog, PX4GPSCAP1)."""

from __future__ import annotations

import math
import struct

import pytest

from runtime.localisation.fix import Fix
from runtime.outputs.gnss_solution import R95_PER_SIGMA, offset_latlon
from runtime.outputs.prediction import ACCEL_FLOOR_MPS2, FixPredictor
from runtime.outputs.scheduler import OutputScheduler, build_scheduler
from runtime.outputs.settings import OutputConfig
from runtime.outputs.vertical import VerticalSource
from tests.trajectory import T0_UNIX, fix_for, ground_m, truth


class Sink:
    """An output that keeps what it is given (the scheduler's backends' interface)."""

    def __init__(self):
        self.got = []

    def describe(self):
        return "sink"

    def send_solution(self, s, now_unix=None):
        self.got.append((now_unix, s))

    def close(self):
        pass


def test_prediction_moves_the_fix_and_grows_its_accuracy():
    """Between frames the fix moves with its velocity; sigma_v^2 = sacc^2 + (a (h + dt/2))^2 and
    sigma_h^2 = acc^2 + (sigma_v h), h the time since the capture, dt the interval the velocity spans."""
    p = FixPredictor(accel_mps2=2.0, max_age_s=2.0)
    f0, f1 = fix_for(0, accuracy_m=4.0), fix_for(5, accuracy_m=4.0)  # 0.5 s apart, a straight flight
    f1.vel_n_mps += 0.01  # measured again: within its own accuracy (0.5 m/s), no acceleration shown
    p.update(f0)
    assert p.accel_mps2 == 2.0  # no velocity change seen yet: the filter's acceleration
    p.update(f1)
    a = p.accel_mps2
    assert a == ACCEL_FLOOR_MPS2 and p.dt_s == pytest.approx(0.5)
    for h in (0.0, 0.3, -0.1):
        s = p.solution(f1.capture_time_unix + h)
        lat, lon = offset_latlon(f1.lat, f1.lon, f1.vel_n_mps * h, f1.vel_e_mps * h)  # (backwards too)
        assert (s.lat_deg, s.lon_deg) == pytest.approx((lat, lon), abs=1e-9) and s.age_s == pytest.approx(h)
        sv = math.hypot(0.5, a * (abs(h) + 0.25))
        assert s.speed_acc_mps == pytest.approx(sv) and s.h_acc_m == pytest.approx(math.hypot(4.0, sv * h))
        assert s.r95_m == pytest.approx(R95_PER_SIGMA * s.h_acc_m) and s.valid
    # the truth of the straight flight lies within the grown radius 0.3 s after the capture
    s = p.solution(f1.capture_time_unix + 0.3)
    tr = truth(8)
    assert ground_m(tr["lat"], tr["lon"], s.lat_deg, s.lon_deg) <= s.r95_m


def test_frames_between_keyframes_carry_the_keyframes_velocity_and_its_age():
    """Frames between keyframes carry their keyframe's velocity on (runtime.localisation.prediction): the
    velocity's age counts from that keyframe, and they show no acceleration of their own."""
    from dataclasses import replace

    p = FixPredictor(accel_mps2=2.0)
    key = fix_for(0, accuracy_m=3.0)
    p.update(key)
    for k in range(1, 6):  # 30 fps for 0.17 s: the same velocity, later capture times
        p.update(replace(key, capture_time_unix=key.capture_time_unix + k / 30.0))
    s = p.solution(key.capture_time_unix + 0.3)
    assert p.accel_mps2 == 2.0 and p.dt_s == 0.0  # still no second measurement
    assert s.speed_acc_mps == pytest.approx(math.hypot(0.5, 2.0 * 0.3))  # 0.3 s since the keyframe, not 0.13
    assert s.age_s == pytest.approx(0.3 - 5 / 30.0)  # the position from the last frame's own prediction


def test_a_turn_raises_the_acceleration_and_the_speed_accuracy():
    p = FixPredictor(accel_mps2=2.0)
    for i, vn in enumerate((10.0, 10.0, 8.0, 6.0, 4.0)):  # 4 m/s^2 of deceleration, 0.5 s apart
        p.update(Fix(t=i * 0.5, lat=47.0, lon=-99.0, accuracy_m=3.0, trusted=True, vel_n_mps=vn, vel_e_mps=0.0,
                     speed_accuracy_mps=0.2, capture_time_unix=T0_UNIX + 0.5 * i))
    assert p.accel_mps2 > 2.0
    assert p.solution(T0_UNIX + 2.3).speed_acc_mps > 1.0


def test_one_no_fix_rule():
    """No fix: no trusted fix, or the last fix older than max_age_s at the instant asked for."""
    p = FixPredictor(max_age_s=1.0)
    assert not p.solution(T0_UNIX).valid  # nothing yet
    f = fix_for(0)
    p.update(f)
    assert p.solution(f.capture_time_unix + 0.99).valid and not p.solution(f.capture_time_unix + 1.01).valid
    p.update(Fix(t=0.1, lat=47.0, lon=-99.0, accuracy_m=3.0, trusted=False, capture_time_unix=T0_UNIX + 0.1))
    assert not p.solution(T0_UNIX + 0.2).valid  # the filter did not trust the last frame


def test_the_stream_is_steady_whatever_the_frame_rate():
    """Fixes at 1 Hz (ArduPilot calls such a GPS unhealthy; PX4 reconfigures it) go out at 10 Hz, each message
    describing the instant output_delay before it leaves, exactly a period apart; a late loop skips ticks
    instead of sending a burst."""
    sink = Sink()
    sched = OutputScheduler([sink], FixPredictor(max_age_s=2.0), rate_hz=10.0, delay_s=0.2)
    t, second = T0_UNIX + 1.0, False
    sched.update(fix_for(0), T0_UNIX)
    while t < T0_UNIX + 3.0:
        if t >= T0_UNIX + 2.0 and not second:
            sched.update(fix_for(10), T0_UNIX + 1.0)  # the next frame (captured 1 s after the first)
            second = True
        sched.run_due(t)
        t += 0.013
    stamps = [s.time_unix for _, s in sink.got]
    assert len(stamps) == 20 and all(b - a == pytest.approx(0.1, abs=1e-6) for a, b in zip(stamps, stamps[1:]))
    assert all(now - s.time_unix == pytest.approx(0.2, abs=0.02) for now, s in sink.got)
    assert all(s.valid for _, s in sink.got)
    sched.run_due(t + 0.55)  # the loop was half a second late: one message, the missed ticks skipped
    assert len(sink.got) == 21 and sched.skipped in (4, 5)


def test_msl_altitude_from_home_plus_height():
    v = VerticalSource("auto", home_alt_msl_m=300.0, sigma_m=2.5)
    assert v.mode == "home" and v.at(T0_UNIX).alt_msl_m is None  # no height yet
    v.observe(T0_UNIX, 150.0)
    v.observe(T0_UNIX + 1.0, 149.0)  # descending 1 m/s: positive down
    got = v.at(T0_UNIX + 1.0)
    assert (got.alt_msl_m, got.v_acc_m, got.vel_d_mps) == (449.0, 2.5, pytest.approx(1.0))
    assert VerticalSource("auto").mode == "none" and VerticalSource("auto").at(T0_UNIX).alt_msl_m is None

    class Reader:  # the autopilot's GLOBAL_POSITION_INT: relative alt and vz, its own MSL
        def above_home(self):
            return 120.0, -0.5

        def msl(self):
            return 611.0, -0.5

    got = VerticalSource("home", home_alt_msl_m=300.0, reader=Reader()).at(T0_UNIX)
    assert (got.alt_msl_m, got.vel_d_mps, got.source) == (420.0, -0.5, "home+relative_alt")
    assert VerticalSource("autopilot", reader=Reader()).at(T0_UNIX).alt_msl_m == 611.0
    with pytest.raises(ValueError, match="needs --home-alt-msl-m"):
        VerticalSource("home")


def test_output_settings_are_checked():
    OutputConfig().check_outputs()
    for bad, match in ((dict(output_rate_hz=0.5), "--output-rate-hz 0.5"), (dict(output_delay_ms=400), "250"),
                       (dict(gps_id=-1), "--gps-id"), (dict(altitude_msl_from="home"), "--home-alt-msl-m")):
        with pytest.raises(ValueError, match=match):
            OutputConfig(**bad).check_outputs()


def test_recordings_are_read_back_by_pymavlink_and_in_the_capture_format(tmp_path):
    """The replay's recorders: a tlog pymavlink reads with the send times, and a PX4GPSCAP1 capture."""
    mavutil = pytest.importorskip("pymavlink.mavutil")
    pytest.importorskip("pyubx2")
    from runtime.outputs.gnss_serial import GnssSerialOutput
    from runtime.outputs.mavlink_gps import MavlinkGpsOutput
    from runtime.outputs.recorders import CAPTURE_MAGIC, CaptureRecorder, RecordingLink, TlogRecorder

    tlog, cap = TlogRecorder(tmp_path / "m.tlog"), CaptureRecorder(tmp_path / "g.cap")
    outs = [MavlinkGpsOutput(link=RecordingLink(tlog), gps_id=1), GnssSerialOutput(cap, protocols="ubx")]
    sched = build_scheduler(OutputConfig(home_alt_msl_m=250.0), outs, accel_mps2=2.0, recorders=[tlog, cap])
    sched.update(fix_for(0), height_m=100.0)
    for k in range(5):
        sched.send_at(T0_UNIX + 0.2 + 0.1 * k)
    sched.close()
    conn = mavutil.mavlink_connection(str(tmp_path / "m.tlog"))
    msgs = []
    while (m := conn.recv_match(blocking=False)) is not None:
        msgs.append(m)
    gps = [m for m in msgs if m.get_type() == "GPS_INPUT"]
    assert len(gps) == 5 and sum(m.get_type() == "HEARTBEAT" for m in msgs) == 1
    assert [round(m._timestamp, 3) for m in gps] == [round(T0_UNIX + 0.2 + 0.1 * k, 3) for k in range(5)]
    assert {m.gps_id for m in gps} == {1} and gps[0].alt == pytest.approx(350.0) and gps[0].fix_type == 3
    data = (tmp_path / "g.cap").read_bytes()
    assert data.startswith(CAPTURE_MAGIC)
    t_us, n = struct.unpack_from("<QI", data, len(CAPTURE_MAGIC))
    assert t_us == round((T0_UNIX + 0.2) * 1e6) and data[len(CAPTURE_MAGIC) + 12:][:2] == b"\xb5\x62"
    assert n == 26 + 100  # NAV-DOP then NAV-PVT
