"""Approximate global search over a big layer: a FAISS IVF-PQ index per layer, re-ranked exactly.

The index (built at export by ``export.ann_build``, files ``ann-<layer>.faiss`` in the database folder,
parameters in the manifest's ``ann`` record) holds only compressed codes (``pq_m`` bytes a row) and the
coarse centroids; it proposes ``rerank`` candidates per query, which are re-scored with the database's own
descriptors (memory-mapped float16 rows) so the returned scores are exact cosines and the ranking among
the candidates is exact. Only the candidate rows of the database are read per query.

FAISS (``pip install faiss-cpu``, wheels for x86_64 and aarch64) is an optional extra: without it, or for
a layer without an index, :meth:`runtime.search.searcher.Searcher.search_global` falls back to exact search.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_NPROBE = 16
DEFAULT_RERANK = 64


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


class AnnIndex:
    """The per-layer IVF-PQ indexes of one database, loaded on first use of each layer."""

    def __init__(self, db, nprobe: int | None = None, rerank: int | None = None, threads: int | None = 1):
        record = db.manifest.get("ann")
        if record is None:
            raise ValueError(f"tile database {db.path} has no ANN index: build one with "
                             "`python -m export --bundle B --tiles MAP.tif --ann ivfpq`")
        if record.get("kind") != "faiss-ivfpq":
            raise ValueError(f"{db.path}: ANN index kind {record.get('kind')!r} is not understood "
                             "(this runtime reads 'faiss-ivfpq'); rebuild the database")
        import faiss

        if threads:
            faiss.omp_set_num_threads(int(threads))  # one query at a time: threads cost more than they give
        self.db = db
        self.record = record
        self.nprobe = int(nprobe or record.get("nprobe", DEFAULT_NPROBE))
        self.rerank = int(rerank or record.get("rerank", DEFAULT_RERANK))
        self._indexes: dict[int, object] = {}
        self._lock = threading.Lock()

    def has_layer(self, layer: int) -> bool:
        layers = self.record["layers"]
        return 0 <= layer < len(layers) and layers[layer] is not None

    def index(self, layer: int):
        with self._lock:
            if layer not in self._indexes:
                import faiss

                path = Path(self.db.path) / self.record["layers"][layer]["file"]
                idx = faiss.read_index(str(path))
                idx.nprobe = self.nprobe
                self._indexes[layer] = idx
            return self._indexes[layer]

    @property
    def nbytes_loaded(self) -> int:
        """Bytes of the index files loaded so far (their codes, ids and centroids live in memory)."""
        return sum((Path(self.db.path) / self.record["layers"][i]["file"]).stat().st_size for i in self._indexes)

    def search(self, q: np.ndarray, k: int, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """(indices (N, k) int64 database rows, scores (N, k) float32 exact cosines), best first, -1/-inf
        where fewer than k candidates."""
        start = int(self.db.layers[layer]["start"])
        n_cand = max(self.rerank, k)
        _, ids = self.index(layer).search(np.ascontiguousarray(q, np.float32), n_cand)
        out_i = np.full((len(q), k), -1, np.int64)
        out_s = np.full((len(q), k), -np.inf, np.float32)
        for j in range(len(q)):
            cand = ids[j][ids[j] >= 0].astype(np.int64) + start
            if not len(cand):
                continue
            cand = np.unique(cand)  # ascending: reads the memory-mapped rows in file order
            s = np.asarray(self.db.embeddings[cand], np.float32) @ q[j]
            kk = min(k, len(cand))
            top = np.argsort(-s, kind="stable")[:kk]
            out_i[j, :kk] = cand[top]
            out_s[j, :kk] = s[top]
        return out_i, out_s
