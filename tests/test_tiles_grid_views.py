"""tiles.grid and tiles.views: footprints, grid counts, tile placement, view ground truth."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.rasters import texture, with_marker, write_raster
from tiles.grid import footprint_m, grid_counts, read_tile, tile_grid, tiles_to_entries
from tiles.raster import RasterError, open_raster
from tiles.views import CameraPose, ground_to_image, image_to_ground, render_view


def test_footprint_formula():
    assert footprint_m(100, 90) == pytest.approx(200.0)
    assert footprint_m(150, 60) == pytest.approx(2 * 150 * math.tan(math.radians(30)))
    with pytest.raises(ValueError, match="altitude_m"):
        footprint_m(0, 60)
    with pytest.raises(ValueError, match="hfov_deg"):
        footprint_m(100, 180)


def test_grid_counts_formula():
    assert grid_counts(1000, 500, 200, 100) == (9, 4)  # floor((E - F) / S) + 1
    assert grid_counts(1000, 500, 200, 200) == (5, 2)
    assert grid_counts(199, 1000, 200, 100) == (0, 9)
    assert grid_counts(250, 250, 200, 100) == (1, 1)


def test_grid_centred_and_known_point(tmp_path):
    p = write_raster(tmp_path / "a.tif", origin=(500000, 5000000), pixel_size=(2, 2), size=(128, 128))
    with open_raster(p) as r:  # 256 x 256 m
        tiles = tile_grid(r, 100, 50)
        assert len(tiles) == 16  # floor((256 - 100) / 50) + 1 = 4 per axis
        xs = sorted({t.x for t in tiles})
        assert xs[0] - 50 - 500000 == pytest.approx(500256 - (xs[-1] + 50))  # equal margins
        t0 = next(t for t in tiles if t.row == 0 and t.col == 0)
        assert t0.y > next(t for t in tiles if t.row == 1 and t.col == 0).y  # row 0 is north
        # a known point: the tile containing (500060, 4999940) is row 0, col 0 (centre 500053, 4999947)
        assert (t0.x, t0.y) == pytest.approx((500053, 4999947))
        assert t0.window == (1, 1, 51, 51)  # x 500003..500103 = pixels 1.5..51.5, partly covered
        lat, lon = r.to_wgs84(t0.x, t0.y)
        assert (t0.lat, t0.lon) == pytest.approx((lat, lon))


def test_footprint_larger_than_raster(tmp_path):
    p = write_raster(tmp_path / "a.tif")
    with open_raster(p) as r, pytest.raises(RasterError, match="does not fit.*fly lower"):
        tile_grid(r, 1000)


def test_invalid_tiles_skipped(tmp_path):
    p = write_raster(tmp_path / "a.tif", nodata=0, invalid_box=(0, 0, 64, 128))
    with open_raster(p) as r:
        all_tiles = tile_grid(r, 64, 32, min_valid=0.0)
        kept = tile_grid(r, 64, 32, min_valid=0.9)
        assert 0 < len(kept) < len(all_tiles)
        xmid = (r.bounds_m[0] + r.bounds_m[2]) / 2
        assert all(t.x - 32 >= xmid - 2 for t in kept)  # only the valid (east) half
        assert all(t.valid_fraction >= 0.9 for t in kept)


def test_geographic_tiles_are_square_on_the_ground(tmp_path):
    p = write_raster(tmp_path / "geo.tif", crs="EPSG:4326", origin=(-99.2, 47.04), pixel_size=(1e-4, 1e-4),
                     size=(256, 256))
    with open_raster(p) as r:
        tiles = tile_grid(r, 300, 300)
        a, b = tiles[0], tiles[1]
        assert b.col == a.col + 1 and math.dist((a.x, a.y), (b.x, b.y)) == pytest.approx(300)
        # in degrees the tile window is wider than tall in pixels (0.0001 deg is shorter east-west)
        assert a.window[2] > a.window[3]


def test_entries_from_tiles(tmp_path):
    p = write_raster(tmp_path / "a.tif")
    with open_raster(p) as r:
        tiles = tile_grid(r, 100, 50)
        e = tiles_to_entries(tiles, layer=2, altitude_m=150, source=0)
        assert len(e) == len(tiles) and e["has_geo"].all() and (e["layer"] == 2).all()
        assert e[0]["label"] == "a150_r0000_c0000" and e["x"][3] == tiles[3].x
        assert e["altitude_m"][0] == 150 and e["footprint_m"][0] == 100


def test_nadir_view_equals_tile_on_real_naip(naip_paths):
    with open_raster(naip_paths[2018]) as r:
        tiles = tile_grid(r, footprint_m(200, 60), min_valid=1.0)
        t = tiles[len(tiles) // 2]
        view = render_view(r, CameraPose(t.x, t.y, 200, 0, 0, 60), (96, 96))
        assert np.array_equal(view.image, read_tile(r, t, 96))
        assert view.centre_xy == pytest.approx((t.x, t.y))


def test_projection_round_trip_with_tilt_and_heading():
    pose = CameraPose(1000.0, 2000.0, 150.0, heading_deg=37.0, tilt_deg=20.0, hfov_deg=70.0)
    u = np.array([0.0, 10.0, 128.0, 255.0, 256.0])
    v = np.array([0.0, 200.0, 128.0, 5.0, 256.0])
    g = image_to_ground(pose, (256, 256), u, v)
    back = ground_to_image(pose, (256, 256), g[:, 0], g[:, 1])
    assert np.allclose(back, np.stack([u, v], 1), atol=1e-6)
    # tilt looks ahead: the optical axis meets the ground altitude * tan(tilt) along the heading
    c = image_to_ground(pose, (256, 256), [128], [128])[0]
    ahead = 150 * math.tan(math.radians(20))
    assert c == pytest.approx((1000 + ahead * math.sin(math.radians(37)), 2000 + ahead * math.cos(math.radians(37))))


def test_horizon_refused():
    with pytest.raises(ValueError, match="horizon"):
        image_to_ground(CameraPose(0, 0, 100, tilt_deg=60, hfov_deg=90), (100, 100), [50], [0])


@pytest.mark.parametrize("heading,tilt", [(0, 0), (90, 0), (211, 15)])
def test_view_places_ground_truth_exactly(tmp_path, heading, tilt):
    """Render a view of a marker and find the marker where the geometry puts it."""
    data = (texture(256, 256, 7) * 120).astype(np.uint8)
    data = with_marker(data, 150, 100, radius=1)  # pixel (150, 100): centre at (150.5, 100.5)
    p = write_raster(tmp_path / "m.tif", data=data, size=(256, 256), pixel_size=(1, 1), origin=(400000, 6000000))
    with open_raster(p) as r:
        mx, my = r.pixel_to_metric(150.5, 100.5)
        pose = CameraPose(mx + 8, my - 5, 60.0, heading_deg=heading, tilt_deg=tilt, hfov_deg=60)
        view = render_view(r, pose, (160, 160))
        expect = ground_to_image(pose, (160, 160), [mx], [my])[0]
        img = view.image.sum(axis=2).astype(float)
        w = np.where(img > img.max() * 0.8, img, 0)
        rows, cols = np.indices(w.shape)
        found = ((cols * w).sum() / w.sum() + 0.5, (rows * w).sum() / w.sum() + 0.5)
        assert math.dist(found, expect) < 1.0  # pixels


def test_view_of_other_year_finds_its_place_in_reference(naip_paths):
    """A view rendered from 2012 over a known point is located in the 2018 map by template matching."""
    import cv2

    with open_raster(naip_paths[2012]) as q, open_raster(naip_paths[2018]) as ref:
        xmin, ymin, xmax, ymax = ref.bounds_m
        x, y = xmin + 1830.0, ymin + 1410.0
        view = render_view(q, CameraPose(x, y, 300, 0, 0, 60), (70, 70))  # 346 m at ~5 m/px
        big, _ = ref.read_ground_square(x, y, 346.4 * 3, 210)
        res = cv2.matchTemplate(cv2.cvtColor(big, cv2.COLOR_RGB2GRAY), cv2.cvtColor(view.image, cv2.COLOR_RGB2GRAY),
                                cv2.TM_CCOEFF_NORMED)
        _, _, _, loc = cv2.minMaxLoc(res)
        centre = (loc[0] + 35, loc[1] + 35)
        assert math.dist(centre, (105, 105)) <= 3  # within ~15 m across six years of change


def test_photometric_changes_but_keeps_structure(naip_paths):
    with open_raster(naip_paths[2018]) as r:
        t = tile_grid(r, 400, 400)[5]
        a = render_view(r, CameraPose(t.x, t.y, 300, hfov_deg=67.4), (64, 64)).image
        b = render_view(r, CameraPose(t.x, t.y, 300, hfov_deg=67.4), (64, 64), photometric=1.0,
                        rng=np.random.default_rng(1)).image
        assert np.abs(a.astype(int) - b.astype(int)).mean() > 2
        corr = np.corrcoef(a.mean(axis=2).ravel(), b.mean(axis=2).ravel())[0, 1]
        assert corr > 0.6
