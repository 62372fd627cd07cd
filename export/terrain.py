"""Give a tile database the ground's height: a DEM resampled into its CRS over its area (format:
:mod:`tiles.terrain`), listed with its hash in the database manifest.

``python -m export --bundle BUNDLE --tiles MAP.tif ... --dem DEM.tif`` (or ``--dem`` alone on a database
already built). The grid covers the database's tiles and one largest footprint around them (a tilted camera
sees beyond the tiles), at the DEM's own resolution in the database's metric CRS.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from tiles.io import atomic_write_json, file_sha256
from tiles.terrain import HEIGHTS, TERRAIN_DIR

_log = logging.getLogger(__name__)


def database_area(db_path: Path) -> tuple[tuple[float, float, float, float], float, str]:
    """((xmin, ymin, xmax, ymax) covered by the tiles, the largest footprint, the CRS) of a tile database."""
    manifest = json.loads((db_path / "manifest.json").read_text())
    crs = manifest.get("crs")
    entries = np.load(db_path / "entries.npy", mmap_mode="r", allow_pickle=False)
    geo = np.asarray(entries["has_geo"], bool)
    if not crs or not geo.any():
        raise ValueError(f"{db_path} has no tile positions (a gallery database?): a DEM needs the tile database of a "
                         "map (`python -m export --bundle B --tiles MAP.tif --dem DEM.tif`)")
    x, y = np.asarray(entries["x"])[geo], np.asarray(entries["y"])[geo]
    half = np.asarray(entries["footprint_m"], float)[geo] / 2.0
    bounds = (float((x - half).min()), float((y - half).min()), float((x + half).max()), float((y + half).max()))
    return bounds, float(2 * half.max()), crs


def attach_terrain(db_path, dem_path, *, gsd_m: float | None = None) -> Path:
    """Resample ``dem_path`` over the database at ``db_path`` into ``<db>/terrain`` and record it in the
    manifest (the folder lands first, the manifest names it last: an interrupted attach leaves a database
    that opens, flat)."""
    from tiles.dem import read_dem

    db_path = Path(db_path)
    mpath = db_path / "manifest.json"
    if not mpath.is_file():
        raise FileNotFoundError(f"{db_path} is not a tile database (no manifest.json); build it with "
                                "`python -m export ... --tiles MAP.tif` before adding --dem")
    bounds, footprint, crs = database_area(db_path)
    grid = read_dem(dem_path, crs=crs, bounds_m=bounds, gsd_m=gsd_m, margin_m=footprint)
    grid.crs = crs
    known = float(np.isfinite(grid.heights).mean())
    if known < 0.5:
        raise ValueError(f"{dem_path} covers {100 * known:.0f} % of the database's area only: give a DEM of the "
                         "whole map")
    out = grid.write(db_path / TERRAIN_DIR)
    manifest = json.loads(mpath.read_text())
    rel = f"{TERRAIN_DIR}/{HEIGHTS}"
    manifest.setdefault("files", {})[rel] = {"bytes": (out / HEIGHTS).stat().st_size,
                                             "sha256": file_sha256(out / HEIGHTS)}
    h, w = grid.heights.shape
    manifest["terrain"] = {"dir": TERRAIN_DIR, "gsd_m": grid.gsd_m, "size_px": [w, h],
                           "known_fraction": round(known, 4), "relief_m": round(grid.relief_m, 2),
                           "source": grid.source}
    atomic_write_json(mpath, manifest)
    _log.info("terrain %s: %dx%d cells at %.3g m from %s, %.0f m of relief, %.0f %% known", out, w, h, grid.gsd_m,
              Path(dem_path).name, grid.relief_m, 100 * known)
    return out
