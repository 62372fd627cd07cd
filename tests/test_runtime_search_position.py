"""Exact search against brute force; single-frame estimates and the multi-frame filter."""

from __future__ import annotations

import math

import numpy as np
import pytest

from runtime.localisation.fix import estimate_fix
from runtime.search.searcher import Searcher
from tiles.db import TileDatabase, empty_entries, write_database
from tools.toy_assets import tiny_assets


@pytest.fixture(scope="module")
def rand_db(tmp_path_factory):
    rng = np.random.default_rng(0)
    n, d = 3000, 64
    emb = rng.normal(size=(n, d)).astype(np.float32)
    e = empty_entries(n)
    e["layer"] = np.arange(n) % 2
    e["has_geo"] = True
    e["x"] = rng.uniform(0, 10000, n)
    e["y"] = rng.uniform(0, 10000, n)
    e["footprint_m"] = 200.0
    path = write_database(tmp_path_factory.mktemp("db") / "rand", emb, e, layers=[{"name": "a"}, {"name": "b"}],
                          model={"fingerprint": "x"}, preprocess={})
    return TileDatabase.open(path)


def _brute(db, q, rows, k):
    sims = q @ np.asarray(db.embeddings[rows], np.float32).T
    order = np.argsort(-sims, axis=1)[:, :k]
    return rows[order], np.take_along_axis(sims, order, axis=1)


@pytest.mark.parametrize("chunk_rows,cache_mb", [(65536, 256.0), (257, 0.0), (5000, 0.0)])
def test_search_is_exact(rand_db, chunk_rows, cache_mb):
    rng = np.random.default_rng(1)
    q = rng.normal(size=(7, 64)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    s = Searcher(rand_db, chunk_rows=chunk_rows, float32_cache_mb=cache_mb)
    sl = rand_db.layer_slice("b")
    m = s.search(q, k=6, layer="b")
    want_i, want_s = _brute(rand_db, q, np.arange(sl.start, sl.stop), 6)
    np.testing.assert_array_equal(m.indices, want_i)
    np.testing.assert_allclose(m.scores, want_s, rtol=1e-5, atol=1e-6)
    assert np.all(rand_db.entries["layer"][m.indices] == 1)


def test_search_radius_and_padding(rand_db):
    rng = np.random.default_rng(2)
    q = rng.normal(size=(3, 64)).astype(np.float32)
    s = Searcher(rand_db, chunk_rows=100, float32_cache_mb=0)
    centre, radius = (5000.0, 5000.0), 600.0
    m = s.search(q, k=5, layer=0, centre_xy=centre, radius_m=radius)
    ent = rand_db.entries
    inside = np.flatnonzero((ent["layer"] == 0) & (np.hypot(ent["x"] - 5000, ent["y"] - 5000) <= radius))
    want_i, _ = _brute(rand_db, q, inside, 5)
    np.testing.assert_array_equal(m.indices, want_i)
    # a radius holding fewer tiles than k pads with -1 / -inf
    m = s.search(q, k=5, layer=0, centre_xy=(ent["x"][0], ent["y"][0]), radius_m=1.0)
    assert m.indices[0, 0] == 0 and np.all(m.indices[:, 1:] == -1) and np.all(np.isinf(m.scores[:, 1:]))
    with pytest.raises(ValueError, match=r"queries must be \(N, 64\)"):
        s.search(np.zeros((1, 32), np.float32))


def test_estimate_fix_on_real_tiles_finds_the_tile_of_an_exact_crop():
    from runtime.engines.engine import load_engine
    from tools.toy_assets import read_rgb

    a = tiny_assets()
    db = TileDatabase.open(a["db"])
    eng = load_engine(a["bundle"])
    rgb, _, _ = read_rgb(a["raster"])
    row = 300  # a tile of layer 0; its own pixels must come back as the top match
    e = db.entries[row]
    crop = rgb[e["row_off"]:e["row_off"] + e["height"], e["col_off"]:e["col_off"] + e["width"]]
    m = Searcher(db).search(eng.embed([crop]), k=5, layer=0)
    assert m.indices[0, 0] == row and m.scores[0, 0] > 0.999
    fix = estimate_fix(db, m.indices[0], m.scores[0], t=1.0)
    assert fix.label == e["label"] and not fix.trusted
    assert math.hypot(fix.x - e["x"], fix.y - e["y"]) <= e["footprint_m"]
    assert 0 <= fix.confidence <= 1 and fix.accuracy_m >= 0.25 * e["footprint_m"]


def _fake_db(xy, footprint=100.0):
    class DB:
        pass

    d = DB()
    e = empty_entries(len(xy))
    e["has_geo"] = True
    e["x"], e["y"] = np.asarray(xy, float).T
    e["lat"], e["lon"] = 47.0 + e["y"] * 1e-5, -99.0 + e["x"] * 1e-5
    e["footprint_m"] = footprint
    e["label"] = [f"t{i}" for i in range(len(xy))]
    d.entries = e
    return d


def test_confidence_follows_the_margin_to_a_distant_match():
    db = _fake_db([(0, 0), (50, 0), (5000, 0), (9000, 0)])
    clear = estimate_fix(db, [0, 1, 2, 3], [0.9, 0.88, 0.6, 0.5], t=0)
    ambiguous = estimate_fix(db, [0, 1, 2, 3], [0.9, 0.88, 0.89, 0.5], t=0)
    assert clear.confidence > 0.9 and ambiguous.confidence < 0.2
    assert ambiguous.accuracy_m > clear.accuracy_m
    assert 0 < clear.x < 50 and clear.source_rows == [0, 1]  # weighted inside the consistent cluster only
