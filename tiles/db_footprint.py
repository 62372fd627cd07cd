"""How much memory a tile database costs each way of searching it (``python -m tiles describe-db``)."""

from __future__ import annotations

from tiles.db import EMBEDDINGS, TileDatabase


def memory_footprint(db: TileDatabase) -> dict:
    """Bytes on disk per file, and what each way of searching keeps resident (the arrays are memory-mapped:
    only the pages a search touches are in memory, shared with the page cache).

    ``local``: the spatial grid (upper bound: all of it) plus the rows scored around the posterior;
    ``approximate``: the ANN index files, read into memory whole, plus the re-ranked rows; ``exact``: the
    whole descriptor file, paged in by a full scan. The entries are read a few rows per fix.
    """
    files = {name: int(info["bytes"]) for name, info in db.manifest.get("files", {}).items()}
    grid = sum(files.get(n, 0) for n in (db.manifest.get("spatial_index") or {}).get("files", []))
    ann = sum(files.get(lay["file"], 0) for lay in (db.manifest.get("ann") or {}).get("layers", []) if lay)
    emb = files.get(EMBEDDINGS, int(db.embeddings.nbytes))
    return {"rows": len(db), "embedding_dim": db.embedding_dim, "dtype": str(db.embeddings.dtype),
            "bytes_per_row": int(db.embeddings.dtype.itemsize * db.embedding_dim), "files": files,
            "disk_bytes": sum(files.values()),
            "resident_bytes": {"local": grid, "approximate": grid + ann, "exact": grid + emb,
                               "approximate_and_exact": grid + ann + emb}}
