"""tools.make_sues200 writes the real SUES-200 layouts from the bundled NAIP rasters."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest

from common.sues200_layout import SUES200, TEST_IDS, TRAIN_IDS
from tools.make_sues200 import main, make_sues200, pick_ids

ALTS = (150, 300)


@pytest.fixture(scope="module")
def generated(tmp_path_factory, naip_paths):
    out = tmp_path_factory.mktemp("sues_gen")
    base = make_sues200(out, naip_paths[2018], [naip_paths[2016], naip_paths[2020]], n_locations=5,
                        altitudes=ALTS, frames=6, size_px=48, satellite_size_px=40, split=True, seed=3)
    return out, base


def test_pick_ids_follow_the_official_split():
    ids = pick_ids(10)
    assert len(ids) == 10 and len(set(ids)) == 10
    assert sum(i in TEST_IDS for i in ids) == 4 and sum(i in TRAIN_IDS for i in ids) == 6
    assert len(pick_ids(200)) == 200
    with pytest.raises(ValueError, match="1..200"):
        pick_ids(0)


def test_raw_layout_read_back(generated):
    out, base = generated
    ds = SUES200(out)
    assert ds.layout == "raw" and ds.root == base
    assert ds.altitudes == ALTS
    assert len(ds.locations()) == 5
    sp = ds.split(150)
    assert len(sp["test"]) == 2 and len(sp["train"]) == 3
    frames = ds.drone_frames(sp["test"][0], 300)
    assert len(frames) == 6 and frames[0].suffix == ".jpg"
    img = cv2.imread(str(frames[0]))
    assert img.shape == (48, 48, 3) and img.std() > 2  # real imagery, not a flat fill
    sat = cv2.imread(str(ds.satellite_image(sp["test"][0])))
    assert sat.shape == (40, 40, 3)


def test_split_layout_matches_raw(generated):
    out, _ = generated
    raw, split = SUES200(out), SUES200(out / "split")
    assert split.layout == "split"
    for alt in ALTS:
        assert split.split(alt) == raw.split(alt)
        assert split.gallery_ids(alt) == raw.locations(alt)
    loc = raw.split(150)["test"][1]
    a = [p.read_bytes() for p in raw.drone_frames(loc, 150)]
    b = [p.read_bytes() for p in split.drone_frames(loc, 150)]
    assert a == b


def test_ground_truth_and_satellite_pixels(generated, naip_paths):
    from tiles.raster import open_raster

    out, base = generated
    truth = json.loads((base / "ground_truth.json").read_text())
    assert truth["crs"].endswith("26914") or "26914" in truth["crs"]
    ref = open_raster(naip_paths[2018])
    xmin, ymin, xmax, ymax = ref.bounds_m
    locs = truth["locations"]
    assert len(locs) == 5
    centres = np.array([[v["x"], v["y"]] for v in locs.values()])
    side = truth["settings"]["satellite_side_m"]
    for (loc, v), c in zip(locs.items(), centres):
        assert xmin + side / 2 <= c[0] <= xmax - side / 2 and ymin + side / 2 <= c[1] <= ymax - side / 2
        lat, lon = ref.to_wgs84(c[0], c[1])
        assert (v["lat"], v["lon"]) == pytest.approx((lat, lon))
        assert 46 < v["lat"] < 48 and -100 < v["lon"] < -98  # North Dakota
        assert v["split"] == ("test" if loc in TEST_IDS else "train")
        # the flight passes over the location: the middle frame is at the centre
        for alt in ALTS:
            fr = np.array(v["flights"][str(alt)]["frames"])
            assert fr.shape == (6, 4)
            assert math.dist(fr[3, :2], c) < 1.0
            assert np.all(fr[:, 3] <= 15.0)
    d = np.linalg.norm(centres[:, None] - centres[None], axis=2) + np.eye(len(centres)) * 1e9
    assert d.min() >= truth["settings"]["min_spacing_m"] - 1e-6
    # the satellite image (lossless PNG) is exactly the reference map at the location
    loc, v = next(iter(locs.items()))
    expected, _ = ref.read_ground_square(v["x"], v["y"], side, 40)
    got = cv2.imread(str(base / "satellite-view" / loc / "0.png"))[:, :, ::-1]
    assert np.array_equal(got, expected)
    ref.close()


def test_resume_keeps_files_and_refuses_other_settings(tmp_path, naip_paths):
    args = dict(n_locations=2, altitudes=(200,), frames=2, size_px=32, seed=1)
    base = make_sues200(tmp_path, naip_paths[2018], [naip_paths[2016]], **args)
    victim = base / "drone_view_512" / "0001" / "200" / "1.jpg"
    keep = base / "drone_view_512" / "0001" / "200" / "0.jpg"
    before = keep.stat().st_mtime_ns
    victim.unlink()  # as if the first run was interrupted
    make_sues200(tmp_path, naip_paths[2018], [naip_paths[2016]], **args)
    assert victim.is_file() and keep.stat().st_mtime_ns == before
    with pytest.raises(FileExistsError, match="other settings.*--overwrite"):
        make_sues200(tmp_path, naip_paths[2018], [naip_paths[2016]], **{**args, "frames": 3})


def test_cli_reports_a_map_too_small(tmp_path, naip_paths, capsys):
    rc = main(["--reference", str(naip_paths[2018]), "--drone", str(naip_paths[2016]), "--out", str(tmp_path),
               "--locations", "2", "--altitudes", "3000", "--frames", "1", "--size", "16"])
    assert rc == 2
