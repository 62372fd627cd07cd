"""Map imagery: written by the export, read back window by window without rasterio, recorded in the tile
database's manifest; a database without it still opens."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from export.map_imagery import attach_imagery, imagery_gsd_m, write_map_imagery
from runtime.localisation.registration import Registrar
from tiles.db import TileDatabase, empty_entries, write_database
from tiles.map_imagery import ImageryError, MapImagery, open_database_imagery

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def naip2018(naip_paths):
    from tiles.raster import open_raster

    return open_raster(naip_paths[2018])


@pytest.mark.parametrize("kind", ["array", "blocks"])
def test_written_imagery_reads_back_the_raster(naip2018, tmp_path, kind):
    out = write_map_imagery([naip2018], tmp_path / "imagery", gsd_m=naip2018.gsd_m, kind=kind, block_px=128)
    im = MapImagery.open(out)
    assert im.kind == kind and (im.width, im.height) == (naip2018.width, naip2018.height)
    ref, valid = naip2018.read_pixels(100, 200, 300, 250)
    rgb, val = im.read_pixels(100, 200, 300, 250)
    diff = np.abs(rgb.astype(int) - ref.astype(int))
    if kind == "array":
        assert diff.max() == 0 and np.array_equal(val, valid)
    else:  # JPEG blocks
        assert diff.mean() < 4 and val.all()
    # a window half off the map: the missing half is invalid, not an error
    xmin, ymin, xmax, ymax = im.bounds_m
    w = im.window(xmin, (ymin + ymax) / 2, 400.0)
    assert 0.4 < w.valid.mean() < 0.6 and w.rgb[:, : w.rgb.shape[1] // 2 - 2].max() == 0


def test_window_grid_and_resampling(naip2018, tmp_path):
    im = MapImagery.open(write_map_imagery([naip2018], tmp_path / "im", gsd_m=5.0))
    x, y = 488123.0, 5207456.0
    w = im.window(x, y, 300.0)
    col, row = w.to_pixel(x, y)
    assert abs(col - w.rgb.shape[1] / 2) <= 1 and abs(row - w.rgb.shape[0] / 2) <= 1
    c, r = naip2018.metric_to_pixel(*w.to_metric(0, 0))  # the window's corner is a native pixel corner
    assert c == pytest.approx(round(c)) and r == pytest.approx(round(r))
    coarse, fine = im.window(x, y, 300.0, gsd_m=10.0), im.window(x, y, 300.0, gsd_m=1.25)
    assert coarse.rgb.shape[0] == w.rgb.shape[0] // 2 and fine.rgb.shape[0] == w.rgb.shape[0] * 4
    assert abs(coarse.rgb.mean() - w.rgb.mean()) < 3 and abs(fine.rgb.mean() - w.rgb.mean()) < 3
    with pytest.raises(ValueError, match="side_m"):
        im.window(x, y, 0.0)


def test_imagery_resolution_follows_the_frame_not_a_finer_map():
    assert imagery_gsd_m(5.0, 150, 60, 512) == 5.0  # NAIP: already coarser than any frame
    g = imagery_gsd_m(0.05, 150, 60, 512)  # a 5 cm map is stored at the frame's 0.34 m
    assert g == pytest.approx(2 * 150 * np.tan(np.radians(30)) / 512)


def _database(path):
    emb = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    entries = empty_entries(3)
    entries["layer"] = 0
    return write_database(path, emb, entries, layers=[{"name": "300m", "altitude_m": 300.0}],
                          model={"fingerprint": "f" * 16}, preprocess={}, crs="EPSG:26914")


def test_database_records_imagery_and_one_without_still_opens(naip2018, tmp_path):
    db_path = _database(tmp_path / "db")
    assert open_database_imagery(TileDatabase.open(db_path)) is None  # retrieval only
    assert Registrar.from_database(TileDatabase.open(db_path)) is None
    attach_imagery(db_path, [naip2018], gsd_m=10.0)
    db = TileDatabase.open(db_path, verify_hashes=True)
    assert db.manifest["imagery"]["gsd_m"] == 10.0 and db.manifest["imagery"]["kind"] == "array"
    im = open_database_imagery(db)
    assert im.gsd_m == 10.0 and im.crs == "EPSG:26914"
    assert Registrar.from_database(db).imagery.gsd_m == 10.0
    (db_path / "imagery" / "rgb.npy").write_bytes(b"x")  # truncated: refused with the fix
    with pytest.raises(ImageryError, match="truncated.*rebuild"):
        open_database_imagery(db_path)


def test_reader_runs_with_rasterio_blocked(naip2018, tmp_path):
    for kind in ("array", "blocks"):
        write_map_imagery([naip2018], tmp_path / kind, gsd_m=5.0, kind=kind)
    code = textwrap.dedent(f"""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("rasterio", "torch"):
                    raise ImportError(name + " is blocked")
        sys.meta_path.insert(0, Block())
        from tiles.map_imagery import MapImagery
        import json
        out = {{}}
        for kind in ("array", "blocks"):
            w = MapImagery.open({str(tmp_path)!r} + "/" + kind).window(488000.0, 5207000.0, 500.0)
            out[kind] = [float(w.rgb.mean()), float(w.valid.mean())]
        assert "rasterio" not in sys.modules
        print(json.dumps(out))
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["array"][1] == 1.0 and abs(out["array"][0] - out["blocks"][0]) < 2


def test_cli_adds_imagery_to_an_existing_database(naip_paths, tmp_path):
    db_path = _database(tmp_path / "db")  # one 300 m layer; hfov from the layer
    manifest = json.loads((db_path / "manifest.json").read_text())
    manifest["layers"][0]["hfov_deg"] = 60.0
    (db_path / "manifest.json").write_text(json.dumps(manifest))
    proc = subprocess.run([sys.executable, "-m", "export.map_imagery", str(db_path), str(naip_paths[2018])],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert open_database_imagery(db_path).gsd_m == 5.0  # the map's own: coarser than a 300 m frame needs
    bad = subprocess.run([sys.executable, "-m", "export.map_imagery", str(tmp_path / "nothing"),
                          str(naip_paths[2018])], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "not a tile database" in bad.stderr
