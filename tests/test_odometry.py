"""Visual odometry on real NAIP views: known displacements and turns, and refusals instead of guesses."""

from __future__ import annotations

import math

import numpy as np
import pytest

from runtime.odometry import Motion, OdometryConfig, VisualOdometry, _to_east_north
from runtime.preprocess import north_up


def _pair(raster, x, y, dx, dy, alt, h0, h1, derotate, seed=0):
    from tiles.views import CameraPose, photometric_jitter, render_view

    out = []
    for px, py, h in ((x, y, h0), (x + dx, y + dy, h1)):
        img = render_view(raster, CameraPose(px, py, alt, h, 0.0, 60.0), (256, 256)).image
        img = photometric_jitter(img, np.random.default_rng(seed), 0.3)
        out.append(north_up(img, h) if derotate else img)
    return out


@pytest.mark.parametrize("detector", ["sift", "orb"])
def test_known_displacement_on_naip(naip_paths, detector):
    from tiles.raster import open_raster

    rng = np.random.default_rng(3)
    errors, yaw_errors, refused = [], [], 0
    with open_raster(naip_paths[2016]) as r:
        xmin, ymin, xmax, ymax = r.bounds_m
        for trial in range(12):
            x, y = rng.uniform(xmin + 500, xmax - 500), rng.uniform(ymin + 500, ymax - 500)
            alt = float(rng.choice([150, 200, 250, 300]))
            h0 = float(rng.uniform(0, 360))
            h1 = h0 + float(rng.uniform(-15, 15))
            step, ang = rng.uniform(15, 50), rng.uniform(0, 2 * math.pi)
            dx, dy = step * math.sin(ang), step * math.cos(ang)
            derotate = trial % 2 == 0
            a, b = _pair(r, x, y, dx, dy, alt, h0, h1, derotate, seed=trial)
            vo = VisualOdometry(OdometryConfig(detector=detector))
            assert not vo.update(a, 0.0, alt, 60.0, None if derotate else h0).ok  # first frame: no motion
            m = vo.update(b, 1.0, alt, 60.0, None if derotate else h1)
            if not m.ok:
                refused += 1
                continue
            errors.append(math.hypot(m.dx_e_m - dx, m.dy_n_m - dy))
            yaw_errors.append(abs(m.dyaw_deg - (0.0 if derotate else h1 - h0)))
            assert m.inliers >= vo.cfg.min_inliers and m.dt_s == 1.0
    assert refused <= 2, f"{refused} of 12 textured NAIP pairs got no estimate"
    assert max(errors) < 3.0, f"displacement errors {np.round(errors, 2)} m (truth 15-50 m)"
    assert np.median(errors) < 1.0
    assert max(yaw_errors) < 1.5, f"heading change errors {np.round(yaw_errors, 2)} deg"


def test_refuses_featureless_noisy_and_late_frames(naip_paths):
    from tiles.raster import open_raster

    with open_raster(naip_paths[2020]) as r:
        x, y = (r.bounds_m[0] + r.bounds_m[2]) / 2, (r.bounds_m[1] + r.bounds_m[3]) / 2
        a, b = _pair(r, x, y, 30.0, 0.0, 200.0, 0.0, 0.0, True)
    vo = VisualOdometry()
    grey = np.full((256, 256, 3), 128, np.uint8)
    assert vo.update(grey, 0.0, 200.0, 60.0).ok is False
    m = vo.update(grey, 1.0, 200.0, 60.0)
    assert not m.ok and "features" in m.reason and not m.jump and m.bland  # nothing to see: not a jump
    rng = np.random.default_rng(0)
    vo.update(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8), 2.0, 200.0, 60.0)
    m = vo.update(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8), 3.0, 200.0, 60.0)
    assert not m.ok and m.jump and not m.bland, f"independent noise frames gave {m}"  # textured, unmatched
    vo.update(a, 10.0, 200.0, 60.0)
    m = vo.update(b, 20.0, 200.0, 60.0)  # 10 s later: a dropped stream, not a motion
    assert not m.ok and "apart" in m.reason and not m.bland
    m = vo.update(a, 21.0, float("nan"), 60.0)
    assert not m.ok and "altitude" in m.reason


def test_axes_and_errors():
    assert _to_east_north(1.0, 0.0, None) == (1.0, 0.0)
    e, n = _to_east_north(0.0, 1.0, 90.0)  # image top faces east
    assert e == pytest.approx(1.0) and n == pytest.approx(0.0, abs=1e-12)
    e, n = _to_east_north(1.0, 0.0, 90.0)  # image right faces south
    assert e == pytest.approx(0.0, abs=1e-12) and n == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="detector 'akaze'"):
        OdometryConfig(detector="akaze")
    with pytest.raises(ValueError, match="RGB uint8"):
        VisualOdometry().update(np.zeros((8, 8), np.uint8), 0.0, 100.0, 60.0)
    assert math.isnan(Motion(False).distance_m)
