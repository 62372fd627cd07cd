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
        self._scan_xy: tuple[np.ndarray, np.ndarray] | None = None  # only for databases without a grid
        self._ann = None

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

    def _layer_index(self, layer) -> int | None:
        if layer is None:
            return None
        if isinstance(layer, str):
            names = [lay["name"] for lay in self.db.layers]
            if layer not in names:
                raise KeyError(f"no layer named {layer!r}; layers are {names}")
            return names.index(layer)
        return int(layer)

    def _scan_within(self, sl: slice, centre_xy, radius_m: float) -> np.ndarray:
        """Linear scan of the centres (a database written before the spatial index existed)."""
        if self._scan_xy is None:
            e = self.db.entries
            self._scan_xy = (np.stack([np.asarray(e["x"], np.float64), np.asarray(e["y"], np.float64)], 1),
                             np.asarray(e["has_geo"], bool))
        xy, has_geo = self._scan_xy
        d2 = np.sum((xy[sl] - np.asarray(centre_xy, np.float64)[None, :]) ** 2, axis=1)
        return np.flatnonzero(has_geo[sl] & (d2 <= float(radius_m) ** 2)) + sl.start

    def rows_within(self, centre_xy, radius_m: float, layer=None) -> np.ndarray:
        """Database rows (ascending int64) of ``layer`` (None: every layer) whose tile centre lies within
        ``radius_m`` metres of ``centre_xy`` (the database's metric CRS). With the database's spatial grid
        (:mod:`tiles.spatial`) the cost is proportional to the rows returned, not to the layer's size."""
        if radius_m is None or not radius_m > 0:
            raise ValueError(f"radius_m must be > 0, got {radius_m}")
        if not np.all(np.isfinite(np.asarray(centre_xy, np.float64))):
            raise ValueError(f"centre_xy must be two finite metric coordinates, got {centre_xy!r}")
        index = self.db.spatial_index
        li = self._layer_index(layer)
        if index is None:
            return self._scan_within(self._rows(li), centre_xy, radius_m)
        if li is None:
            parts = [index.within(i, centre_xy, radius_m) for i in range(len(self.db.layers))]
            return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
        return index.within(li, centre_xy, radius_m)

    def candidates(self, layer=None, centre_xy=None, radius_m=None) -> np.ndarray | slice:
        """The rows searched: the layer's slice, or the rows of it within ``radius_m`` of ``centre_xy``."""
        sl = self._rows(layer)
        if radius_m is None or centre_xy is None:
            return sl
        return self.rows_within(centre_xy, radius_m, layer)

    def score_rows(self, queries: np.ndarray, rows) -> np.ndarray:
        """Cosine similarity of query embedding(s) to the given database rows: ``(D,) -> (R,)`` or
        ``(N, D) -> (N, R)`` float32, in the order of ``rows`` (e.g. :meth:`rows_within` around the
        posterior, for the map filter's local likelihood)."""
        q = np.asarray(queries, np.float32)
        one = q.ndim == 1
        q = self._check_queries(q)
        rows = np.asarray(rows, np.int64)
        if rows.ndim != 1:
            raise ValueError(f"rows must be a 1-d array of database rows, got shape {rows.shape}")
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self.db)):
            raise ValueError(f"rows must be in 0..{len(self.db) - 1}, got {rows.min()}..{rows.max()}")
        sims = q @ np.asarray(self.db.embeddings[rows], np.float32).T
        return sims[0] if one else sims

    def score_layer(self, query: np.ndarray, layer) -> np.ndarray:
        """(R,) float32 cosines of one query to every row of ``layer``, in row order, through the same float32
        cache as :meth:`search` (no second copy of the layer)."""
        q = self._check_queries(np.asarray(query, np.float32))[0]
        sl = self._rows(self._layer_index(layer))
        cached = self._float32_block(sl)
        if cached is not None:
            return cached @ q
        return np.concatenate([np.asarray(self.db.embeddings[s:min(s + self.chunk_rows, sl.stop)], np.float32) @ q
                               for s in range(sl.start, sl.stop, self.chunk_rows)])

    def top_k(self, scores: np.ndarray, layer, k: int) -> Matches:
        """The :class:`Matches` of a query from its :meth:`score_layer` scores (no second pass over the layer)."""
        sl = self._rows(self._layer_index(layer))
        out_i = np.full((1, k), -1, np.int64)
        out_s = np.full((1, k), -np.inf, np.float32)
        kk = min(k, len(scores))
        if kk:
            idx, sc = _topk_rows(np.asarray(scores, np.float32)[None, :], kk)
            out_i[:, :kk] = idx + sl.start
            out_s[:, :kk] = sc
        return Matches(out_i, out_s)

    def centres(self, rows) -> np.ndarray:
        """(R, 2) float64 tile centres (the database's metric CRS) of ``rows``; reads only those entries."""
        rows = np.asarray(rows, np.int64)
        e = self.db.entries
        return np.stack([np.asarray(e["x"][rows], np.float64), np.asarray(e["y"][rows], np.float64)], 1)

    def _check_queries(self, q: np.ndarray) -> np.ndarray:
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.db.embedding_dim:
            raise ValueError(f"queries must be (N, {self.db.embedding_dim}), got {q.shape}")
        return q

    # ---- the search ---------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int = 5, layer=None, centre_xy=None, radius_m=None) -> Matches:
        q = self._check_queries(np.asarray(queries, np.float32))
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

    # ---- global search (relocalisation) -------------------------------------------------------
    def ann(self, nprobe: int | None = None, rerank: int | None = None):
        """The database's approximate index (:class:`runtime.search.ann.AnnIndex`), or None when the database has
        none or FAISS is not installed (then :meth:`search_global` is exact)."""
        from runtime.search.ann import AnnIndex, faiss_available

        if self._ann is None and self.db.manifest.get("ann") is not None:
            if not faiss_available():
                logger.warning("%s carries an ANN index but FAISS is not installed (`pip install faiss-cpu`): "
                               "global search is exact", self.db.path)
                self._ann = False
            else:
                self._ann = AnnIndex(self.db, nprobe=nprobe, rerank=rerank)
        return self._ann or None

    def search_global(self, queries: np.ndarray, k: int = 5, layer=None, exact: bool = False) -> Matches:
        """Top-k over a whole layer: approximate (IVF-PQ proposals, exact re-ranking) when the database
        carries an ANN index for the layer and FAISS is installed, exact otherwise or with ``exact=True``.
        Same result type as :meth:`search`; scores are exact cosines either way."""
        q = self._check_queries(np.asarray(queries, np.float32))
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        li = self._layer_index(layer)
        ann = None if exact or li is None else self.ann()
        if ann is None or not ann.has_layer(li):
            return self.search(q, k=k, layer=li)
        return Matches(*ann.search(q, k, li))
