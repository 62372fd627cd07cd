"""Retrieval without a heading: the frame embedded at several rotations, the best one kept.

Tiles are north-up and the model learnt north-up frames (with a few degrees of compass error). A frame
whose heading is unknown is turned by ``n`` headings evenly spread (:func:`runtime.preprocess.north_up`),
embedded in one batch, and each rotation scored against the layer; the rotation whose best tile scores
highest wins. Its embedding is the frame's descriptor (one descriptor per frame, as the calibrated
likelihood expects) and its angle a coarse heading hypothesis (the heading the image top faces), within
half a step when the winner is the right tile.
"""

from __future__ import annotations

import numpy as np

from .preprocess import north_up


def rotation_angles(n: int) -> np.ndarray:
    if n < 1:
        raise ValueError(f"heading_search_angles={n}: must be >= 1 (0 turns the search off)")
    return np.arange(n) * (360.0 / n)


def best_rotation(engine, searcher, image: np.ndarray, layer: int | None, n: int) -> tuple[np.ndarray, float, float]:
    """(embedding (1, D) of the best rotation, its heading hypothesis in degrees, its best tile score).
    Without a layer (no altitude) the first rotation is returned (nothing to score against)."""
    angles = rotation_angles(n)
    embs = engine.embed_prepared(engine.prepare([north_up(image, float(a)) for a in angles]))
    if layer is None:
        return embs[:1], float("nan"), float("nan")
    best = np.array([float(np.max(searcher.score_layer(e, layer))) for e in embs])
    i = int(np.argmax(best))
    return embs[i:i + 1], float(angles[i]), float(best[i])
