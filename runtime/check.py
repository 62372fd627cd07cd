"""``python -m runtime check``: open a tile database (and a bundle) the way the service does, verify every file
against its manifest (the database's arrays, indexes and map imagery; every model file of the bundle), and
measure what searching it costs this process in memory. Run it after copying a database to the drone when
the service starts with ``--no-verify-db``.

    python -m runtime check --db bundle/tiledb [--bundle bundle] [--json]
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.cli import add_dataclass_options, with_defaults
from common.options import shared

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


@dataclass
class CheckOptions:
    db: str | None = shared("db", required=True)
    bundle: str | None = shared("bundle")  # checked too: every model file, and against the database
    json: bool = shared("json")


def add_check_arguments(p) -> None:
    add_dataclass_options(p, CheckOptions)


def check(args) -> int:
    """Every file of the database (arrays, indexes, map imagery) and of the bundle (every model file, not
    only the one the service would load) against its manifest's hash, timed; then the search memory."""
    from tiles.db import TileDatabase
    from tiles.db_footprint import memory_footprint

    with_defaults(args, CheckOptions)
    t0 = time.perf_counter()
    db = TileDatabase.open(args.db, verify=True)
    report = {"database": str(db.path), "verified": True, "verify_s": round(time.perf_counter() - t0, 3),
              **memory_footprint(db)}
    if args.bundle:
        from runtime.engines.bundle import read_bundle
        from runtime.engines.engine import check_engine_database, load_engine

        t0 = time.perf_counter()
        bundle = read_bundle(args.bundle)
        for entry in bundle.files:
            bundle.file_path(entry)  # hashed against the manifest
        verify_s = round(time.perf_counter() - t0, 3)
        engine = load_engine(args.bundle)
        check_engine_database(engine, db)
        report["bundle"] = {"path": str(args.bundle), "engine": engine.name, "matches_database": True,
                            "files": [f["path"] for f in bundle.files], "verify_s": verify_s}
        engine.close()
    report["measured"] = measure_search_memory(db)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    m = report["measured"]
    logger.info("%s: every file matches its manifest (%.2f s)%s", db.path, report["verify_s"],
                f"; bundle {args.bundle}: its {len(report['bundle']['files'])} model files too "
                f"({report['bundle']['verify_s']:.2f} s), and {report['bundle']['engine']} matches the database"
                if args.bundle else "")
    logger.info("measured RSS %.0f MB before, %.0f MB after local queries, %.0f MB after %s global queries",
                m["rss_mb_before"], m["rss_mb_after_local"], m["rss_mb_after_global"], m["global_search"])
    return 0
