"""Registration on real imagery: a known offset and heading recovered, a wrong window rejected, the heading
found without a compass, a map much finer than the frame resampled (Finland: skipped without /work/shared)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from export.map_imagery import write_map_imagery
from runtime.localisation.registration import Registrar, RegistrationConfig, pose_from_affine, prepare_frame
from tiles.map_imagery import MapImagery

FINLAND = Path("/work/shared/data/finland/turku_0p15m_utm34n.tif")
HFOV = 60.0


def _angle_err(a, b):
    return abs((a - b + 180.0) % 360.0 - 180.0)


@pytest.fixture(scope="module")
def naip(naip_paths, tmp_path_factory):
    from tiles.raster import open_raster

    d = tmp_path_factory.mktemp("reg")
    imagery = MapImagery.open(write_map_imagery([naip_paths[2018]], d / "imagery", gsd_m=5.0))
    return imagery, {y: open_raster(naip_paths[y]) for y in (2016, 2018)}


def _frame(raster, x, y, alt, heading, px=320, photometric=None, seed=0):
    from tiles.views import CameraPose, render_view

    size = (px, px) if np.isscalar(px) else px
    return render_view(raster, CameraPose(x, y, alt, heading, 0.0, HFOV), size, photometric=photometric,
                       rng=np.random.default_rng(seed)).image


def test_prepare_frame_geometry():
    frame = np.zeros((100, 200, 3), np.uint8)
    img, mask, P = prepare_frame(frame, 1.0, 2.0, 90.0)  # half size, turned a quarter
    assert 100 <= img.shape[0] <= 104 and 50 <= img.shape[1] <= 54 and mask.mean() > 0.85  # tall now
    heading, scale = pose_from_affine(P[:, :2] * 2.0)  # frame px -> north-up px at the frame's scale
    assert scale == pytest.approx(1.0) and heading == pytest.approx(90.0)


def test_known_offset_and_heading_recovered_same_year(naip):
    imagery, rasters = naip
    reg = Registrar(imagery)
    x, y, heading = 488200.0, 5207300.0, 137.0
    frame = _frame(rasters[2018], x, y, 300.0, heading, px=(480, 360))  # a 4:3 camera
    for compass in (heading + 4.0, None):  # a compass 4 degrees off, and none at all
        r = reg.register(frame, 300.0, HFOV, (x + 60.0, y - 45.0), compass)
        assert r.ok, r.reason
        assert r.method == "correlation"
        assert math.hypot(r.x - x, r.y - y) < 5.0  # one map pixel
        assert _angle_err(r.heading_deg, heading) < 2.0 and abs(r.scale - 1) < 0.05
        assert 0 < r.sigma_m < 20


def test_candidates_tried_in_order_until_one_verifies(naip):
    imagery, rasters = naip
    reg = Registrar(imagery)
    x, y = 488200.0, 5207300.0
    frame = _frame(rasters[2018], x, y, 300.0, 30.0)
    wrong1, wrong1_again, right = (x + 1500, y), (x + 1520, y + 10), (x - 50, y + 40)
    r = reg.register_candidates(frame, 300.0, HFOV, [wrong1, wrong1_again, right], 30.0)
    assert r.ok and math.hypot(r.x - x, r.y - y) < 5.0
    miss = reg.register_candidates(frame, 300.0, HFOV, [wrong1, wrong1_again, (x - 1500, y)], 30.0)
    assert not miss.ok and "2 candidate windows tried" in miss.reason  # the near-duplicate was skipped


def test_wrong_window_rejected(naip):
    imagery, rasters = naip
    reg = Registrar(imagery)
    rng = np.random.default_rng(3)
    n_ok = 0
    for _ in range(6):
        x, y, h = rng.uniform(487000, 489500), rng.uniform(5206500, 5208500), rng.uniform(0, 360)
        frame = _frame(rasters[2016], x, y, 250.0, h)
        wrong = (x + 1200.0 if x < 488000 else x - 1200.0, y)
        r = reg.register(frame, 250.0, HFOV, wrong, h)
        n_ok += r.ok
        assert r.reason or r.ok
    assert n_ok == 0
    off = reg.register(_frame(rasters[2018], 488000, 5207000, 250.0, 0.0), 250.0, HFOV, (0.0, 0.0), 0.0)
    assert not off.ok and "off the map" in off.reason


def test_held_out_year_verified_fixes_are_accurate(naip):
    """2016 frames over the 2018 map: whatever verifies is within 3 map pixels (some frames do)."""
    imagery, rasters = naip
    reg = Registrar(imagery)
    rng = np.random.default_rng(11)
    errs = []
    for _ in range(8):
        x, y, h = rng.uniform(487000, 489500), rng.uniform(5206500, 5208500), rng.uniform(0, 360)
        r = reg.register(_frame(rasters[2016], x, y, 300.0, h), 300.0, HFOV,
                         (x + rng.uniform(-80, 80), y + rng.uniform(-80, 80)), h + rng.normal(0, 3))
        if r.ok:
            errs.append(math.hypot(r.x - x, r.y - y))
    assert len(errs) >= 1 and max(errs) < 15.0


def test_config_errors_name_the_value():
    with pytest.raises(ValueError, match="'sift2'"):
        from runtime.localisation.registration_methods import detect

        detect(np.zeros((64, 64), np.uint8), np.ones((64, 64), np.uint8), "sift2", 100)
    with pytest.raises(ValueError, match="method 'surf'"):
        RegistrationConfig(method="surf")
    with pytest.raises(ValueError, match="window_footprints"):
        RegistrationConfig(window_footprints=1.0)


@pytest.fixture(scope="module")
def finland(tmp_path_factory):
    if not FINLAND.is_file():
        pytest.skip(f"{FINLAND} absent (the fine map lives outside the repository)")
    from tiles.raster import open_raster

    raster = open_raster(FINLAND)
    imagery = MapImagery.open(write_map_imagery([raster], tmp_path_factory.mktemp("fin") / "im", gsd_m=0.3))
    return imagery, raster


@pytest.mark.parametrize("kind", ["sift", "orb"])
def test_fine_map_features_register_and_reject(finland, kind):
    imagery, raster = finland
    reg = Registrar(imagery, RegistrationConfig(features=kind))
    xmin, ymin, xmax, ymax = raster.bounds_m
    x, y, heading = (xmin + xmax) / 2 + 20, ymin + 220.0, 237.0  # fields, roads, houses
    frame = _frame(raster, x, y, 100.0, heading, px=512, photometric=1.0, seed=1)
    r = reg.register(frame, 100.0, HFOV, (x - 20.0, y + 25.0), None)
    assert r.ok and r.method == "features", r.reason
    assert math.hypot(r.x - x, r.y - y) < 1.0 and _angle_err(r.heading_deg, heading) < 1.0
    assert r.inliers >= reg.cfg.min_inliers and abs(r.scale - 1) < 0.05
    wrong = reg.register(frame, 100.0, HFOV, (xmin + 0.8 * (xmax - xmin), (ymin + ymax) / 2), None)
    assert not wrong.ok and "off the map" not in wrong.reason


def test_map_much_finer_than_the_frame_is_resampled(finland, tmp_path):
    """A 0.15 m/px map against a small frame at 150 m (0.68 m/px): worked at the frame's resolution."""
    _, raster = finland
    imagery = MapImagery.open(write_map_imagery([raster], tmp_path / "native", gsd_m=raster.gsd_m))
    reg = Registrar(imagery)
    xmin, ymin, xmax, ymax = raster.bounds_m
    x, y = (xmin + xmax) / 2, ymin + 220.0
    r = reg.register(_frame(raster, x, y, 150.0, 20.0, px=256, photometric=1.0), 150.0, HFOV, (x + 30, y), 20.0)
    assert r.ok, r.reason
    assert math.hypot(r.x - x, r.y - y) < 2.0


def test_the_gradient_image_is_the_same_wherever_its_arrays_lie_in_memory():
    """The chain repeats run to run: cv2.magnitude's last bit depended on the alignment numpy gave the
    arrays, which moved a correlation peak by 1e-6 m, then a posterior mode by a cell, then a registration
    window, and a replayed flight's fixes changed from run to run."""
    import cv2

    from runtime.localisation.registration_methods import gradient_image

    rng = np.random.default_rng(0)
    grey = cv2.GaussianBlur(rng.integers(0, 255, (137, 137)).astype(np.uint8), (0, 0), 2)
    outs, keep = set(), []
    for k in range(64):
        keep.append(np.empty(4 * k + 1, np.uint8))  # moves where the next arrays are allocated
        outs.add(gradient_image(grey, 1.0).tobytes())
    assert len(outs) == 1
