"""The camera model: calibration files as OpenCV and ROS write them, undistortion of frames rendered through
real lenses over the NAIP imagery, the field of view that comes out, the fingerprint."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from runtime.inputs.camera import CameraModel
from runtime.inputs.camera_files import CalibrationError
from tiles.raster import open_raster
from tiles.views import CameraPose, render_view

TRUE_K = np.array([[610.0, 0, 318.2], [0, 612.0, 243.9], [0, 0, 1]])
TRUE_D = np.array([-0.21, 0.045, 0.0012, -0.0008, 0.0])


def _corr(a, b, mask=None):
    a, b = a.astype(float).mean(2), b.astype(float).mean(2)
    m = np.ones(a.shape, bool) if mask is None else mask > 0
    return float(np.corrcoef(a[m], b[m])[0, 1])


def _calibrate():
    """cv2.calibrateCamera on a chessboard seen from 12 poses through the true lens (what a user runs)."""
    rng = np.random.default_rng(3)
    board = np.array([[x * 0.03, y * 0.03, 0] for y in range(7) for x in range(10)], np.float32)
    obj, img = [], []
    for _ in range(12):
        rvec = rng.uniform(-0.4, 0.4, 3)
        tvec = np.array([rng.uniform(-0.2, 0.0), rng.uniform(-0.15, 0.0), rng.uniform(0.45, 0.7)])
        pts, _ = cv2.projectPoints(board, rvec, tvec, TRUE_K, TRUE_D)
        obj.append(board)
        img.append(pts.astype(np.float32))
    rms, K, D, _, _ = cv2.calibrateCamera(obj, img, (640, 480), None, None)
    assert rms < 0.01
    return K, D


@pytest.mark.parametrize("ext", ["yml", "json"])
def test_opencv_calibration_file_written_by_filestorage(tmp_path, ext):
    K, D = _calibrate()
    path = tmp_path / f"camera.{ext}"
    fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_WRITE)
    fs.write("image_width", 640)
    fs.write("image_height", 480)
    fs.write("camera_matrix", K)
    fs.write("distortion_coefficients", D)
    fs.release()
    cam = CameraModel.from_file(path)
    assert cam.size == (640, 480) and cam.model == "pinhole"
    assert np.allclose(cam.K_matrix, TRUE_K, atol=0.5)
    assert np.allclose(cam.dist_array[:5], TRUE_D, atol=2e-3)
    assert cam.source == str(path)


ROS_CALIBRATION = """image_width: 640
image_height: 480
camera_name: down_cam
camera_matrix:
  rows: 3
  cols: 3
  data: [610.0, 0.0, 318.2, 0.0, 612.0, 243.9, 0.0, 0.0, 1.0]
distortion_model: {model}
distortion_coefficients:
  rows: 1
  cols: {n}
  data: [{d}]
rectification_matrix:
  rows: 3
  cols: 3
  data: [1, 0, 0, 0, 1, 0, 0, 0, 1]
"""

ROS2_ECHO = """header:
  stamp:
    sec: 1712
    nanosec: 5000
  frame_id: down_cam
height: 480
width: 640
distortion_model: {model}
d:
- {d0}
- 0.045
- 0.0012
- -0.0008
- 0.0
k:
- 610.0
- 0.0
- 318.2
- 0.0
- 612.0
- 243.9
- 0.0
- 0.0
- 1.0
binning_x: 0
roi:
  x_offset: 0
  do_rectify: false
