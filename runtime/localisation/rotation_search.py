"""Retrieval without a heading: the frame embedded at several rotations, the best one kept.

Tiles are north-up and the model learnt north-up frames (with a few degrees of compass error). A frame
whose heading is unknown is turned by ``n`` headings evenly spread (:func:`runtime.engines.preprocess.north_up`),
embedded in one batch, and each rotation scored against the layer; the rotation whose best tile scores
highest wins. Its embedding is the frame's descriptor (one descriptor per frame, as the calibrated
likelihood expects) and its angle a coarse heading hypothesis (the heading the image top faces), within
half a step when the winner is the right tile. Measured with the demo's model (docs/results/localizer.md)
that hypothesis is weak (median error 60-90 deg), but the tiles that score highest at any rotation hold the
true tile in their top 3 two to three times as often as the frame embedded as it comes: registration tries
those.
"""

from __future__ import annotations

import numpy as np

from runtime.engines.preprocess import north_up


def rotation_angles(n: int) -> np.ndarray:
    if n < 1:
        raise ValueError(f"heading_search_angles={n}: must be >= 1 (0 turns the search off)")
    return np.arange(n) * (360.0 / n)


def best_rotation(engine, searcher, image: np.ndarray, layer: int | None, n: int,
                  k: int = 3) -> tuple[np.ndarray, float, np.ndarray]:
    """(embedding (1, D) of the best rotation, its heading hypothesis in degrees, the database rows of the
    ``k`` tiles that score highest at any rotation: registration's candidates, which need the place, not
    the heading). Without a layer (no altitude) the first rotation is returned (nothing to score against)."""
    angles = rotation_angles(n)
    embs = engine.embed_prepared(engine.prepare([north_up(image, float(a)) for a in angles]))
    if layer is None:
        return embs[:1], float("nan"), np.zeros(0, np.int64)
    scores = np.stack([searcher.score_layer(e, layer) for e in embs])
    i = int(np.argmax(scores.max(axis=1)))
    best_any = scores.max(axis=0)
    kk = min(k, len(best_any))
    top = np.argpartition(-best_any, kk - 1)[:kk] if kk else np.zeros(0, np.int64)
    rows = top[np.argsort(-best_any[top])] + searcher.db.layer_slice(layer).start
    return embs[i:i + 1], float(angles[i]), rows.astype(np.int64)
