"""A tiny synthetic tile database on a regular grid, and frames' embeddings near a position (map filter tests)."""

from __future__ import annotations

import numpy as np

from tiles.db import empty_entries, write_database


def grid_database(path, ncols: int = 30, nrows: int = 20, stride_m: float = 50.0, dim: int = 64, seed: int = 0,
                  x0: float = 500000.0, y0: float = 5200000.0):
    """One layer of ``nrows x ncols`` tiles every ``stride_m`` (footprint 2 strides), random unit embeddings."""
    rng = np.random.default_rng(seed)
    n = ncols * nrows
    emb = rng.normal(size=(n, dim)).astype(np.float32)
    e = empty_entries(n)
    r, c = np.divmod(np.arange(n), ncols)
    e["x"], e["y"] = x0 + c * stride_m, y0 - r * stride_m
    e["has_geo"], e["layer"], e["footprint_m"], e["altitude_m"] = True, 0, 2 * stride_m, 100.0
    e["label"] = [f"r{a:04d}_c{b:04d}" for a, b in zip(r, c)]
    layer = {"name": "100m", "altitude_m": 100.0, "hfov_deg": 60.0, "footprint_m": 2 * stride_m, "stride_m": stride_m}
    return write_database(path, emb, e, layers=[layer], model={"fingerprint": "synthetic"}, preprocess={},
                          crs="EPSG:32614")


def frame_embedding(db, x: float, y: float, noise: float, rng) -> np.ndarray:
    """A frame's embedding at (x, y): the nearest tile's embedding plus Gaussian noise, unit length."""
    ent = db.entries
    i = int(np.argmin((ent["x"] - x) ** 2 + (ent["y"] - y) ** 2))
    q = np.asarray(db.embeddings[i], np.float32) + noise * rng.normal(size=db.embedding_dim).astype(np.float32) / np.sqrt(db.embedding_dim)
    return q / np.linalg.norm(q)


def track_step(track, searcher, t: float, q, layer: int = 0, motion=None, compass: bool = True):
    """One frame of a MapTrack as the Localizer runs it (no image: no texture check, no registration)."""
    track.predict(t, layer, motion)
    rows = track.rows_to_score()
    track.update(rows, searcher.score_layer(q, layer) if rows is None else searcher.score_rows(q, rows))
    return track.fix(t, None, compass)[0]
