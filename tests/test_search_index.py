"""The spatial grid of a tile database, local scoring, and approximate global search against exact search."""

from __future__ import annotations

import json

import numpy as np
import pytest

from runtime.search.searcher import Searcher
from tiles.db import TileDatabase, empty_entries, write_database
from tiles.spatial import SpatialIndex, build_spatial_index


def _db(path, n=4000, d=32, seed=0, layers=2, indexes=()):
    rng = np.random.default_rng(seed)
    e = empty_entries(n)
    e["layer"] = rng.integers(0, layers, n)
    e["has_geo"] = rng.random(n) > 0.05  # a few entries without geometry
    e["x"] = rng.uniform(400_000, 430_000, n)
    e["y"] = rng.uniform(5_000_000, 5_020_000, n)
    e["footprint_m"] = 300.0
    lays = [{"name": f"L{i}", "footprint_m": 150.0 * (i + 1)} for i in range(layers)]
    p = write_database(path, rng.normal(size=(n, d)), e, layers=lays, model={"fingerprint": "f"}, preprocess={},
                       indexes=indexes)
    return TileDatabase.open(p)


def _scan(db, layer, c, r):
    e, sl = db.entries, db.layer_slice(layer)
    rows = np.arange(sl.start, sl.stop)
    d = np.hypot(e["x"][rows] - c[0], e["y"][rows] - c[1])
    return rows[e["has_geo"][rows] & (d <= r)]


def test_grid_returns_exactly_the_rows_within_the_radius(tmp_path):
    db = _db(tmp_path / "db")
    assert set(db.manifest["spatial_index"]["files"]) <= set(db.manifest["files"])  # hashed like the arrays
    s = Searcher(db)
    rng = np.random.default_rng(3)
    for layer in (0, 1, "L1"):
        for _ in range(30):
            c = (rng.uniform(395_000, 435_000), rng.uniform(4_995_000, 5_025_000))
            r = float(rng.choice([10.0, 450.0, 2000.0, 50_000.0]))
            got = s.rows_within(c, r, layer)
            want = _scan(db, layer, c, r)
            np.testing.assert_array_equal(got, want)
    assert len(s.rows_within((415_000, 5_010_000), 40_000, None)) == int(db.entries["has_geo"].sum())
    with pytest.raises(ValueError, match="radius_m must be > 0"):
        s.rows_within((0, 0), 0.0, 0)
    with pytest.raises(ValueError, match="finite"):
        s.rows_within((np.nan, 0), 10.0, 0)


