"""The map's pixels on board: read any north-up window around a position, with numpy, OpenCV and sqlite3.

Registration (``runtime.localisation.registration``) matches a frame against the map around a candidate position, so
the tile database carries the reference imagery itself, resampled by the export
(``export.map_imagery``) onto a north-up grid in the database's metric CRS (x east, y north, metres)::

    <database>/imagery/imagery.json   format, kind, crs, gsd_m, origin_xy, size_px, files (bytes)
    <database>/imagery/rgb.npy        kind "array": uint8 (H, W, 3), memory-mapped
    <database>/imagery/valid.npy      kind "array": uint8 (H, W), 1 where the map has data
    <database>/imagery/blocks.sqlite  kind "blocks": table blocks(brow, bcol, rgb JPEG, valid PNG)

A pixel ``(col, row)`` (continuous, corner of the top-left pixel at 0) lies at ``x = x0 + col * gsd``,
``y = y0 - row * gsd``. Small maps are one memory-mapped array; big ones are ``block_px`` blocks
compressed in an SQLite file (like MBTiles, but in the map's own metric grid), blocks without data
absent. Either way a window is read without loading the map. A database without ``imagery/`` still
works (retrieval only): :func:`open_database_imagery` returns None.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.cli import UserError
from tiles.io import file_sha256, read_versioned_json

FORMAT = "geoloc-map-imagery"
FORMAT_VERSION = 1
IMAGERY_DIR = "imagery"
META = "imagery.json"
RGB, VALID, BLOCKS = "rgb.npy", "valid.npy", "blocks.sqlite"
KINDS = ("array", "blocks")


class ImageryError(UserError, ValueError):
    """Map imagery that cannot be read or was changed since the build; the message names the file and the fix."""


@dataclass
class Window:
    """A north-up image of the map: ``rgb`` (h, w, 3) uint8, ``valid`` (h, w) uint8 0/1, and its grid:
    the top-left corner of pixel (0, 0) at metric ``(x0, y0)``, ``gsd_m`` metres per pixel."""

    rgb: np.ndarray
    valid: np.ndarray
    x0: float
    y0: float
    gsd_m: float

    def to_metric(self, col, row):
        return self.x0 + np.asarray(col, float) * self.gsd_m, self.y0 - np.asarray(row, float) * self.gsd_m

    def to_pixel(self, x, y):
        return (np.asarray(x, float) - self.x0) / self.gsd_m, (self.y0 - np.asarray(y, float)) / self.gsd_m


class MapImagery:
    """Map imagery opened read-only. Use :meth:`open`; :meth:`window` reads a square around (x, y)."""

    def __init__(self, path: Path, meta: dict):
        self.path, self.meta = path, meta
        self.kind = meta["kind"]
        self.gsd_m = float(meta["gsd_m"])
        self.x0, self.y0 = (float(v) for v in meta["origin_xy"])
        self.width, self.height = (int(v) for v in meta["size_px"])
        self.crs = meta.get("crs")
        self.block_px = int(meta.get("block_px", 512))
        self._rgb = self._valid = self._db = None
        self._cache: OrderedDict = OrderedDict()
        if self.kind == "array":
            self._rgb = np.load(path / RGB, mmap_mode="r", allow_pickle=False)
            self._valid = np.load(path / VALID, mmap_mode="r", allow_pickle=False)
            if self._rgb.shape != (self.height, self.width, 3) or self._valid.shape != (self.height, self.width):
                raise ImageryError(f"{path}: arrays {self._rgb.shape}/{self._valid.shape} do not match "
                                   f"size_px {meta['size_px']}; rebuild the database with `python -m export`")
        else:
            uri = f"file:{(path / BLOCKS).resolve()}?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False)

    @classmethod
    def open(cls, path: str | os.PathLike, *, verify: bool = True) -> MapImagery:
        """Open the imagery folder ``path``: every file it lists must have its size and (``verify``, where
        ``imagery.json`` records it) its sha256, so imagery changed after the build is refused, never used."""
        path = Path(path)
        mpath = path / META
        if not mpath.is_file():
            raise ImageryError(f"no map imagery at {path} ({META} missing): build the database with "
                               "`python -m export ... --tiles MAP.tif` (imagery is written by default)")
        meta = read_versioned_json(mpath, FORMAT, FORMAT_VERSION, ImageryError,
                                   "rebuild the database with this version of `python -m export`")
        if meta.get("kind") not in KINDS:
            raise ImageryError(f"{mpath}: kind {meta.get('kind')!r} is not one of {KINDS}")
        for name, info in meta.get("files", {}).items():
            f = path / name
            if not f.is_file() or f.stat().st_size != info["bytes"]:
                raise ImageryError(f"{f} is missing or truncated (manifest: {info['bytes']} bytes); copy the "
                                   "database again or rebuild its imagery with `python -m export.map_imagery DB MAP.tif`")
            if verify and info.get("sha256") and file_sha256(f) != info["sha256"]:
                raise ImageryError(f"{f}: sha256 differs from {META}: the map imagery was changed after the build "
                                   "(a bad copy, a failing disk, an edit); copy the database again or rebuild its "
                                   "imagery with `python -m export.map_imagery DB MAP.tif`")
        return cls(path, meta)

    @property
    def bounds_m(self) -> tuple[float, float, float, float]:
        return (self.x0, self.y0 - self.height * self.gsd_m, self.x0 + self.width * self.gsd_m, self.y0)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()

    # ---- pixels ---------------------------------------------------------------------------------
    def read_pixels(self, col0: int, row0: int, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
        """Native pixels ``[row0:row0+h, col0:col0+w]``; outside the map: zeros, invalid."""
        rgb = np.zeros((h, w, 3), np.uint8)
        valid = np.zeros((h, w), np.uint8)
        c0, r0 = max(col0, 0), max(row0, 0)
        c1, r1 = min(col0 + w, self.width), min(row0 + h, self.height)
        if c1 <= c0 or r1 <= r0:
            return rgb, valid
        if self.kind == "array":
            rgb[r0 - row0:r1 - row0, c0 - col0:c1 - col0] = self._rgb[r0:r1, c0:c1]
            valid[r0 - row0:r1 - row0, c0 - col0:c1 - col0] = self._valid[r0:r1, c0:c1]
            return rgb, valid
        b = self.block_px
        for br in range(r0 // b, (r1 - 1) // b + 1):
            for bc in range(c0 // b, (c1 - 1) // b + 1):
                block = self._block(br, bc)
                if block is None:
                    continue
                brgb, bval = block
                ys, xs = max(r0, br * b), max(c0, bc * b)
                ye, xe = min(r1, (br + 1) * b), min(c1, (bc + 1) * b)
                rgb[ys - row0:ye - row0, xs - col0:xe - col0] = brgb[ys - br * b:ye - br * b, xs - bc * b:xe - bc * b]
                valid[ys - row0:ye - row0, xs - col0:xe - col0] = bval[ys - br * b:ye - br * b, xs - bc * b:xe - bc * b]
        return rgb, valid

    def _block(self, br: int, bc: int):
        key = (br, bc)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        import cv2

        row = self._db.execute("SELECT rgb, valid FROM blocks WHERE brow=? AND bcol=?", key).fetchone()
        block = None
        if row is not None:
            bgr = cv2.imdecode(np.frombuffer(row[0], np.uint8), cv2.IMREAD_COLOR)
            val = cv2.imdecode(np.frombuffer(row[1], np.uint8), cv2.IMREAD_GRAYSCALE)
            if bgr is None or val is None:
                raise ImageryError(f"{self.path / BLOCKS}: block {key} does not decode; rebuild the database")
            block = (bgr[:, :, ::-1], (val > 127).astype(np.uint8))
        self._cache[key] = block
        if len(self._cache) > 64:
            self._cache.popitem(last=False)
        return block

    def window(self, x: float, y: float, side_m: float, gsd_m: float | None = None) -> Window:
        """A north-up square of about ``side_m`` metres centred on metric (x, y), resampled to ``gsd_m``
        (default: the imagery's own) by area averaging when coarser, bilinear when finer. The window is
        cut on whole native pixels, so its exact grid is in the returned :class:`Window`."""
        import cv2

        if not side_m > 0:
            raise ValueError(f"side_m must be > 0, got {side_m}")
        g = self.gsd_m
        col_c, row_c = (x - self.x0) / g, (self.y0 - y) / g
        n = max(1, int(math.ceil(side_m / g)))
        col0, row0 = int(math.floor(col_c - n / 2)), int(math.floor(row_c - n / 2))
        rgb, valid = self.read_pixels(col0, row0, n, n)
        x0, y0 = self.x0 + col0 * g, self.y0 - row0 * g
        if gsd_m is None or abs(gsd_m / g - 1) < 1e-3:
            return Window(rgb, valid, x0, y0, g)
        m = max(1, int(round(n * g / gsd_m)))
        interp = cv2.INTER_AREA if m < n else cv2.INTER_LINEAR
        rgb = cv2.resize(rgb, (m, m), interpolation=interp)
        valid = (cv2.resize(valid.astype(np.float32), (m, m), interpolation=interp) > 0.99).astype(np.uint8)
        return Window(rgb, valid, x0, y0, n * g / m)


def open_database_imagery(db_or_path) -> MapImagery | None:
    """The imagery of a tile database (a ``TileDatabase`` or its folder), or None when it has none.

    An opened ``TileDatabase`` verified the imagery's files with its own (their hashes are in its
    manifest; ``verify=False`` there checks sizes only), so they are not hashed twice; a folder is
    verified here."""
    path = Path(getattr(db_or_path, "path", db_or_path))
    manifest = getattr(db_or_path, "manifest", None)
    opened = manifest is not None
    if manifest is None and (path / "manifest.json").is_file():
        manifest = json.loads((path / "manifest.json").read_text())
    info = (manifest or {}).get("imagery")
    if not info:
        return None
    folder = path / info.get("dir", IMAGERY_DIR)
    if not opened:
        from tiles.dbcheck import DatabaseError, verify_files

        try:
            verify_files(path, {"imagery": info})
        except DatabaseError as e:
            raise ImageryError(str(e)) from e
    return MapImagery.open(folder, verify=not (opened or info.get("files")))
