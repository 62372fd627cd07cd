"""runtime.replay.flights: paths, GeoTIFF-rendered flights with ground truth, SUES-200 flights; import hygiene."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from runtime.replay.flights import (
    GeoTiffFlight,
    SUES200Flight,
    curve_waypoints,
    lawnmower_waypoints,
    sample_path,
)


def test_sample_path_spacing_and_heading():
    pts, hdg = sample_path([[0, 0], [0, 100], [100, 100]], 25.0)
    assert len(pts) == 9  # 200 m of path, a point every 25 m, both ends included
    assert np.allclose(np.hypot(*np.diff(pts, axis=0).T), 25.0)
    assert hdg[0] == pytest.approx(0.0) and hdg[-2] == pytest.approx(90.0)  # north, then east
    with pytest.raises(ValueError, match="at least 2 waypoints"):
        sample_path([[0, 0]], 1.0)


def test_lawnmower_and_curve_stay_inside():
    wp = lawnmower_waypoints((0, 0, 1000, 500), spacing_m=200, margin_m=50)
    assert wp[:, 0].min() == 50 and wp[:, 0].max() == 950
    assert wp[:, 1].max() == 450 and wp[:, 1].min() >= 50
    assert len(wp) == 2 * 3  # legs at y = 450, 250, 50
    c = curve_waypoints((0, 0, 1000, 500), margin_m=50, seed=1)
    assert c[:, 0].min() >= 50 and c[:, 0].max() <= 950 and c[:, 1].min() >= 50 and c[:, 1].max() <= 450
    with pytest.raises(ValueError, match="margin"):
        lawnmower_waypoints((0, 0, 100, 100), 10, margin_m=60)


def test_geotiff_flight_frames_have_ground_truth(naip_paths):
    from tiles.raster import open_raster
    from tiles.views import CameraPose, render_view

    flight = GeoTiffFlight(naip_paths[2016], 200, pattern="lawnmower", size_px=40, speed_mps=50, fps=2,
                           max_frames=5)
    frames = list(flight)
    assert len(frames) == 5 == len(flight)
    assert [f.t for f in frames] == [0.0, 0.5, 1.0, 1.5, 2.0]
    with open_raster(naip_paths[2016]) as r:
        xmin, ymin, xmax, ymax = r.bounds_m
        for f in frames:
            m = f.meta
            assert f.image.shape == (40, 40, 3) and f.image.dtype == np.uint8
            assert xmin < m["x"] < xmax and ymin < m["y"] < ymax
            assert (m["lat"], m["lon"]) == pytest.approx(r.to_wgs84(m["x"], m["y"]))
            assert m["altitude_m"] == 200 and m["valid_fraction"] > 0.99
        # consecutive frames are speed / fps apart, and the image is the view from the reported pose
        d = math.hypot(frames[1].meta["x"] - frames[0].meta["x"], frames[1].meta["y"] - frames[0].meta["y"])
        assert d == pytest.approx(25.0)
        m = frames[2].meta
        view = render_view(r, CameraPose(m["x"], m["y"], 200, m["heading_deg"], 0.0, 60.0), (40, 40))
        assert np.array_equal(view.image, frames[2].image)


def test_sues200_flight_reads_frames_and_truth(tmp_path, naip_paths):
    from tools.make_sues200 import make_sues200

    make_sues200(tmp_path, naip_paths[2018], [naip_paths[2020]], n_locations=2, altitudes=(250,), frames=4,
                 size_px=32, seed=2)
    fl = SUES200Flight(tmp_path, 1, 250, fps=2.0)
    frames = list(fl)
    assert len(frames) == 4 and frames[3].t == 1.5
    assert frames[0].meta["location"] == "0001" and frames[0].image.shape == (32, 32, 3)
    assert all(math.isfinite(f.meta["x"]) for f in frames)
    assert "0001" in fl.describe()


def test_replay_modules_import_without_torch_rasterio_matplotlib():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'timm', 'rasterio', 'matplotlib'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import common.metrics, common.sues200_layout, runtime.replay.flights, runtime.replay, runtime.replay.plots\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
