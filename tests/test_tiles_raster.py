"""tiles.raster: opening, colour handling, validity and coordinates on generated and real rasters."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.rasters import texture, with_marker, write_raster
from tiles.raster import RasterError, open_raster


def test_projected_north_coordinates_and_round_trip(tmp_path):
    p = write_raster(tmp_path / "utm.tif", crs="EPSG:32633", origin=(500000, 5000000), pixel_size=(2, 2))
    with open_raster(p) as r:
        assert r.native_metric and r.gsd_m == pytest.approx(2.0)
        assert r.bounds_m == pytest.approx((500000, 5000000 - 256, 500256, 5000000))
        # pixel centre (0.5, 0.5) is 1 m east and 1 m south of the corner
        assert r.pixel_to_metric(0.5, 0.5) == pytest.approx((500001, 4999999))
        lat, lon = r.to_wgs84(500128.0, 4999872.0)
        assert lon == pytest.approx(15.0, abs=0.01)  # central meridian of zone 33
        x, y = r.from_wgs84(lat, lon)
        assert math.dist((x, y), (500128.0, 4999872.0)) < 0.01  # centimetres


def test_southern_hemisphere_round_trip(tmp_path):
    p = write_raster(tmp_path / "south.tif", crs="EPSG:32733", origin=(300000, 7000000))
    with open_raster(p) as r:
        lat, lon = r.to_wgs84(300100.0, 6999900.0)
        assert lat < 0
        assert math.dist(r.from_wgs84(lat, lon), (300100.0, 6999900.0)) < 0.01


def test_geographic_raster_works_in_local_utm(tmp_path):
    # 0.0001 deg pixels at 47 N: about 7.6 m east-west, 11.1 m north-south
    p = write_raster(tmp_path / "geo.tif", crs="EPSG:4326", origin=(-99.2, 47.04), pixel_size=(1e-4, 1e-4))
    with open_raster(p) as r:
        assert not r.native_metric
        assert r.metric_crs.to_epsg() == 32614  # UTM 14N contains -99.2 E
        ex, ey = r.extent_m
        assert ex == pytest.approx(128 * 1e-4 * 111320 * math.cos(math.radians(47.034)), rel=0.02)
        assert ey == pytest.approx(128 * 1e-4 * 111_200, rel=0.02)
        # a known pixel maps to its lon/lat through the metric frame
        x, y = r.pixel_to_metric(64.0, 64.0)
        lat, lon = r.to_wgs84(x, y)
        assert lon == pytest.approx(-99.2 + 64e-4, abs=1e-7)
        assert lat == pytest.approx(47.04 - 64e-4, abs=1e-7)
        col, row = r.metric_to_pixel(x, y)
        assert (col, row) == pytest.approx((64.0, 64.0), abs=1e-6)


def test_square_on_the_ground_from_degrees(tmp_path):
    """A ground square read from an EPSG:4326 raster shows the same ground as the UTM version."""
    # marker at pixel (64, 64) of a degree raster; a read centred on it must show it at the centre
    data = (texture(128, 128, 3) * 150).astype(np.uint8)
    data = with_marker(data, 64, 64, radius=1)
    p = write_raster(tmp_path / "geo.tif", crs="EPSG:4326", origin=(-99.2, 47.04), pixel_size=(1e-4, 1e-4),
                     data=data)
    with open_raster(p) as r:
        x, y = r.pixel_to_metric(64.5, 64.5)
        rgb, valid = r.read_ground_square(x, y, 100.0, 51)
        assert valid.min() > 0.99
        bright = rgb.sum(axis=2) > 3 * 200  # the marker (255), above any texture value (<= 150)
        rows, cols = np.nonzero(bright)
        assert bright.sum() > 20  # ~3 px of 7.6 x 11.1 m seen at ~2 m/px
        assert abs(rows.mean() - 25) <= 1 and abs(cols.mean() - 25) <= 1


def test_not_a_raster_and_no_crs(tmp_path):
    bad = tmp_path / "notes.tif"
    bad.write_text("not an image")
    with pytest.raises(RasterError, match="not a raster"):
        open_raster(bad)
    with pytest.raises(RasterError, match="no such file"):
        open_raster(tmp_path / "missing.tif")
    import rasterio

    p = tmp_path / "nocrs.tif"
    with rasterio.open(p, "w", driver="GTiff", width=8, height=8, count=3, dtype="uint8") as ds:
        ds.write(np.zeros((3, 8, 8), np.uint8))
    with pytest.raises(RasterError, match="no coordinate reference system"):
        open_raster(p)


@pytest.mark.parametrize("kind", ["nodata", "alpha"])
def test_validity_from_nodata_and_alpha(tmp_path, kind):
    p = write_raster(tmp_path / f"{kind}.tif", nodata=0 if kind == "nodata" else None, alpha=kind == "alpha",
                     invalid_box=(0, 0, 64, 128))
    with open_raster(p) as r:
        assert (r.alpha_band is not None) == (kind == "alpha")
        assert r.rgb_bands == [1, 2, 3]
        assert r.valid_fraction() == pytest.approx(0.5, abs=0.02)
        xmin, ymin, xmax, ymax = r.bounds_m
        _, valid_left = r.read_ground_square(xmin + 40, (ymin + ymax) / 2, 40, 16)
        _, valid_right = r.read_ground_square(xmax - 40, (ymin + ymax) / 2, 40, 16)
        assert valid_left.max() < 0.01 and valid_right.min() > 0.99


@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_16bit_and_float_stretched_to_8bit(tmp_path, dtype):
    p = write_raster(tmp_path / f"{dtype}.tif", dtype=dtype)
    with open_raster(p) as r:
        x, y = (r.bounds_m[0] + r.bounds_m[2]) / 2, (r.bounds_m[1] + r.bounds_m[3]) / 2
        rgb, _ = r.read_ground_square(x, y, 200, 64)
        assert rgb.dtype == np.uint8
        # a 2-98 percentile stretch uses the range: neither flat nor saturated
        assert rgb.std() > 30 and np.mean(rgb == 255) < 0.1 and np.mean(rgb == 0) < 0.1


def test_grey_single_band(tmp_path):
    data = (texture(64, 64, 5, bands=1) * 255).astype(np.uint8)
    p = write_raster(tmp_path / "grey.tif", data=data, size=(64, 64))
    with open_raster(p) as r:
        assert r.rgb_bands == [1, 1, 1]
        rgb, _ = r.read_ground_square(*r.pixel_to_metric(32, 32), 40, 20)
        assert np.array_equal(rgb[..., 0], rgb[..., 2])


def test_outside_the_raster_is_invalid(tmp_path):
    p = write_raster(tmp_path / "a.tif")
    with open_raster(p) as r:
        rgb, valid = r.read_ground_square(r.bounds_m[2] + 1000, r.bounds_m[3] + 1000, 50, 16)
        assert valid.max() == 0 and rgb.max() == 0


def test_window_read_matches_pixels(tmp_path):
    """At native resolution, a north-up square read reproduces the raster's own pixels."""
    p = write_raster(tmp_path / "a.tif", pixel_size=(2, 2))
    import rasterio

    with rasterio.open(p) as ds:
        raw = np.moveaxis(ds.read([1, 2, 3]), 0, -1)
    with open_raster(p) as r:
        x, y = r.pixel_to_metric(40, 30)  # corner between pixels: the square is pixel-aligned
        rgb, valid = r.read_ground_square(x, y, 32, 16)  # 16 px of 2 m = the 16x16 pixel block
        assert valid.min() > 0.99
        assert np.abs(rgb.astype(int) - raw[22:38, 32:48].astype(int)).max() <= 1


def test_real_naip_describe(naip_paths):
    with open_raster(naip_paths[2018]) as r:
        d = r.describe()
        assert d["crs"] == "EPSG:26914" and d["gsd_m"] == pytest.approx(5.0)
        assert d["extent_m"][0] == pytest.approx(4670, abs=10) and d["extent_m"][1] == pytest.approx(3620, abs=10)
        assert d["bands"] == 4 and d["rgb_bands"] == [1, 2, 3]  # near-infrared is not colour
        assert 46.9 < d["bounds_wgs84"][0] < 47.1 and -99.3 < d["bounds_wgs84"][1] < -99.1
