"""The ground's height on board: a terrain grid carried in the tile database, read with numpy alone.

``python -m export ... --dem DEM.tif`` resamples a DEM (any CRS; :mod:`tiles.dem`) onto a north-up grid in
the database's metric CRS and stores it beside the tiles::

    <database>/terrain/heights.npy    float32 (H, W), metres above mean sea level, NaN where unknown
    <database>/terrain/terrain.json   format, crs, origin_xy (top-left corner), gsd_m, size_px, source

and the database manifest lists ``terrain/heights.npy`` with its sha256 among its files (checked when the
database opens) and describes it under ``terrain``. Heights are the DEM's own: mean sea level for the usual
global DEMs (SRTM, Copernicus GLO-30: EGM96/EGM2008 geoid heights) and national ones (e.g. NAVD88).

:meth:`TerrainGrid.height_at` interpolates bilinearly between cell centres (cell ``(row, col)`` is the
height at ``x = x0 + (col + 0.5) gsd``, ``y = y0 - (row + 0.5) gsd``); NaN outside the grid or next to an
unknown cell. Without a DEM the ground is flat: :func:`open_database_terrain` returns None and the caller
uses :class:`FlatGround` (one height, by default 0).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tiles.io import atomic_write_json, default_mode, file_sha256, read_versioned_json

FORMAT = "geoloc-terrain"
FORMAT_VERSION = 1
TERRAIN_DIR = "terrain"
META = "terrain.json"
HEIGHTS = "heights.npy"


class TerrainError(ValueError):
    """Terrain that cannot be read or used; the message names the file and the fix."""


@dataclass
class TerrainGrid:
    """Heights (H, W) float32 on a north-up grid: top-left corner at metric ``(x0, y0)``, ``gsd_m`` per cell."""

    heights: np.ndarray
    x0: float
    y0: float
    gsd_m: float
    crs: str | None = None
    source: dict = field(default_factory=dict)

    @property
    def bounds_m(self) -> tuple[float, float, float, float]:
        h, w = self.heights.shape
        return self.x0, self.y0 - h * self.gsd_m, self.x0 + w * self.gsd_m, self.y0

    def height_at(self, x, y) -> np.ndarray:
        """Ground height (m) at metric (x, y) (scalars or arrays), bilinear; NaN where unknown."""
        x, y = np.asarray(x, float), np.asarray(y, float)
        hgt = self.heights
        rows, cols = hgt.shape
        c = (x - self.x0) / self.gsd_m - 0.5
        r = (self.y0 - y) / self.gsd_m - 0.5
        inside = (c >= -0.5) & (c <= cols - 0.5) & (r >= -0.5) & (r <= rows - 0.5)
        c, r = np.clip(np.nan_to_num(c), 0, cols - 1), np.clip(np.nan_to_num(r), 0, rows - 1)
        c0 = np.minimum(np.floor(c).astype(np.int64), max(cols - 2, 0))
        r0 = np.minimum(np.floor(r).astype(np.int64), max(rows - 2, 0))
        c1, r1 = np.minimum(c0 + 1, cols - 1), np.minimum(r0 + 1, rows - 1)
        fc, fr = c - c0, r - r0
        top = hgt[r0, c0] * (1 - fc) + hgt[r0, c1] * fc
        bottom = hgt[r1, c0] * (1 - fc) + hgt[r1, c1] * fc
        z = (top * (1 - fr) + bottom * fr).astype(np.float64)
        return np.where(inside, z, np.nan)

    __call__ = height_at

    @property
    def relief_m(self) -> float:
        """Highest minus lowest known height."""
        return float(np.nanmax(self.heights) - np.nanmin(self.heights))

    # ---- files ------------------------------------------------------------------------------------
    def write(self, folder: str | os.PathLike) -> Path:
        """Write ``heights.npy`` and ``terrain.json`` into ``folder`` atomically (a folder renamed in place)."""
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
        try:
            os.chmod(tmp, default_mode(directory=True))
            np.save(tmp / HEIGHTS, np.ascontiguousarray(self.heights, np.float32))
            h, w = self.heights.shape
            atomic_write_json(tmp / META, {
                "format": FORMAT, "format_version": FORMAT_VERSION, "crs": self.crs,
                "origin_xy": [self.x0, self.y0], "gsd_m": self.gsd_m, "size_px": [w, h],
                "units": "metres above mean sea level", "source": self.source,
                "files": {HEIGHTS: {"bytes": (tmp / HEIGHTS).stat().st_size, "sha256": file_sha256(tmp / HEIGHTS)}}})
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return folder

    @classmethod
    def open(cls, folder: str | os.PathLike, *, mmap: bool = True) -> TerrainGrid:
        folder = Path(folder)
        mpath = folder / META
        if not mpath.is_file():
            raise TerrainError(f"no terrain at {folder} ({META} missing): add a DEM with "
                               "`python -m export --bundle BUNDLE --dem DEM.tif`")
        meta = read_versioned_json(mpath, FORMAT, FORMAT_VERSION, TerrainError,
                                   "add the DEM again with this version (`python -m export --bundle BUNDLE --dem DEM.tif`)")
        info = meta.get("files", {}).get(HEIGHTS, {})
        path = folder / HEIGHTS
        if not path.is_file() or path.stat().st_size != info.get("bytes"):
            raise TerrainError(f"{path} is missing or truncated (terrain.json: {info.get('bytes')} bytes); "
                               "add the DEM again")
        heights = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        w, h = meta["size_px"]
        if heights.shape != (h, w) or heights.dtype != np.float32:
            raise TerrainError(f"{path}: {heights.dtype}{heights.shape}, terrain.json says float32({h}, {w})")
        return cls(heights, float(meta["origin_xy"][0]), float(meta["origin_xy"][1]), float(meta["gsd_m"]),
                   meta.get("crs"), meta.get("source", {}))


@dataclass(frozen=True)
class FlatGround:
    """Ground without a DEM: one height everywhere (metres; 0 when nothing better is known)."""

    height_m: float = 0.0

    def height_at(self, x, y) -> np.ndarray:
        return np.full(np.broadcast(np.asarray(x, float), np.asarray(y, float)).shape, float(self.height_m))

    __call__ = height_at


def open_database_terrain(db_or_path) -> TerrainGrid | None:
    """The terrain of a tile database (a ``TileDatabase`` or its folder), or None when it has none."""
    path = Path(getattr(db_or_path, "path", db_or_path))
    manifest = getattr(db_or_path, "manifest", None)
    if manifest is None and (path / "manifest.json").is_file():
        manifest = json.loads((path / "manifest.json").read_text())
    info = (manifest or {}).get("terrain")
    if not info:
        return None
    grid = TerrainGrid.open(path / info.get("dir", TERRAIN_DIR))
    if manifest.get("crs") and grid.crs and grid.crs != manifest["crs"]:
        raise TerrainError(f"{path}: terrain in {grid.crs}, database in {manifest['crs']}; add the DEM again")
    return grid
