"""`python -m tiles` on a real NAIP file, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np


def _run(*args, cwd):
    return subprocess.run([sys.executable, "-m", "tiles", *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def test_describe_and_preview_real_naip(naip_paths, tmp_path):
    from tests.conftest import REPO

    out = _run("describe", naip_paths[2018], "--json", cwd=REPO)
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["crs"] == "EPSG:26914" and d["valid_fraction"] == 1.0

    png = tmp_path / "grid.png"
    out = _run("preview", naip_paths[2018], "--altitude", 300, "--hfov", 70, "--out", png, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "336 tiles (21x16 grid" in out.stdout  # floor((4670-420)/210)+1 = 21, floor((3620-420)/210)+1 = 16
    import cv2

    img = cv2.imread(str(png))
    assert img.shape[:2] == (724, 934) and np.count_nonzero(img) > 0


def test_view_and_errors(naip_paths, tmp_path):
    from tests.conftest import REPO

    png = tmp_path / "v.png"
    out = _run("view", naip_paths[2016], "--lat", 47.02, "--lon", -99.15, "--altitude", 200, "--size", 64,
               "--out", png, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "100% on the map" in out.stdout
    assert png.stat().st_size > 1000
    out = _run("preview", naip_paths[2018], "--altitude", 4000, "--hfov", 70, cwd=REPO)
    assert out.returncode == 2 and "does not fit" in out.stderr and "fly lower" in out.stderr
    out = _run("describe", tmp_path / "missing.tif", cwd=REPO)
    assert out.returncode == 2 and "no such file" in out.stderr