def test_grid_touches_only_nearby_cells():
    # 1M-row layer geometry in memory: a query reads a few cell rows, whatever the layer's size
    n = 1_000_000
    e = empty_entries(n)
    side = 1000
    e["layer"], e["has_geo"] = 0, True
    e["x"], e["y"] = (np.arange(n) % side) * 87.0, (np.arange(n) // side) * 87.0
    arrays, rec = build_spatial_index(e, [{"name": "a", "start": 0, "stop": n, "footprint_m": 173.0}])
    idx = SpatialIndex(arrays["grid_rows.npy"], arrays["grid_xy.npy"], arrays["grid_start.npy"], rec["layers"])
    rows = idx.within(0, (43_500.0, 43_500.0), 520.0)
    assert 100 < len(rows) < 200  # pi * (520/87)^2 ~ 112
    d = np.hypot(e["x"][rows] - 43_500.0, e["y"][rows] - 43_500.0)
    assert d.max() <= 520.0
    assert rec["layers"][0]["ncols"] * rec["layers"][0]["nrows"] <= 8 * n + 1024


def test_search_with_radius_unchanged_and_score_rows(tmp_path):
    db = _db(tmp_path / "db", n=3000, d=16)
    s = Searcher(db, chunk_rows=97, float32_cache_mb=0)
    rng = np.random.default_rng(4)
    q = rng.normal(size=(3, 16)).astype(np.float32)
    c, r = (415_000.0, 5_010_000.0), 3000.0
    m = s.search(q, k=4, layer=1, centre_xy=c, radius_m=r)
    rows = _scan(db, 1, c, r)
    sims = q @ np.asarray(db.embeddings[rows], np.float32).T
    want = rows[np.argsort(-sims, axis=1)[:, :4]]
    np.testing.assert_array_equal(m.indices, want)
    np.testing.assert_allclose(s.score_rows(q, rows), sims, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s.score_rows(q[0], rows), sims[0], rtol=1e-5, atol=1e-6)
    xy = s.centres(rows)
    assert np.all(np.hypot(xy[:, 0] - c[0], xy[:, 1] - c[1]) <= r) and xy.shape == (len(rows), 2)
    with pytest.raises(ValueError, match="rows must be in"):
        s.score_rows(q[0], [len(db)])


def test_old_database_without_grid_still_searches(tmp_path):
    db = _db(tmp_path / "db", n=500, d=8)
    manifest = json.loads((db.path / "manifest.json").read_text())
    del manifest["spatial_index"]
    (db.path / "manifest.json").write_text(json.dumps(manifest))
    old = TileDatabase.open(db.path)
    assert old.spatial_index is None
    c, r = (415_000.0, 5_010_000.0), 5000.0
    np.testing.assert_array_equal(Searcher(old).rows_within(c, r, 0), Searcher(db).rows_within(c, r, 0))


def test_approximate_global_search_against_exact(tmp_path):
    pytest.importorskip("faiss")
    from export.ann_build import ivfpq_builder
    from tools.bench_search import synthetic_database

    path = tmp_path / "syn"
    synthetic_database(path, 6000, dim=64, ann_min_rows=1000)
    db = TileDatabase.open(path)
    rec = db.manifest["ann"]
    assert rec["kind"] == "faiss-ivfpq" and rec["layers"][0]["file"] in db.manifest["files"]
    s = Searcher(db)
    rng = np.random.default_rng(5)
    truth = rng.choice(len(db), 100, replace=False)
    q = np.asarray(db.embeddings[np.sort(truth)], np.float32)
    q += 0.05 * rng.standard_normal(q.shape).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    exact = s.search(q, k=5, layer=0)
    approx = s.search_global(q, k=5, layer=0)
    recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(approx.indices, exact.indices)])
    assert recall >= 0.9, recall
    # scores are exact cosines of the rows returned
    want = np.take_along_axis(q @ np.asarray(db.embeddings, np.float32).T, approx.indices, 1)
    np.testing.assert_allclose(approx.scores, want, rtol=1e-5, atol=1e-6)
    assert np.array_equal(s.search_global(q, k=5, layer=0, exact=True).indices, exact.indices)
    # a layer below min_rows has no index: search_global is the exact search
    small = _db(tmp_path / "small", n=300, d=8, layers=1, indexes=(ivfpq_builder(min_rows=1000),))
    assert small.manifest["ann"]["layers"] == [None]
    q2 = rng.normal(size=(2, 8)).astype(np.float32)
    np.testing.assert_array_equal(Searcher(small).search_global(q2, 3, 0).indices,
                                  Searcher(small).search(q2, 3, 0).indices)


def test_describe_db_states_the_footprint(tmp_path, capsys):
    from tiles.__main__ import main

    db = _db(tmp_path / "db", n=2000, d=16)
    assert main(["describe-db", str(db.path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rows"] == 2000 and out["bytes_per_row"] == 32
    assert out["disk_bytes"] == sum(p.stat().st_size for p in db.path.iterdir() if p.name != "manifest.json")
    grid = sum((db.path / n).stat().st_size for n in db.manifest["spatial_index"]["files"])
    assert out["resident_bytes"]["local"] == grid
    assert out["resident_bytes"]["exact"] == grid + (db.path / "embeddings.npy").stat().st_size
    from runtime.__main__ import main as runtime_main

    assert runtime_main(["check", "--db", str(db.path), "--json"]) == 0
    checked = json.loads(capsys.readouterr().out)
    assert checked["verified"] and checked["rows"] == 2000
    assert checked["measured"]["global_search"] == "exact" and checked["measured"]["rss_mb_after_global"] > 0
    assert main(["describe-db", str(db.path)]) == 0
    assert "spatial grid   yes" in capsys.readouterr().out
    assert main(["describe-db", str(tmp_path / "nope")]) == 2
    assert "no tile database" in capsys.readouterr().err
