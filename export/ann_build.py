"""Build the approximate index of a tile database: one FAISS IVF-PQ index per big layer (runtime/ann.py).

IVF-PQ (inverted lists over ``nlist`` k-means cells, product-quantised codes of ``pq_m`` bytes a row) is
chosen over HNSW for a companion computer: it stores 1M 256-d rows in ~40 MB (HNSW keeps the vectors plus
a graph, 1 GB+ in float32, and builds for many minutes on two cores), and its proposals are re-ranked
with the database's own descriptors, so no second copy of the vectors exists. Parameters (measured in
docs/results/search.md):

- ``nlist`` = the power of two nearest to ``2 * sqrt(rows)`` (1M rows: 2048 cells of ~500 rows);
- ``pq_m`` = ``dim / 8`` sub-quantisers of 8 bits (256-d: 32 bytes a row);
- k-means trained on at most ``train_max`` rows drawn with a fixed seed;
- search defaults ``nprobe`` and ``rerank`` (candidates re-scored exactly) stored in the manifest.

Layers with fewer than ``min_rows`` rows get no index: exact search over them is already fast.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

_log = logging.getLogger(__name__)

ANN_CHOICES = ("auto", "ivfpq", "none")
DEFAULT_MIN_ROWS = 50_000
DEFAULT_NPROBE = 16
DEFAULT_RERANK = 64


def need_faiss():
    try:
        import faiss
    except ImportError as e:
        raise ImportError("the ANN index needs FAISS: `pip install faiss-cpu` (or `pip install .[ann]`); "
                          "or build without it (--ann none) and search exactly") from e
    return faiss


def ivfpq_params(rows: int, dim: int) -> dict:
    """Default IVF-PQ parameters for a layer of ``rows`` rows of ``dim`` dimensions."""
    nlist = int(2 ** round(math.log2(max(2.0 * math.sqrt(rows), 16.0))))
    pq_m = next(m for m in (dim // 8, dim // 4, dim // 2, dim) if m >= 1 and dim % m == 0)
    return {"nlist": min(nlist, max(rows // 39, 1)), "pq_m": pq_m, "pq_bits": 8}


def build_ivfpq(vectors: np.ndarray, *, nlist: int, pq_m: int, pq_bits: int = 8, train_max: int = 100_000,
                seed: int = 0, chunk_rows: int = 65536):
    """A trained, filled ``faiss.IndexIVFPQ`` (inner product) over ``vectors`` (float16/32, L2-normalised)."""
    faiss = need_faiss()
    n, d = vectors.shape
    if d % pq_m:
        raise ValueError(f"pq_m={pq_m} must divide the descriptor size {d}")
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, min(n, max(train_max, nlist * 39)), replace=False))
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFPQ(quantizer, d, nlist, pq_m, pq_bits, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.pq.cp.seed = seed
    index.train(np.ascontiguousarray(vectors[sample], np.float32))
    for s in range(0, n, chunk_rows):
        index.add(np.ascontiguousarray(vectors[s:s + chunk_rows], np.float32))
    return index


def ivfpq_builder(min_rows: int = DEFAULT_MIN_ROWS, nprobe: int = DEFAULT_NPROBE, rerank: int = DEFAULT_RERANK,
                  train_max: int = 100_000, seed: int = 0, required: bool = True):
    """A builder for :func:`tiles.db.write_database` (``indexes=``): writes ``ann-<layer>.faiss`` for every
    layer of at least ``min_rows`` rows and returns the manifest's ``ann`` record."""

    def build(folder: Path, emb: np.ndarray, layers: list[dict]):
        faiss = need_faiss()
        records, files = [], []
        for i, layer in enumerate(layers):
            lo, hi = int(layer["start"]), int(layer["stop"])
            if hi - lo < min_rows:
                records.append(None)
                continue
            params = ivfpq_params(hi - lo, emb.shape[1])
            index = build_ivfpq(emb[lo:hi], train_max=train_max, seed=seed, **params)
            name = f"ann-{i}.faiss"
            faiss.write_index(index, str(Path(folder) / name))
            files.append(name)
            records.append({"file": name, "rows": hi - lo, **params})
            _log.info("ANN index for layer %s: %d rows, IVF%d,PQ%d", layer["name"], hi - lo, params["nlist"],
                      params["pq_m"])
        record = {"kind": "faiss-ivfpq", "metric": "inner_product", "faiss_version": faiss.__version__,
                  "nprobe": nprobe, "rerank": rerank, "min_rows": min_rows, "train_max": train_max,
                  "seed": seed, "layers": records}
        return "ann", record, files

    return build


def ann_indexes(choice: str, largest_layer_rows: int, min_rows: int = DEFAULT_MIN_ROWS) -> tuple:
    """The ``indexes`` argument of ``write_database`` for the CLI choice ``--ann auto|ivfpq|none``."""
    if choice not in ANN_CHOICES:
        raise ValueError(f"--ann {choice!r} is not one of {ANN_CHOICES}")
    if choice == "none":
        return ()
    if choice == "ivfpq":
        need_faiss()
        return (ivfpq_builder(min_rows=min_rows),)
    if largest_layer_rows < min_rows:
        return ()
    try:
        need_faiss()
    except ImportError as e:
        _log.warning("no ANN index for %d-row layers: %s", largest_layer_rows, e)
        return ()
    return (ivfpq_builder(min_rows=min_rows),)
