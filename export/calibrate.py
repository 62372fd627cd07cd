"""Calibrate a bundle for the map it flies over: the likelihood, then the reported accuracy, both fitted by
flying the :class:`runtime.localisation.localizer.Localizer` over calibration flights
(:mod:`export.calibration_flights`, :mod:`export.calibrate_likelihood`, :mod:`export.calibrate_accuracy`).

The result goes to the bundle manifest as ``"likelihood"`` (written atomically; other fields untouched),
with what it was fitted on (rasters, database, engine, the chain's settings).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from tiles.io import atomic_write_json

log = logging.getLogger(__name__)


def calibrate_bundle(bundle_dir, db_path, rasters, *, hfov_deg: float = 60.0, precision: str = "auto",
                     threads: int | None = None, frames: int = 40, report_path=None, work_dir=None,
                     cfg=None, source: str = "likelihood-tif", progress: bool = True) -> dict:
    """Fit the likelihood and the fix accuracy for ``bundle_dir`` on flights rendered from ``rasters`` over
    the database ``db_path`` (built by this bundle), flying the chain with ``cfg`` (a LocalizerConfig, the
    service's defaults when None); write them into the bundle manifest and return the stored dict.
    ``source`` records how the rasters were chosen (``"likelihood-tif"``: given for it; ``"calib-tif"``:
    other dates given for INT8; ``"map"``: the map itself, whose flights see the tiles' own imagery).
    ``progress``: bars of each step on stderr (rendering, embedding, each flying of the flights)."""
    from export.calibrate_accuracy import fix_accuracy
    from export.calibrate_likelihood import fit_likelihood
    from export.calibration_flights import embed_flights, half_database, render_flights
    from runtime.engines.bundle import MANIFEST, read_bundle
    from runtime.engines.engine import check_engine_database, load_engine
    from runtime.localisation.config import LocalizerConfig
    from tiles.db import TileDatabase

    t_start = time.perf_counter()
    cfg = cfg or LocalizerConfig(hfov_deg=hfov_deg)
    bundle = read_bundle(bundle_dir)
    db = TileDatabase.open(db_path)
    engine = load_engine(bundle_dir, precision=precision, threads=threads)
    check_engine_database(engine, db)
    rasters = [Path(r) for r in rasters]
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="geoloc-calib-"))
    east = TileDatabase.open(half_database(db, work / "east_db", "east"))
    kw = dict(hfov_deg=hfov_deg, frames=frames, progress=progress)
    on = embed_flights(engine, db, cfg, render_flights(db, rasters, **kw), progress=progress)
    off = embed_flights(engine, east, cfg, render_flights(east, rasters, outside_x=float(
        np.asarray(east.entries["x"]).min()), tag="off-", **kw), progress=progress)
    log.info("calibration flights: %d over the map, %d off it, %d frames", len(on), len(off),
             sum(len(f.frames) for f in on + off))
    lik, report, records = fit_likelihood(engine, [(db, on), (east, off)], cfg, progress=progress)
    from runtime.localisation.registration import Registrar

    lik["fix_accuracy"] = fix_accuracy(records, registration=cfg.registration and Registrar.from_database(db)
                                       is not None)
    lik["fitted_on"] = {"rasters": [r.name for r in rasters], "source": source, "database": Path(db_path).name,
                        "engine": engine.name, "frames": int(sum(len(f.frames) for f in on)),
                        "localizer": asdict(cfg), "final": report["final"],
                        "seconds": round(time.perf_counter() - t_start, 1)}
    engine.close()
    manifest = dict(bundle.manifest)
    manifest["likelihood"] = lik
    atomic_write_json(Path(bundle_dir) / MANIFEST, manifest)
    if report_path is not None:
        atomic_write_json(Path(report_path), report)
    log.info("likelihood calibrated: %s", json.dumps({k: v for k, v in lik.items() if k != "fix_accuracy"}))
    return lik
