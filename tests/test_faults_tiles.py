"""Fault injection for maps, databases and their commands (issue 15): each case a user hit, refused clearly.

Real files throughout: NAIP GeoTIFFs cut short, folders and text files given as rasters, generated rasters
in other CRSs, databases with bytes changed on disk; the commands run as subprocesses as a user runs them.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO
from tests.rasters import write_raster
from tiles.raster import RasterError, open_raster


def _run(module, *args, timeout=180):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def _last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


@pytest.fixture
def truncated_tif(naip_paths, tmp_path) -> Path:
    data = naip_paths[2018].read_bytes()
    p = tmp_path / "cut.tif"
    p.write_bytes(data[: len(data) // 2])  # an interrupted copy: the header is fine, pixels are missing
    return p


def test_truncated_geotiff_refused_by_describe_preview_and_export(truncated_tif, tmp_path):
    from tools.toy_assets import tiny_assets

    for args in (("describe", truncated_tif), ("preview", truncated_tif, "--altitude", 300, "--hfov", 60)):
        out = _run("tiles", *args)
        assert out.returncode == 2, out.stderr
        assert "truncated or damaged" in _last_line(out.stderr) and "Traceback" not in out.stderr
    out = _run("export", "--bundle", tiny_assets()["bundle"], "--tiles", truncated_tif, "--db-out", tmp_path / "db",
               "--no-progress")
    assert out.returncode == 2 and "truncated or damaged" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "db").exists()


def test_folder_empty_file_and_non_raster_explained(naip_paths, tmp_path):
    folder = tmp_path / "maps"
    folder.mkdir()
    (folder / "a.tif").write_bytes(naip_paths[2018].read_bytes())
    with pytest.raises(RasterError, match=r"is a folder, not a raster file \(it holds a.tif\)"):
        open_raster(folder)
    (tmp_path / "empty.tif").write_bytes(b"")
    with pytest.raises(RasterError, match="empty"):
        open_raster(tmp_path / "empty.tif")
    (tmp_path / "page.tif").write_text("<html>404 not found</html>")
    out = _run("tiles", "describe", tmp_path / "page.tif")
    assert out.returncode == 2 and "is not a raster GDAL can read" in _last_line(out.stderr)
    out = _run("tiles", "describe", folder)
    assert out.returncode == 2 and "is a folder" in _last_line(out.stderr)


def test_one_hfov_rule_for_view_preview_and_export(naip_paths):
    tif = naip_paths[2018]
    errors = [
        _run("tiles", "view", tif, "--lat", 47.02, "--lon", -99.15, "--altitude", 200, "--hfov", 179),
        _run("tiles", "preview", tif, "--altitude", 200, "--hfov", 179),
        _run("export", "--bundle", "nowhere", "--tiles", tif, "--hfov", 179),
    ]
    messages = {_last_line(e.stderr).split("error: ", 1)[-1] for e in errors}
    assert all(e.returncode == 2 for e in errors)
    assert messages == {"argument --hfov-deg/--hfov: hfov_deg must be in (0, 150] degrees, got 179.0; give the camera's "
                        "horizontal field of view (undistort a fisheye to a pinhole first)"}


def test_view_outside_the_map_and_swapped_lat_lon_are_errors(naip_paths, tmp_path):
    tif, png = naip_paths[2018], tmp_path / "v.png"
    out = _run("tiles", "view", tif, "--lat", 47.5, "--lon", -99.15, "--altitude", 200, "--out", png)
    assert out.returncode == 2 and "is outside" in out.stderr and "lat 47.0040243..47.0366826" in out.stderr
    out = _run("tiles", "view", tif, "--lat", -99.15, "--lon", 47.02, "--altitude", 200, "--out", png)
    assert out.returncode == 2 and "swap --lat and --lon" in out.stderr and "NaN" not in out.stderr
    assert not png.exists()  # nothing written for a refused view


def test_coarse_map_warned_and_long_grids_show_progress(naip_paths, tmp_path, capsys, monkeypatch):
    from tiles import grid

    coarse = write_raster(tmp_path / "coarse.tif", crs="EPSG:32614", origin=(480000.0, 5210000.0),
                          pixel_size=(90.0, 90.0), size=(40, 40))
    out = _run("tiles", "preview", coarse, "--altitude", 150, "--hfov", 60, "--out", tmp_path / "g.png")
    assert out.returncode == 0, out.stderr
    assert "too coarse for tiles of 173 m at 150 m: 90 m/px gives 1.9 px per tile (at least 16 wanted)" in out.stderr
    fine = _run("tiles", "preview", naip_paths[2018], "--altitude", 150, "--hfov", 60, "--out", tmp_path / "g2.png")
    assert fine.returncode == 0 and "too coarse" not in fine.stderr  # 5 m/px: 35 px per tile
    monkeypatch.setattr(grid, "PROGRESS_MIN_TILES", 10)
    with open_raster(coarse) as r:
        tiles = grid.tile_grid(r, 400.0, progress=True)
    assert len(tiles) > 10 and "tile grid coarse.tif (400 m)" in capsys.readouterr().err


def test_map_pair_compared_in_one_crs(naip_paths, tmp_path):
    from export.bundle_export import check_map_pair
    from tiles.mapcheck import check_overlap

    far = write_raster(tmp_path / "far.tif", crs="EPSG:32633", origin=(500000.0, 5000000.0), size=(64, 64))
    with pytest.raises(RasterError, match="share no ground") as e:
        check_map_pair(naip_paths[2018], far)
    km = float(str(e.value).split("centres are ")[1].split(" km")[0].replace(",", ""))
    assert abs(km - _haversine_km(47.02, -99.155, 45.14, 15.0)) < 0.01 * km  # not a difference of two zones
    half = write_raster(tmp_path / "half.tif", crs="EPSG:4326", origin=(-99.155, 47.05), pixel_size=(5e-4, 5e-4),
                        size=(100, 100))
    with open_raster(naip_paths[2018]) as a, open_raster(half) as b:
        ov = check_overlap(a, b)
        assert ov["crs"] == "EPSG:26914" and 0.4 < ov["fraction_a"] < 0.6
        with pytest.raises(RasterError, match="share only"):
            check_overlap(a, b, min_fraction=0.9)
    # the export refuses before it writes anything (the checkpoint is never even loaded)
    ckpt = tmp_path / "x.pt"
    ckpt.write_bytes(b"not loaded")
    out = _run("export", ckpt, "--out", tmp_path / "bundle", "--eval-tifs", naip_paths[2016], far)
    assert out.returncode == 2 and "share no ground" in out.stderr and not (tmp_path / "bundle").exists()


def _haversine_km(lat1, lon1, lat2, lon2):
    p1, p2, dl = math.radians(lat1), math.radians(lat2), math.radians(lon2 - lon1)
    a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0 * math.asin(math.sqrt(a))


def test_database_corrupted_in_place_or_nan_refused_at_open(tmp_path):
    from tests.test_tiles_db import MODEL, PRE, _make
    from tiles import db as tdb
    from tiles.db import DatabaseError, TileDatabase, write_database

    emb, e, lays = _make(n=40)
    bad = emb.copy()
    bad[3, 1] = np.nan
    with pytest.raises(DatabaseError, match="NaN"):  # refused at build: nothing written
        write_database(tmp_path / "nan", bad, e, layers=lays, model=MODEL, preprocess=PRE)
    assert not (tmp_path / "nan").exists()
    p = write_database(tmp_path / "db", emb, e, layers=lays, model=MODEL, preprocess=PRE)
    f = p / tdb.EMBEDDINGS
    arr = np.load(f)
    arr[7, 2] = np.float16("nan")  # a database written by a broken builder: hashes match, values do not
    np.save(f, arr)
    m = json.loads((p / tdb.MANIFEST).read_text())
    m["files"][tdb.EMBEDDINGS]["sha256"] = tdb._sha256(f)
    (p / tdb.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(DatabaseError, match=r"1 embeddings hold NaN or inf \(first at row 7\)"):
        TileDatabase.open(p)
    assert np.isnan(TileDatabase.open(p, verify=False).embeddings[7, 2])  # the fast restart trusts the files


def test_altitude_without_a_layer_is_no_fix_not_a_rescaled_match(tmp_path):
    from tests.test_tiles_db import MODEL, PRE, _make
    from tiles.db import ALTITUDE_TOLERANCE_FRAC, NoLayerError, TileDatabase, write_database

    emb, e, lays = _make()  # layers 150 and 300 m
    db = TileDatabase.open(write_database(tmp_path / "db", emb, e, layers=lays, model=MODEL, preprocess=PRE))
    tol = ALTITUDE_TOLERANCE_FRAC
    assert db.layer_for_altitude(170, tol) == 0 and db.layer_for_altitude(230, tol) == 1
    assert db.layer_for_altitude(1000) == 1  # without a tolerance: the nearest layer, as before
    with pytest.raises(NoLayerError, match=r"no fix: altitude 1000 m has no layer \(layers: 150, 300 m, each used "
                                           r"within \+-25 %\)"):
        db.layer_for_altitude(1000, tol)
    with pytest.raises(NoLayerError, match="no fix: altitude 10 m has no layer"):
        db.layer_for_altitude(10, tol)
    with pytest.raises(NoLayerError, match="not a number"):
        db.layer_for_altitude(float("nan"))  # NaN used to pick layer 0 silently
    one = write_database(tmp_path / "one", emb[:5], _one_layer(e[:5]), layers=lays[:1],
                         model=MODEL, preprocess=PRE)
    with pytest.raises(NoLayerError, match="altitude 300 m"):
        TileDatabase.open(one).layer_for_altitude(300, tol)


def _one_layer(entries):
    entries = entries.copy()
    entries["layer"] = 0
    return entries


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_artifacts_follow_the_umask(tmp_path, umask):
    from tests.test_tiles_db import MODEL, PRE, _make
    from tiles.db import write_database
    from tiles.io import atomic_write_json

    old = os.umask(umask)
    try:
        j = atomic_write_json(tmp_path / "a.json", {"x": 1})
        emb, e, lays = _make()
        d = write_database(tmp_path / "db", emb, e, layers=lays, model=MODEL, preprocess=PRE)
    finally:
        os.umask(old)
    assert j.stat().st_mode & 0o777 == 0o666 & ~umask
    assert d.stat().st_mode & 0o777 == 0o777 & ~umask
    assert {f.stat().st_mode & 0o777 for f in d.iterdir()} == {0o666 & ~umask}


def test_evaluate_checkpoint_without_training_config(tmp_path, capsys):
    from train.evaluate import main
    from train.model import GeoModel, save_checkpoint

    ckpt = save_checkpoint(tmp_path / "frozen.pt", GeoModel("test_efficientnet"),
                           config={"note": "frozen ImageNet features, no training"}, epoch=0, step=0)
    with pytest.raises(SystemExit) as e:
        main([str(ckpt)])
    assert e.value.code == 2
    err = _last_line(capsys.readouterr().err)
    assert "carries no training config (its config is ['note'])" in err and "--preset" in err
