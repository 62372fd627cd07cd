"""Exact top-k cosine search over a tile database (float16 rows, float32 accumulation).

Rows of the database and the queries are L2-normalised, so the inner product is the cosine similarity.
The search runs over a layer (the altitude the frame was taken at) and optionally only over tiles whose
centre lies within ``radius_m`` of a point (the last trusted fix). Blocks of ``chunk_rows`` rows are
converted to float32, multiplied, and reduced with ``np.argpartition``; the per-block winners are merged.
A layer small enough (``float32_cache_mb``) is converted once and kept, which turns the search into one
matrix product. FAISS (``IndexFlatIP``, exact) is used when asked for and installed.

    searcher = Searcher(db)
    m = searcher.search(query_embeddings, k=5, layer=db.layer_for_altitude(150))
    m.indices   # (N, k) int64 database rows, best first;  m.scores  # (N, k) float32 cosine
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)


@dataclass
class Matches:
    indices: np.ndarray  # (N, k) int64 rows of the database, best first (-1 where fewer than k candidates)
    scores: np.ndarray  # (N, k) float32 cosine similarities (-inf where no candidate)


def _topk_rows(sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``sims`` (N, M), the k best column indices (sorted, best first) and their values."""
    m = sims.shape[1]
    if k >= m:
        idx = np.argsort(-sims, axis=1, kind="stable")
    else:
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, part, axis=1), axis=1, kind="stable")
        idx = np.take_along_axis(part, order, axis=1)
    return idx[:, :k], np.take_along_axis(sims, idx[:, :k], axis=1)


class Searcher:
    """Exact top-k over a :class:`tiles.db.TileDatabase` (CONTRACTS.md §10)."""

    def __init__(self, db, chunk_rows: int = 65536, float32_cache_mb: float = 256.0, use_faiss: bool = False):
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        self.db = db
        self.chunk_rows = int(chunk_rows)
        self.float32_cache_mb = float(float32_cache_mb)
        self._cache: dict[tuple[int, int], np.ndarray] = {}
        self._faiss: dict[tuple[int, int], object] = {}
        self.use_faiss = bool(use_faiss)
        if self.use_faiss:
            try:
                import faiss  # noqa: F401
            except ImportError as e:
                raise ImportError(
                    "use_faiss=True needs FAISS: `pip install faiss-cpu` (or faiss-gpu); exact numpy search "
                    "works without it"
                ) from e
        entries = db.entries
        self._xy = np.stack([np.asarray(entries["x"], np.float64), np.asarray(entries["y"], np.float64)], 1)
        self._has_geo = np.asarray(entries["has_geo"], bool)

    # ---- helpers ------------------------------------------------------------------------------
    def _rows(self, layer) -> slice:
        if layer is None:
            return slice(0, len(self.db))
        return self.db.layer_slice(layer)

    def _float32_block(self, sl: slice) -> np.ndarray | None:
        key = (sl.start, sl.stop)
        if key in self._cache:
            return self._cache[key]
        mb = (sl.stop - sl.start) * self.db.embedding_dim * 4 / 2**20
        if mb > self.float32_cache_mb:
            return None
        block = np.ascontiguousarray(self.db.embeddings[sl], dtype=np.float32)
        self._cache[key] = block
        return block

    def _faiss_index(self, sl: slice):
        key = (sl.start, sl.stop)
        if key not in self._faiss:
            import faiss

            index = faiss.IndexFlatIP(self.db.embedding_dim)
            for s in range(sl.start, sl.stop, self.chunk_rows):
                index.add(np.ascontiguousarray(self.db.embeddings[s:min(s + self.chunk_rows, sl.stop)], np.float32))
            self._faiss[key] = index
        return self._faiss[key]

    def candidates(self, layer=None, centre_xy=None, radius_m=None) -> np.ndarray | slice:
        """The rows searched: the layer's slice, or the rows of it within ``radius_m`` of ``centre_xy``."""
        sl = self._rows(layer)
        if radius_m is None or centre_xy is None:
            return sl
        if radius_m <= 0:
            raise ValueError(f"radius_m must be > 0, got {radius_m}")
        xy = self._xy[sl]
        d2 = np.sum((xy - np.asarray(centre_xy, np.float64)[None, :]) ** 2, axis=1)
        inside = self._has_geo[sl] & (d2 <= float(radius_m) ** 2)
        return np.flatnonzero(inside) + sl.start

    # ---- the search ---------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int = 5, layer=None, centre_xy=None, radius_m=None) -> Matches:
        q = np.asarray(queries, np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.db.embedding_dim:
            raise ValueError(f"queries must be (N, {self.db.embedding_dim}), got {q.shape}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        rows = self.candidates(layer, centre_xy, radius_m)
        n = rows.stop - rows.start if isinstance(rows, slice) else len(rows)
        out_i = np.full((len(q), k), -1, np.int64)
        out_s = np.full((len(q), k), -np.inf, np.float32)
        if n == 0 or len(q) == 0:
            return Matches(out_i, out_s)
        kk = min(k, n)
        if isinstance(rows, slice):
            if self.use_faiss:
                scores, idx = self._faiss_index(rows).search(q, kk)
                out_i[:, :kk] = idx + rows.start
                out_s[:, :kk] = scores
                return Matches(out_i, out_s)
            cached = self._float32_block(rows)
            if cached is not None:
                idx, scores = _topk_rows(q @ cached.T, kk)
                out_i[:, :kk] = idx + rows.start
                out_s[:, :kk] = scores
                return Matches(out_i, out_s)
        best_i = np.zeros((len(q), 0), np.int64)
        best_s = np.zeros((len(q), 0), np.float32)
        for s in range(0, n, self.chunk_rows):
            if isinstance(rows, slice):
                lo, hi = rows.start + s, rows.start + min(s + self.chunk_rows, n)
                block = np.asarray(self.db.embeddings[lo:hi], np.float32)
                ids = np.arange(lo, hi)
            else:
                ids = rows[s:s + self.chunk_rows]
                block = np.asarray(self.db.embeddings[ids], np.float32)
            idx, scores = _topk_rows(q @ block.T, min(kk, len(ids)))
            best_i = np.concatenate([best_i, ids[idx]], axis=1)
            best_s = np.concatenate([best_s, scores], axis=1)
            if best_i.shape[1] > kk:
                sel, best_s = _topk_rows(best_s, kk)
                best_i = np.take_along_axis(best_i, sel, axis=1)
        out_i[:, :kk] = best_i
        out_s[:, :kk] = best_s
        return Matches(out_i, out_s)