---
"""


def test_ros_camera_info_both_layouts_and_the_fisheye(tmp_path):
    a = tmp_path / "calib.yaml"
    a.write_text(ROS_CALIBRATION.format(model="plumb_bob", n=5, d="-0.21, 0.045, 0.0012, -0.0008, 0.0"))
    b = tmp_path / "echo.yaml"
    b.write_text(ROS2_ECHO.format(model='"plumb_bob"', d0=-0.21))
    ca, cb = CameraModel.from_file(a), CameraModel.from_file(b)
    assert np.allclose(ca.K_matrix, TRUE_K) and np.allclose(ca.dist_array[:5], TRUE_D)
    assert ca.fingerprint() == cb.fingerprint()  # one camera, two layouts: one fingerprint
    ros1 = tmp_path / "ros1.yaml"
    ros1.write_text(ROS2_ECHO.replace("\nd:", "\nD:").replace("\nk:", "\nK:").format(model="plumb_bob", d0=-0.2))
    assert CameraModel.from_file(ros1).fingerprint() != ca.fingerprint()  # k1 differs
    fe = tmp_path / "fisheye.yaml"
    fe.write_text(ROS_CALIBRATION.format(model="equidistant", n=4, d="0.05, 0.01, -0.002, 0.0003"))
    cf = CameraModel.from_file(fe)
    assert cf.model == "fisheye" and cf.dist == (0.05, 0.01, -0.002, 0.0003)
    assert cf.fingerprint() != ca.fingerprint()


@pytest.mark.parametrize("text,field", [
    ("image_width: 640\nimage_height: 480\n", "camera_matrix"),
    (ROS_CALIBRATION.format(model="plumb_bob", n=5, d="-0.2, 0, 0, 0, 0").replace("image_height: 480\n", ""),
     "image_height"),
    (ROS_CALIBRATION.format(model="plumb_bob", n=3, d="-0.2, 0, 0"), "distortion_coefficients"),
    (ROS_CALIBRATION.format(model="equidistant", n=5, d="-0.2, 0, 0, 0, 0"), "distortion_coefficients"),
    (ROS_CALIBRATION.format(model="ocam", n=5, d="-0.2, 0, 0, 0, 0"), "distortion_model"),
    (ROS_CALIBRATION.format(model="plumb_bob", n=5, d="-0.2, 0, 0, 0, 0").replace("318.2", "1318.2"),
     "camera_matrix"),
    (ROS2_ECHO.format(model="plumb_bob", d0=-0.2).replace("k:\n- 610.0", "k:\n- .nan"), "k"),
])
def test_errors_name_the_file_and_the_field(tmp_path, text, field):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(CalibrationError, match=f"{p}.*'{field}'"):
        CameraModel.from_file(p)


def test_unreadable_or_missing_file(tmp_path):
    with pytest.raises(CalibrationError, match="no such camera calibration file"):
        CameraModel.from_file(tmp_path / "none.yaml")
    p = tmp_path / "junk.yaml"
    p.write_text("this: [is: not, {yaml\n")
    with pytest.raises(CalibrationError, match=f"{p}"):
        CameraModel.from_file(p)


def test_from_hfov_is_distortion_free_and_passes_frames_untouched():
    cam = CameraModel.from_hfov(320, 240, 60)
    u = cam.undistorter()
    assert u.hfov_deg == pytest.approx(60.0)
    assert u.maps(320, 240) is None and u.maps(640, 480) is None
    frame = np.random.default_rng(0).integers(0, 255, (240, 320, 3), np.uint8)
    assert u(frame) is frame
    rays = cam.pixel_rays([0, 160, 320], [120, 120, 120])  # left edge, centre, right edge
    assert math.degrees(math.atan2(rays[2, 0], rays[2, 2]) - math.atan2(rays[0, 0], rays[0, 2])) == pytest.approx(60)
    assert np.allclose(cam.project(rays), [[0, 120], [160, 120], [320, 120]])


@pytest.mark.parametrize("model,dist", [("pinhole", (-0.2, 0.0, 0.0, 0.0, 0.0)),
                                        ("pinhole", (0.12, 0.03, 0.001, -0.002, 0.0)),
                                        ("fisheye", (0.05, 0.01, 0.0, 0.0))])
def test_undistorted_frame_is_the_pinhole_view_of_the_same_ground(naip_paths, model, dist):
    """A frame rendered through the lens over the 2018 NAIP image, undistorted, equals the ideal pinhole
    view (of the undistorter's field of view) of the same place; the raw frame does not."""
    base = CameraModel.from_hfov(256, 256, 60)
    lens = CameraModel(256, 256, base.K, dist, model)
    with open_raster(naip_paths[2018]) as r:
        xmin, ymin, xmax, ymax = r.bounds_m
        x, y = (xmin + xmax) / 2 + 300, (ymin + ymax) / 2 - 200
        frame = render_view(r, CameraPose(x, y, 150, 40, 0, 60), (256, 256), lens=lens).image
        und = lens.undistorter()
        ideal = render_view(r, CameraPose(x, y, 150, 40, 0, und.hfov_deg), (256, 256)).image
    out = und(frame)
    assert out.shape == frame.shape and out.dtype == np.uint8
    assert _corr(out, ideal) > 0.97
    assert _corr(frame, ideal) < _corr(out, ideal) - 0.02
    assert (out.reshape(-1, 3).max(1) > 0).mean() > 0.999  # no empty rim: every pixel sees the scene


def test_barrel_lens_undistorts_to_a_wider_field_and_maps_are_made_once_per_size():
    cam = CameraModel(640, 480, TRUE_K, TRUE_D)
    u = cam.undistorter()
    assert u.hfov_deg > 2 * math.degrees(math.atan(320 / 610.0))  # barrel: the edges see further
    assert cam.undistorted_hfov_deg() == pytest.approx(u.hfov_deg)
    m1 = u.maps(640, 480)
    assert u.maps(640, 480) is m1  # cached
    m2 = u.maps(320, 240)  # the same camera streaming at half resolution
    assert m2[0].shape[:2] == (240, 320)
    assert u.output_camera(320, 240).K_matrix[0, 0] == pytest.approx(u.output_camera().K_matrix[0, 0] / 2)
    with pytest.raises(ValueError, match="aspect ratio of the calibration 640x480"):
        u.maps(400, 400)
    assert u.requested_hfov_deg is None
    assert cam.undistorter(hfov_deg=50).hfov_deg == pytest.approx(50)


def test_fingerprint_is_stable_and_round_trips_through_a_manifest():
    cam = CameraModel(640, 480, TRUE_K, TRUE_D)
    again = CameraModel.from_dict(cam.to_dict())
    assert again == CameraModel(640, 480, TRUE_K, TRUE_D, source="manifest")
    assert again.fingerprint() == cam.fingerprint() == cam.to_dict()["fingerprint"]
    assert len(cam.fingerprint()) == 16
    assert CameraModel(640, 480, TRUE_K, TRUE_D * 1.01).fingerprint() != cam.fingerprint()
    assert cam.scaled(320, 240).fingerprint() != cam.fingerprint()
    with pytest.raises(ValueError, match="camera model 'ocam'"):
        CameraModel(640, 480, TRUE_K, TRUE_D, "ocam")
