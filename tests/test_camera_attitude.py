"""Attitude, camera mount and the nadir rectification, against views rendered over the real NAIP imagery:
a tilted frame rectified must look like the nadir frame of the same place, and the offset to the point
below the drone must be height x tan(tilt) the right way."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from runtime.inputs.attitude import (
    CameraAttitude,
    CameraMount,
    camera_attitude_deg,
    euler_matrix,
    matrix_euler,
    matrix_quaternion,
    quaternion_matrix,
)
from runtime.inputs.camera import CameraModel
from runtime.inputs.nadir import nadir_view
from tiles.raster import open_raster
from tiles.views import CameraPose, render_view

SIZE = (256, 256)


def _corr(a, b, mask):
    a, b = a.astype(float).mean(2)[mask > 0], b.astype(float).mean(2)[mask > 0]
    return float(np.corrcoef(a, b)[0, 1])


@pytest.fixture(scope="module")
def naip2018(naip_paths):
    with open_raster(naip_paths[2018]) as r:
        yield r


def test_rotations_round_trip():
    rng = np.random.default_rng(1)
    for _ in range(20):
        roll, pitch, yaw = rng.uniform(-math.pi, math.pi), rng.uniform(-1.5, 1.5), rng.uniform(-math.pi, math.pi)
        R = euler_matrix(roll, pitch, yaw)
        assert np.allclose(matrix_euler(R), (roll, pitch, yaw))
        q = matrix_quaternion(R)
        assert np.allclose(quaternion_matrix(q), R) and q[0] >= 0
        h, t, r = rng.uniform(0, 360), rng.uniform(-60, 60), rng.uniform(-60, 60)
        assert np.allclose(CameraAttitude.from_view_angles(h, t, r).view_angles(), (h, t, r))
    with pytest.raises(ValueError, match="no rotation"):
        quaternion_matrix((0, 0, 0, 0))


def test_the_mount_conventions_follow_the_airframe():
    # level, nose to 45 deg: a nadir camera's image top faces 45 deg
    assert np.allclose(camera_attitude_deg(0, 0, 45).view_angles(), (45, 0, 0), atol=1e-9)
    # nose up 10 deg: it looks 10 deg ahead; nose down (a multirotor accelerating): behind
    assert np.allclose(camera_attitude_deg(0, 10, 45).view_angles(), (45, 10, 0), atol=1e-9)
    assert np.allclose(camera_attitude_deg(0, -12, 45).view_angles(), (45, -12, 0), atol=1e-9)
    # right wing down 25 deg (a banked right turn): the belly and the camera face left
    assert np.allclose(camera_attitude_deg(25, 0, 45).view_angles(), (45, 0, -25), atol=1e-9)
    assert camera_attitude_deg(25, 0, 45).tilt_deg == pytest.approx(25)
    # a mount tilted 20 deg forward (gimbal pitch -70) on a level body
    fwd = CameraMount("fixed", pitch_deg=-70)
    assert np.allclose(camera_attitude_deg(0, 0, 90, fwd).view_angles(), (90, 20, 0), atol=1e-9)
    # a camera turned 90 deg right on its mount: its image top faces the right wing
    side = CameraMount("fixed", yaw_deg=90)
    assert camera_attitude_deg(0, 0, 0, side).view_angles()[0] == pytest.approx(90)
    with pytest.raises(ValueError, match="camera mount 'loose'"):
        CameraMount("loose")


def test_a_gimbal_reports_against_the_horizon_and_the_heading():
    """GIMBAL_DEVICE_ATTITUDE_STATUS: roll/pitch against the horizon whatever the body does; yaw against
    the vehicle's heading unless the flags say north."""
    gimbal = CameraMount("gimbal")
    down = matrix_quaternion(euler_matrix(0, math.radians(-90), 0))
    a = gimbal.camera_attitude(euler_matrix(math.radians(20), math.radians(-8), math.radians(120)), down)
    assert a.tilt_deg == pytest.approx(0, abs=1e-6)  # stabilised: the body's roll and pitch do not reach it
    assert a.view_angles()[0] == pytest.approx(120)  # yaw follows the vehicle
    a = gimbal.camera_attitude(euler_matrix(0, 0, math.radians(120)), down, gimbal_yaw_in_earth=True)
    assert a.view_angles()[0] == pytest.approx(0, abs=1e-6)  # yaw locked to north
    tilted = matrix_quaternion(euler_matrix(0, math.radians(-80), 0))
    a = gimbal.camera_attitude(euler_matrix(0, 0, math.radians(30)), tilted)
    assert np.allclose(a.view_angles(), (30, 10, 0), atol=1e-6)
    # a gimbal that has not reported yet is taken at its configured angles on the body
    assert np.allclose(gimbal.camera_attitude(euler_matrix(0, math.radians(5), 0)).view_angles(), (0, 5, 0),
                       atol=1e-9)


