"""Replays that render a real camera over the NAIP imagery: the airframe's attitude, a distorting lens, relief,
the barometer, blur and exposure; each frame's truth describes its pixels, and what is reported apart is all
the chain is given."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from runtime.inputs.attitude import CameraAttitude
from runtime.inputs.camera import CameraModel
from runtime.inputs.nadir import nadir_view
from runtime.replay.airframe import attitude_series, turn_radius_m, wobble
from runtime.replay.flights import GeoTiffFlight, weave_waypoints
from runtime.replay.real_camera import CameraEffects, motion_blur
from tiles.raster import open_raster
from tiles.views import CameraPose, render_view

SIZE = 192


def _corr(a, b, mask=None):
    a, b = a.astype(float).mean(2), b.astype(float).mean(2)
    m = np.ones(a.shape, bool) if mask is None else mask > 0
    return float(np.corrcoef(a[m], b[m])[0, 1])


def test_attitude_series_of_each_airframe():
    t = np.arange(0, 60, 0.05)
    turning = 90 + 4.0 * t  # a steady right turn of 4 deg/s
    fw = attitude_series(t, turning, 40.0, "fixed_wing", max_bank_deg=25)
    mid = slice(200, -200)
    expected = math.degrees(math.atan(40.0 * math.radians(4.0) / 9.81))  # coordinated: 15.9 deg
    assert fw[mid, 0] == pytest.approx(expected, abs=0.1) and fw[mid, 1] == pytest.approx(3.0)
    hard = attitude_series(t, 90 + 12.0 * t, 40.0, "fixed_wing", max_bank_deg=25)
    assert hard[mid, 0].max() == pytest.approx(25.0)  # no more than its bank limit
    mr = attitude_series(t, np.full(len(t), 30.0), 15.0, "multirotor")
    assert mr[:, 1] == pytest.approx(-12.0) and mr[:, 0] == pytest.approx(0.0) and mr[:, 2] == pytest.approx(30)
    assert attitude_series(t, turning, 40.0, "none")[:, :2] == pytest.approx(0.0)
    noisy = attitude_series(t, np.full(len(t), 30.0), 15.0, "none", noise_deg=5, rng=np.random.default_rng(0))
    assert noisy[:, 0].std() == pytest.approx(5.0, rel=0.01) and abs(noisy[:, 0].mean()) < 2.5
    w = wobble(2000, 0.05, 1.0, np.random.default_rng(1))
    assert np.corrcoef(w[:-2], w[2:])[0, 1] > 0.8  # smooth over 0.1 s, not white
    with pytest.raises(ValueError, match="airframe 'blimp'"):
        attitude_series(t, turning, 10.0, "blimp")


def test_weave_turns_at_the_radius_of_the_bank():
    r = turn_radius_m(40.0, 25.0)
    assert r == pytest.approx(40.0 ** 2 / (9.81 * math.tan(math.radians(25))))
    wp = weave_waypoints((0, 0, 5000, 3000), r, margin_m=100)
    assert wp[:, 0].min() >= 100 and wp[:, 0].max() <= 4905 and wp[:, 1].min() > 1500 - r and wp[:, 1].max() < 1500 + r
    hdg = np.degrees(np.arctan2(np.diff(wp[:, 0]), np.diff(wp[:, 1])))
    assert hdg.min() == pytest.approx(30, abs=1) and hdg.max() == pytest.approx(150, abs=1)


def test_no_effect_renders_exactly_as_before(naip_paths):
    kw = dict(pattern="curve", size_px=48, speed_mps=40, max_frames=3, seed=4, photometric=0.3)
    plain = list(GeoTiffFlight(naip_paths[2016], 150, **kw))
    same = list(GeoTiffFlight(naip_paths[2016], 150, effects=CameraEffects(), **kw))
    assert not CameraEffects().active and CameraEffects(lens_k1=-0.2).active
    for a, b in zip(plain, same):
        assert np.array_equal(a.image, b.image) and a.meta == b.meta and "truth" not in b.meta


@pytest.mark.parametrize("effects", [
    CameraEffects(airframe="fixed_wing", attitude_noise_deg=5.0, baro_bias_m=10.0, report_delay_s=0.2),
    CameraEffects(airframe="multirotor", attitude_noise_deg=3.0, lens_k1=-0.2, baro_drift_m_per_min=6.0),
])
def test_the_truth_describes_the_pixels_and_the_report_is_apart(naip_paths, effects):
    """Rectify each frame with its TRUE attitude and height (undistorted first): it is the nadir view of
    the place; the reported attitude and altitude differ from the truth as configured."""
    with open_raster(naip_paths[2016]) as r:  # S-turns from the middle of the map (its west edge is bare fields)
        xmin, ymin, xmax, ymax = r.bounds_m
        cx, cy = (xmin + xmax) / 2, (ymin + ymax) / 2
    wp = weave_waypoints((cx, cy - 600, cx + 1500, cy + 600), turn_radius_m(25.0, effects.bank_deg))
    flight = GeoTiffFlight(naip_paths[2016], 150, waypoints=wp, size_px=SIZE, speed_mps=25, fps=1,
                           max_frames=6, seed=11, effects=effects)
    lens = CameraModel(SIZE, SIZE, CameraModel.from_hfov(SIZE, SIZE, 60).K, (effects.lens_k1, 0, 0, 0, 0))
    und = lens.undistorter(hfov_deg=60)
    with open_raster(naip_paths[2016]) as r:
        for fr in flight:
            tr, rep, m = fr.meta["truth"], fr.meta["reported"], fr.meta
            assert (tr["x"], tr["y"]) == (m["x"], m["y"])
            att = CameraAttitude.from_view_angles(tr["camera_heading_deg"], tr["camera_tilt_deg"],
                                                  tr["camera_roll_deg"])
            assert att.tilt_deg == pytest.approx(tr["camera_off_nadir_deg"])
            nv = nadir_view(und.output_camera().K, (SIZE, SIZE), att, tr["height_above_ground_m"])
            out, valid = nv.warp(und(fr.image))
            cx, cy = m["x"] - nv.offset_en_m[0], m["y"] - nv.offset_en_m[1]
            ref = render_view(r, CameraPose(cx, cy, tr["height_above_ground_m"], 0, 0, 60), (SIZE, SIZE)).image
            assert valid.mean() > 0.5 and _corr(out, ref, valid) > 0.93
            # what the chain is given: the barometer and the autopilot's attitude, not the truth
            assert m["altitude_m"] == rep["altitude_rel_m"] and m["heading_deg"] == rep["heading_deg"]
            expected_alt = 150 + effects.baro_bias_m + effects.baro_drift_m_per_min * fr.t / 60
            assert rep["altitude_rel_m"] == pytest.approx(expected_alt)
            assert rep["attitude_t"] == pytest.approx(fr.t - effects.report_delay_s)
            assert tr["height_above_ground_m"] == 150.0 and tr["ground_msl_m"] == 0.0


def test_relief_from_a_dem_changes_the_height_above_ground(naip_paths, tmp_path):
    """A DEM rising 6 % to the east: flying east at a constant barometric altitude, the height above
    ground falls by 6 % of the distance, and the frames see the ground closer (a finer scale)."""
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import from_origin

    with open_raster(naip_paths[2016]) as r:
        xmin, ymin, xmax, ymax = r.bounds_m
        crs = r.metric_crs.to_string()
    cols, rows = np.meshgrid(np.arange(200) + 0.5, np.arange(200) + 0.5)
    z = (300 + 0.06 * cols * 30.0).astype(np.float32)
    with rasterio.open(tmp_path / "ramp.tif", "w", driver="GTiff", width=200, height=200, count=1,
                       dtype="float32", crs=crs, transform=from_origin(xmin - 500, ymax + 500, 30.0, 30.0)) as ds:
        ds.write(z, 1)
    y = (ymin + ymax) / 2
    wp = [[xmin + 300, y], [xmin + 1500, y]]
    flight = GeoTiffFlight(naip_paths[2016], 150, waypoints=wp, size_px=SIZE, speed_mps=100, max_frames=12,
                           effects=CameraEffects(dem=str(tmp_path / "ramp.tif")))
    frames = list(flight)
    d = np.array([f.meta["x"] - frames[0].meta["x"] for f in frames])
    hag = np.array([f.meta["truth"]["height_above_ground_m"] for f in frames])
    assert hag == pytest.approx(150 - 0.06 * d, abs=0.05)
    assert frames[0].meta["truth"]["ground_msl_m"] == pytest.approx(300 + 0.06 * (xmin + 300 - xmin + 500), abs=0.5)
    assert all(f.meta["altitude_m"] == 150 for f in frames)  # the barometer knows nothing of it
    last = frames[-1]
    with open_raster(naip_paths[2016]) as r:
        low = render_view(r, CameraPose(last.meta["x"], y, hag[-1], 90, 0, 60), (SIZE, SIZE)).image
        high = render_view(r, CameraPose(last.meta["x"], y, 150, 90, 0, 60), (SIZE, SIZE)).image
    assert _corr(last.image, low) > _corr(last.image, high) + 0.05
    assert _corr(last.image, low) > 0.9


def test_blur_and_exposure(naip_paths):
    img = np.zeros((64, 64, 3), np.uint8)
    img[:, 32] = 255  # a vertical line
    along_x = motion_blur(img, 8, 0.0)
    along_y = motion_blur(img, 8, 90.0)
    assert (along_x[:, :, 0] > 0).sum() > 5 * (along_y[:, :, 0] > 0).sum()  # smeared across it, not along
    assert along_y[10, 32, 0] == 255
    kw = dict(pattern="curve", size_px=48, speed_mps=40, max_frames=6, seed=4)
    frames = list(GeoTiffFlight(naip_paths[2016], 150, effects=CameraEffects(exposure_jitter=0.3), **kw))
    plain = list(GeoTiffFlight(naip_paths[2016], 150, **kw))
    ratios = [f.image.mean() / p.image.mean() for f, p in zip(frames, plain)]
    assert ratios[0] == pytest.approx(1.0, abs=0.02) and np.std(ratios) > 0.05


def test_replay_cli_has_an_option_for_each_effect():
    out = subprocess.run([sys.executable, "-m", "runtime", "replay", "geotiff", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for opt in ("--airframe", "--attitude-noise-deg", "--bank-deg", "--lens-k1", "--camera-file", "--dem",
                "--relief-m", "--baro-bias-m", "--baro-drift-m-per-min", "--motion-blur-px", "--exposure-jitter",
                "--report-delay-s", "weave"):
        assert opt in out, opt


def test_replay_over_relief_records_the_truth(tiny, tmp_path):
    from runtime.replay.geotiff import replay_geotiff

    res = replay_geotiff(tiny["bundle"], tiny["raster"], db=tiny["db"], altitudes=(150,), out_dir=tmp_path,
                         plots=False, max_frames=3, size_px=64, speed_mps=30, relief_m=30.0, airframe="fixed_wing",
                         pattern="weave")
    frames = res["frames"]
    assert len(frames) == 3 and res["settings"]["relief_m"] == 30.0 and res["settings"]["airframe"] == "fixed_wing"
    assert all(r["true_hag_m"] is not None and r["true_off_nadir_deg"] > 1 for r in frames)
    assert all(r["altitude_m"] == 150 for r in frames)  # the chain flew on the barometer's altitude
    with pytest.raises(ValueError, match="bank_deg"):
        replay_geotiff(tiny["bundle"], tiny["raster"], db=tiny["db"], bank_deg=90, max_frames=1)
