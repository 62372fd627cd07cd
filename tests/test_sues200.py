"""common.sues200_layout on small generated trees in both real layouts."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from common.sues200_layout import (
    ALL_IDS,
    ALTITUDES,
    SUES200,
    TEST_IDS,
    TRAIN_IDS,
    SUES200LayoutError,
    normalize_id,
)

LOCS = ["0001", "0002", "0008", "0012"]  # 0001, 0002 train; 0008, 0012 test (official split)
ALTS = (150, 300)
N_FRAMES = 12  # > 10 so numeric ordering (2 before 10) is tested


def _img(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((8, 8, 3), value, np.uint8))


def make_raw(root):
    base = root / "SUES-200-512x512"
    for li, loc in enumerate(LOCS):
        for alt in ALTS:
            for i in range(N_FRAMES):
                _img(base / "drone_view_512" / loc / str(alt) / f"{i}.jpg", li * 10 + i)
        _img(base / "satellite-view" / loc / "0.png", 200 + li)
    return base


def make_split(root):
    train = [c for c in LOCS if c in TRAIN_IDS]
    test = [c for c in LOCS if c not in TRAIN_IDS]
    for alt in ALTS:
        for loc in train:
            for i in range(N_FRAMES):
                _img(root / "Training" / str(alt) / "drone" / loc / f"{i}.jpg", i)
            _img(root / "Training" / str(alt) / "satellite" / loc / "0.png", 1)
        for loc in test:
            for i in range(N_FRAMES):
                _img(root / "Testing" / str(alt) / "query_drone" / loc / f"{i}.jpg", i)
            _img(root / "Testing" / str(alt) / "query_satellite" / loc / "0.png", 1)
        for loc in LOCS:
            for i in range(N_FRAMES):
                _img(root / "Testing" / str(alt) / "gallery_drone" / loc / f"{i}.jpg", i)
            _img(root / "Testing" / str(alt) / "gallery_satellite" / loc / "0.png", 1)
    return root


def test_official_ids():
    assert len(TRAIN_IDS) == 120 and len(TEST_IDS) == 80
    assert set(TRAIN_IDS) | set(TEST_IDS) == set(ALL_IDS)
    assert "0008" in TEST_IDS and "0001" in TRAIN_IDS and "0200" in TRAIN_IDS and "0195" in TEST_IDS
    assert ALTITUDES == (150, 200, 250, 300)
    assert normalize_id(7) == "0007" and normalize_id("0012") == "0012"
    with pytest.raises(ValueError, match="'abc'"):
        normalize_id("abc")


@pytest.mark.parametrize("layout", ["raw", "split"])
def test_layout_detected_and_read(tmp_path, layout):
    if layout == "raw":
        make_raw(tmp_path)
        ds = SUES200(tmp_path)  # the parent of SUES-200-512x512 works
        assert ds.root.name == "SUES-200-512x512"
        assert SUES200(tmp_path / "SUES-200-512x512").layout == "raw"
    else:
        make_split(tmp_path)
        ds = SUES200(tmp_path)
    assert ds.layout == layout
    assert ds.altitudes == ALTS
    assert ds.locations() == LOCS
    frames = ds.drone_frames("8", 150)
    assert [p.stem for p in frames] == [str(i) for i in range(N_FRAMES)]
    assert ds.satellite_image("0012").name == "0.png"
    assert ds.split(150) == {"train": ["0001", "0002"], "test": ["0008", "0012"]}


@pytest.mark.parametrize("layout", ["raw", "split"])
def test_protocols(tmp_path, layout):
    ds = SUES200(make_raw(tmp_path) if layout == "raw" else make_split(tmp_path))
    off = ds.retrieval_set(300, "official", "drone2sat")
    assert off.query_labels == ["0008"] * N_FRAMES + ["0012"] * N_FRAMES
    assert off.gallery_labels == LOCS  # training locations are distractors
    qo = ds.retrieval_set(300, "query_only", "drone2sat")
    assert qo.gallery_labels == ["0008", "0012"] and len(qo.query_paths) == 2 * N_FRAMES
    s2d = ds.retrieval_set(150, "official", "sat2drone")
    assert s2d.query_labels == ["0008", "0012"]
    assert len(s2d.gallery_paths) == len(LOCS) * N_FRAMES
    assert s2d.gallery_labels.count("0008") == N_FRAMES
    assert "sat2drone@150m[official]" == s2d.name
    pairs = ds.train_pairs(150)
    assert len(pairs) == 2 * N_FRAMES and {p[2] for p in pairs} == {"0001", "0002"}
    assert all(p[3] == 150 and p[0].is_file() and p[1].is_file() for p in pairs)


def test_missing_root_names_the_root_and_layouts(tmp_path):
    with pytest.raises(SUES200LayoutError, match=r"no SUES-200 dataset at .*nothere.*does not exist.*drone_view_512"):
        SUES200(tmp_path / "nothere")
    (tmp_path / "junk").mkdir()
    with pytest.raises(SUES200LayoutError, match="holds junk.*Training/<altitude>"):
        SUES200(tmp_path)


def test_missing_parts_are_named(tmp_path):
    make_raw(tmp_path)
    ds = SUES200(tmp_path)
    with pytest.raises(SUES200LayoutError, match="altitude 200 is not in"):
        ds.drone_frames("0001", 200)
    with pytest.raises(SUES200LayoutError, match="no drone frames for location 0099 at 150 m"):
        ds.drone_frames("0099", 150)
    with pytest.raises(SUES200LayoutError, match="no satellite image for location 0099"):
        ds.satellite_image("0099")
    with pytest.raises(ValueError, match="protocol 'easy'"):
        ds.retrieval_set(150, "easy")


def test_no_altitudes_is_an_error(tmp_path):
    (tmp_path / "drone_view_512" / "0001").mkdir(parents=True)
    (tmp_path / "satellite-view").mkdir()
    with pytest.raises(SUES200LayoutError, match="no altitude folder"):
        SUES200(tmp_path)