@pytest.mark.parametrize("heading,tilt,roll", [(30, 15, 0), (200, -10, 8), (75, 25, -12), (310, 5, 20)])
def test_rectified_tilted_view_is_the_nadir_view_of_the_same_place(naip2018, heading, tilt, roll):
    xmin, ymin, xmax, ymax = naip2018.bounds_m
    x, y, h = (xmin + xmax) / 2 - 400, (ymin + ymax) / 2 + 250, 150.0
    cam = CameraModel.from_hfov(*SIZE, 60)
    frame = render_view(naip2018, CameraPose(x, y, h, heading, tilt, 60, roll_deg=roll), SIZE)
    att = CameraAttitude.from_view_angles(heading, tilt, roll)
    nv = nadir_view(cam.K, SIZE, att, h)
    out, valid = nv.warp(frame.image)
    # the nadir frame centred where the tilted frame's centre looks, north-up, same height and lens
    cx, cy = x - nv.offset_en_m[0], y - nv.offset_en_m[1]
    ref = render_view(naip2018, CameraPose(cx, cy, h, 0, 0, 60), SIZE).image
    assert valid.mean() > 0.8
    assert _corr(out, ref, valid) > 0.97
    assert _corr(frame.image, ref, np.ones(SIZE)) < 0.6  # unrectified, it does not match
    # the offset: height x tan(tilt), from where the centre looks back to below the drone
    assert math.hypot(*nv.offset_en_m) == pytest.approx(h * math.tan(math.radians(nv.tilt_deg)), rel=1e-9)
    assert (cx, cy) == pytest.approx(frame.centre_xy, abs=1e-6)
    assert nv.below_drone(*frame.centre_xy) == pytest.approx((x, y), abs=1e-6)
    assert nv.gsd_m == pytest.approx(h / cam.K[0][0])


def test_heading_up_output_and_the_offset_direction(naip2018):
    """Nose up 12 deg flying east: the camera looks 12 deg ahead (east), the drone is h tan 12 west of
    what the centre sees; heading-up output is the nadir view with its top to the east."""
    xmin, ymin, xmax, ymax = naip2018.bounds_m
    x, y, h = (xmin + xmax) / 2, (ymin + ymax) / 2, 200.0
    att = camera_attitude_deg(0, 12, 90)
    heading, tilt, roll = att.view_angles()
    frame = render_view(naip2018, CameraPose(x, y, h, heading, tilt, 60, roll_deg=roll), SIZE)
    nv = nadir_view(CameraModel.from_hfov(*SIZE, 60).K, SIZE, att, h, north_up=False)
    assert nv.heading_deg == pytest.approx(90)
    assert nv.offset_en_m == pytest.approx((-h * math.tan(math.radians(12)), 0.0), abs=1e-6)
    out, valid = nv.warp(frame.image)
    ref = render_view(naip2018, CameraPose(*frame.centre_xy, h, 90, 0, 60), SIZE).image
    assert _corr(out, ref, valid) > 0.97


def test_a_frame_looking_at_the_horizon_is_refused():
    with pytest.raises(ValueError, match="horizon"):
        nadir_view(CameraModel.from_hfov(*SIZE, 60).K, SIZE, CameraAttitude.from_view_angles(0, 90.5, 0), 100.0)
    with pytest.raises(ValueError, match="height above ground"):
        nadir_view(CameraModel.from_hfov(*SIZE, 60).K, SIZE, CameraAttitude.nadir(), 0.0)


FINLAND = Path("/work/shared/data/finland/turku_0p15m_utm34n.tif")


@pytest.mark.parametrize("height,angles", [(60.0, (20, 18, -7)), (120.0, (250, -12, 10))])
def test_low_altitude_over_the_fine_map(height, angles):
    """60-120 m over the 0.15 m/px map, through a barrel lens and over a hill: undistorted and rectified
    with the true attitude and height, the frame is the nadir frame of the place it looks at."""
    if not FINLAND.is_file():
        pytest.skip(f"{FINLAND} absent (the fine map lives outside the repository)")
    with open_raster(FINLAND) as r:
        xmin, ymin, xmax, ymax = r.bounds_m
        x, y = (xmin + xmax) / 2 + 20, ymin + 220.0  # fields, roads, houses
        lens = CameraModel(*SIZE, CameraModel.from_hfov(*SIZE, 60).K, (-0.2, 0, 0, 0, 0))
        frame = render_view(r, CameraPose(x, y, height, *angles[:2], 60, roll_deg=angles[2]), SIZE, lens=lens)
        und = lens.undistorter(hfov_deg=60)
        nv = nadir_view(und.output_camera().K, SIZE, CameraAttitude.from_view_angles(*angles), height)
        out, valid = nv.warp(und(frame.image))
        ref = render_view(r, CameraPose(x - nv.offset_en_m[0], y - nv.offset_en_m[1], height, 0, 0, 60), SIZE).image
        assert nv.gsd_m == pytest.approx(height / und.output_camera().K[0][0]) and valid.mean() > 0.8
        assert _corr(out, ref, valid) > 0.85  # three resamplings of 0.15 m detail: sharp, not identical
        assert _corr(und(frame.image), ref, np.ones(SIZE)) < 0.5
