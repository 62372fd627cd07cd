"""Pieces of the calibration and evaluation flights that need no model: the half database, the no-place frames."""

from __future__ import annotations

import numpy as np

from export.calibration_flights import half_database
from runtime.engines.preprocess import north_up
from runtime.localisation.map_filter import MapFilter, MapFilterConfig
from runtime.localisation.odometry import VisualOdometry, frame_texture
from runtime.replay.flights import frames_of_nothing
from tests.mapdb import grid_database
from tiles.db import TileDatabase


def test_west_half_database_keeps_the_western_tiles(tmp_path):
    db = TileDatabase.open(grid_database(tmp_path / "db", ncols=10, nrows=4))
    west = TileDatabase.open(half_database(db, tmp_path / "west", "west"))
    x = np.asarray(db.entries["x"])
    keep = x < (x.min() + x.max()) / 2
    assert len(west.entries) == int(keep.sum()) == 20
    assert np.array_equal(np.asarray(west.embeddings), np.asarray(db.embeddings)[keep])
    assert west.model_fingerprint == db.model_fingerprint and "western half" in west.manifest["extra"]["note"]
    assert MapFilter(west, 0).grid.shape == (4, 5)
    east = TileDatabase.open(half_database(db, tmp_path / "east", "east"))
    assert len(east.entries) == 20 and np.asarray(east.entries["x"]).min() > np.asarray(west.entries["x"]).max()
    assert half_database(db, tmp_path / "west", "west") == tmp_path / "west"  # reused, not rebuilt


def test_nothing_frames_have_no_motion_and_uniform_ones_no_texture():
    frames = list(frames_of_nothing(6, 200.0, seed=1))
    assert len(frames) == 6 and all(f.meta["altitude_m"] == 200.0 for f in frames)
    vo = VisualOdometry()
    assert not any(vo.update(f.image, f.t, 200.0, 60.0).ok for f in frames)
    tex = [frame_texture(north_up(f.image, f.meta["heading_deg"])) for f in frames]  # as the service sees them
    assert min(tex[:3]) > 10 and max(tex[3:]) < MapFilterConfig().min_texture / 2
