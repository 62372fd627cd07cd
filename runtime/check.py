"""``python -m runtime check``: open a tile database (and a bundle) the way the service does, verify every file
against its manifest, and measure what searching it costs this process in memory.

    python -m runtime check --db bundle/tiledb [--bundle bundle] [--json]
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


def rss_mb() -> float:
    """This process's resident memory (VmRSS), MB; NaN where /proc is not there."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def measure_search_memory(db) -> dict:
    """VmRSS of this process after opening, after a local and a global query per layer (random query)."""
    from runtime.search.searcher import Searcher

    before = rss_mb()
    s = Searcher(db)
    q = np.random.default_rng(0).standard_normal(db.embedding_dim).astype(np.float32)
    for i, lay in enumerate(db.layers):
        if lay["count"] and db.spatial_index is not None:
            row = lay["start"] + lay["count"] // 2
            xy = (float(db.entries["x"][row]), float(db.entries["y"][row]))
            if np.all(np.isfinite(xy)):
                s.score_rows(q, s.rows_within(xy, 3 * float(lay.get("footprint_m") or 200.0), i))
    local = rss_mb()
    for i, lay in enumerate(db.layers):
        if lay["count"]:
            s.search_global(q, 5, i)
    return {"rss_mb_before": before, "rss_mb_after_local": local, "rss_mb_after_global": rss_mb(),
            "global_search": "approximate" if s.ann() is not None else "exact"}


def add_check_arguments(p) -> None:
    p.add_argument("--db", required=True, help="tile database folder")
    p.add_argument("--bundle", help="model bundle folder: checked too, and against the database")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")


def check(args) -> int:
    from tiles.db import TileDatabase
    from tiles.db_footprint import memory_footprint

    db = TileDatabase.open(args.db, verify=True)
    report = {"database": str(db.path), "verified": True, **memory_footprint(db)}
    if args.bundle:
        from runtime.engines.engine import check_engine_database, load_engine

        engine = load_engine(args.bundle)
        check_engine_database(engine, db)
        report["bundle"] = {"path": str(args.bundle), "engine": engine.name, "matches_database": True}
        engine.close()
    report["measured"] = measure_search_memory(db)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    m = report["measured"]
    logger.info("%s: every file matches its manifest%s", db.path,
                f"; bundle {args.bundle} ({report['bundle']['engine']}) matches it" if args.bundle else "")
    logger.info("measured RSS %.0f MB before, %.0f MB after local queries, %.0f MB after %s global queries",
                m["rss_mb_before"], m["rss_mb_after_local"], m["rss_mb_after_global"], m["global_search"])
    return 0
