"""`python -m export --tiles` calibrates the bundle for its model by default (issue 29.3): on
``--likelihood-tif`` when given, else on the ``--calib-tif`` images of other dates, else on the map itself,
recorded in the manifest (``likelihood.fitted_on.source``) and said by ``serve`` at start; ``--no-calibrate``
skips it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from export.__main__ import calibration_rasters, parse_args
from tools.toy_assets import tiny_assets, write_flight_video


def _choice(*argv: str):
    return calibration_rasters(parse_args(["--bundle", "b", *argv]))


def test_what_the_calibration_flies_over(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert _choice("--tiles", "map.tif") == (["map.tif"], "map")
    assert _choice("--tiles", "map.tif", "--calib-tif", "y2019.tif", "map.tif", "y2021.tif",
                   "--eval-tifs", "y2021.tif", "map.tif") == (["y2019.tif"], "calib-tif")
    assert _choice("--tiles", "map.tif", "--calib-tif", "map.tif") == (["map.tif"], "map")
    assert _choice("--tiles", "map.tif", "--likelihood-tif", "y2014.tif") == (["y2014.tif"], "likelihood-tif")
    assert _choice("--likelihood-tif", "y2014.tif") == (["y2014.tif"], "likelihood-tif")  # an existing database
    assert _choice("--tiles", "map.tif", "--no-calibrate") == ([], None)
    assert _choice("--gallery", "g") == ([], None)
    monkeypatch.setenv("WORLD_SIZE", "2")  # under torchrun rank 0 writes the database last: calibrate afterwards
    assert _choice("--tiles", "map.tif") == ([], None)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    a = tiny_assets()
    work = tmp_path_factory.mktemp("default-calibration")
    shutil.copytree(a["bundle_thumb"], work / "bundle")
    proc = subprocess.run([sys.executable, "-m", "export", "--bundle", str(work / "bundle"), "--tiles", str(a["raster"]),
                           "--altitudes-m", str(a["thumb_altitude_m"]), "--hfov-deg", "60", "--db-out", str(work / "db"),
                           "--no-progress"], capture_output=True, text=True, timeout=300)
    return a, work, proc


def test_export_with_tiles_calibrates_on_the_map_itself_and_says_so(exported):
    a, work, proc = exported
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "the map itself: optimistic" in proc.stderr
    lik = json.loads((work / "bundle" / "manifest.json").read_text())["likelihood"]
    assert lik["fitted_on"]["source"] == "map" and lik["fitted_on"]["rasters"] == [a["raster"].name]
    assert lik["fitted_on"]["database"] == "db" and lik["fitted_on"]["frames"] > 0 and "fix_accuracy" in lik


def test_serve_says_what_the_bundle_was_calibrated_on(exported, tmp_path):
    a, work, _ = exported
    video = tmp_path / "flight.avi"
    write_flight_video(video, a["raster"], n_frames=3, fps=1.0)
    proc = subprocess.run([sys.executable, "-m", "runtime", "serve", "--bundle", str(work / "bundle"), "--db",
                           str(work / "db"), "--source", str(video), "--max-frames", "2", "--altitude-m",
                           str(a["thumb_altitude_m"])], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"calibration: likelihood and reported accuracy fitted on {a['raster'].name} (the map itself" in proc.stderr
    assert "UNCALIBRATED" not in proc.stderr and "no calibrated likelihood" not in proc.stderr
