"""Terrain: small synthetic DEM GeoTIFFs (geographic and projected, with nodata) written with rasterio,
resampled into a tile database's CRS by `python -m export --dem`, stored with its hash, read back on board
with numpy alone and interpolated bilinearly."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tiles.terrain import FlatGround, TerrainError, TerrainGrid, open_database_terrain

rasterio = pytest.importorskip("rasterio")
pyproj = pytest.importorskip("pyproj")


def hills(lon, lat):
    """Heights (m) as a smooth function of WGS84 position: 600 m plus two hills."""
    return (600.0 + 40.0 * np.sin((lon + 99.1) * 300.0) * np.cos((lat - 47.0) * 250.0)
            + 15.0 * (lon + 99.1) * 100.0)


def write_dem(path, crs, west, north, res, size, heights_of_xy, *, nodata=None, units=None, hole=None):
    """A north-up single-band float32 DEM whose cell centres get ``heights_of_xy(x, y)`` (CRS units)."""
    from rasterio.transform import from_origin

    w, h = size
    cols, rows = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    z = heights_of_xy(west + cols * res, north - rows * res).astype(np.float32)
    if hole is not None:
        c0, r0, c1, r1 = hole
        z[r0:r1, c0:c1] = nodata
    profile = dict(driver="GTiff", width=w, height=h, count=1, dtype="float32", crs=crs,
                   transform=from_origin(west, north, res, res))
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(z, 1)
        if units:
            ds.units = (units,)
    return path


def test_bilinear_is_exact_on_a_plane_and_nan_where_unknown(tmp_path):
    h = np.fromfunction(lambda r, c: 100 + 2.0 * c - 0.5 * r, (20, 30), dtype=np.float32)
    h[10, 10] = np.nan
    g = TerrainGrid(h, x0=1000.0, y0=5000.0, gsd_m=10.0, crs="EPSG:32614")

    def plane(x, y):  # the heights above, as a function of metric position (cell centres)
        return 100 + 2.0 * ((x - 1000) / 10 - 0.5) - 0.5 * ((5000 - y) / 10 - 0.5)

    x = np.array([1005.0, 1033.3, 1150.0, 1294.9])
    y = np.array([4995.0, 4971.2, 4880.0, 4805.1])
    assert np.allclose(g.height_at(x, y), plane(x, y), atol=1e-4)
    assert g.height_at(1001.0, 4999.0) == pytest.approx(100.0)  # the outer half cell holds the edge value
    assert np.isnan(g.height_at(1000 + 10.5 * 10, 5000 - 10.5 * 10))  # next to the unknown cell
    assert np.isnan(g.height_at(999.0, 4990.0)) and np.isnan(g(1150.0, 5000.5))  # outside
    assert g(1150.0, 4880.0) == pytest.approx(plane(1150.0, 4880.0))  # callable: a renderer's terrain
    out = g.write(tmp_path / "terrain")
    back = TerrainGrid.open(out)
    assert back.crs == "EPSG:32614" and np.array_equal(back.heights, h, equal_nan=True)
    assert np.allclose(back.height_at(x, y), g.height_at(x, y))
    (out / "heights.npy").write_bytes((out / "heights.npy").read_bytes()[:-8])
    with pytest.raises(TerrainError, match="truncated"):
        TerrainGrid.open(out)
    assert FlatGround(12.0).height_at(np.zeros((2, 3)), 0.0).tolist() == [[12.0] * 3] * 2


def test_a_geographic_dem_is_resampled_into_utm(tmp_path):
    from tiles.dem import read_dem

    dem = write_dem(tmp_path / "dem.tif", "EPSG:4326", -99.12, 47.04, 0.0002, (200, 150), hills)
    to_ll = pyproj.Transformer.from_crs("EPSG:32614", "EPSG:4326", always_xy=True)
    to_utm = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:32614", always_xy=True)
    x0, y0 = to_utm.transform(-99.115, 47.035)
    grid = read_dem(dem, crs="EPSG:32614", bounds_m=(x0, y0 - 1500, x0 + 1500, y0), gsd_m=10.0)
    assert grid.crs == "EPSG:32614" and grid.heights.shape == (150, 150)
    rng = np.random.default_rng(0)
    x, y = x0 + rng.uniform(20, 1480, 50), y0 - rng.uniform(20, 1480, 50)
    lon, lat = to_ll.transform(x, y)
    assert np.abs(grid.height_at(x, y) - hills(lon, lat)).max() < 1.0  # two bilinear resamplings of ~15 m cells
    assert grid.source["name"] == "dem.tif" and len(grid.source["sha256"]) == 64
    default = read_dem(dem)  # no CRS asked: the UTM zone of its centre, at its own resolution
    assert default.crs == "EPSG:32614" and 12 < default.gsd_m < 25


def test_nodata_feet_and_no_crs_are_named(tmp_path):
    from tiles.dem import read_dem

    dem = write_dem(tmp_path / "holes.tif", "EPSG:32614", 500000, 5210000, 5.0, (100, 100),
                    lambda x, y: 300 + 0 * x, nodata=-9999.0, hole=(0, 0, 50, 100))
    g = read_dem(dem)
    assert np.isnan(g.height_at(500000 + 100, 5210000 - 100)) and g.height_at(500000 + 400, 5210000 - 100) == 300
    feet = write_dem(tmp_path / "feet.tif", "EPSG:32614", 500000, 5210000, 5.0, (20, 20), lambda x, y: 0 * x,
                     units="ft")
    with pytest.raises(TerrainError, match="in 'ft'"):
        read_dem(feet)
    with rasterio.open(tmp_path / "nocrs.tif", "w", driver="GTiff", width=4, height=4, count=1,
                       dtype="float32") as ds:
        ds.write(np.zeros((1, 4, 4), np.float32))
    with pytest.raises(TerrainError, match="no coordinate reference system"):
        read_dem(tmp_path / "nocrs.tif")
    with pytest.raises(TerrainError, match="no such DEM"):
        read_dem(tmp_path / "none.tif")


def test_export_dem_into_the_tile_database(tiny, tmp_path, caplog):
    """`python -m export --bundle B --db-out DB --dem DEM.tif`: the grid lands in the database's CRS over
    its tiles, hashed in its manifest; the database still opens, verified; a corrupted grid is refused."""
    from export.__main__ import main
    from tiles.db import DatabaseError, TileDatabase

    db = tmp_path / "db"
    shutil.copytree(tiny["db"], db)
    crs = json.loads((db / "manifest.json").read_text())["crs"]
    to_ll = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    dem = write_dem(tmp_path / "dem.tif", "EPSG:4326", -99.25, 47.10, 0.0003, (900, 500), hills)
    assert main(["--bundle", str(tiny["bundle"]), "--db-out", str(db), "--dem", str(dem), "--no-progress"]) == 0
    tdb = TileDatabase.open(db)  # every file hashed, the terrain included
    assert "terrain/heights.npy" in tdb.manifest["files"] and tdb.manifest["terrain"]["relief_m"] > 20
    grid = open_database_terrain(tdb)
    e = tdb.entries[np.asarray(tdb.entries["has_geo"])]
    lon, lat = to_ll.transform(e["x"], e["y"])
    assert np.abs(grid.height_at(e["x"], e["y"]) - hills(lon, lat)).max() < 1.5
    x0, y0, x1, y1 = grid.bounds_m
    assert x0 < e["x"].min() - e["footprint_m"].max() and y1 > e["y"].max() + e["footprint_m"].max()
    heights = np.load(db / "terrain" / "heights.npy")
    heights[5, 5] += 1.0
    np.save(db / "terrain" / "heights.npy", heights)
    with pytest.raises(DatabaseError, match="heights.npy: sha256 differs"):
        TileDatabase.open(db)
    elsewhere = write_dem(tmp_path / "far.tif", "EPSG:4326", 10.0, 50.0, 0.001, (50, 50), hills)
    assert main(["--bundle", str(tiny["bundle"]), "--db-out", str(db), "--dem", str(elsewhere)]) == 2
    assert "far.tif has no height inside the area" in caplog.text


def test_a_database_without_dem_is_flat(tiny):
    assert open_database_terrain(tiny["db"]) is None
