"""Write the map imagery that registration reads on board (format: ``tiles.map_imagery``).

The GeoTIFF(s) are resampled onto one north-up grid in their metric CRS at ``gsd_m`` metres per pixel
(block by block through ``GeoRaster.sample_quad``: area-averaged when coarser than the source, reprojected
when the source is geographic), later rasters filling only where earlier ones have no data. The grid is
stored as one memory-mapped array when it is at most ``max_array_mib``, else as JPEG blocks in SQLite.

:func:`imagery_gsd_m` picks the resolution registration needs: the frame at the lowest altitude spread
over ``frame_px`` pixels, never finer than the source (finer is only bigger, not sharper).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common import validate
from common.cli import add_dataclass_options, run_main, setup_logging, with_defaults
from common.options import option, shared
from tiles.io import atomic_write_json, default_mode, file_sha256
from tiles.map_imagery import BLOCKS, FORMAT, FORMAT_VERSION, IMAGERY_DIR, META, RGB, VALID

_log = logging.getLogger(__name__)


def imagery_gsd_m(native_gsd_m: float, min_altitude_m: float, hfov_deg: float, frame_px: int = 512) -> float:
    """Metres per pixel for the imagery: ``max(native, footprint(min altitude) / frame_px)``."""
    from tiles.grid import footprint_m

    return max(float(native_gsd_m), footprint_m(min_altitude_m, hfov_deg) / frame_px)


def _grid(rasters, gsd_m: float):
    crs = {r.metric_crs.to_string() for r in rasters}
    if len(crs) != 1:
        raise ValueError(f"the rasters are in several metric CRS {sorted(crs)}: one imagery holds one; "
                         "build one database per UTM zone")
    b = np.array([r.bounds_m for r in rasters])
    x0, y0 = float(b[:, 0].min()), float(b[:, 3].max())  # on the first raster's pixel corners
    w = int(math.ceil((b[:, 2].max() - x0) / gsd_m))
    h = int(math.ceil((y0 - b[:, 1].min()) / gsd_m))
    return crs.pop(), x0, y0, w, h


def _read_block(rasters, x0, y0, gsd_m, w, h):
    """RGB (h, w, 3) and validity (h, w) of the grid block whose top-left corner is metric (x0, y0)."""
    corners = np.array([[x0, y0], [x0 + w * gsd_m, y0], [x0 + w * gsd_m, y0 - h * gsd_m], [x0, y0 - h * gsd_m]])
    rgb = np.zeros((h, w, 3), np.uint8)
    valid = np.zeros((h, w), np.uint8)
    for r in rasters:
        img, val = r.sample_quad(corners, (w, h))
        fill = (val > 0.99) & (valid == 0)
        rgb[fill] = img[fill]
        valid[fill] = 1
    return rgb, valid


def write_map_imagery(rasters, out_dir, *, gsd_m: float, kind: str = "auto", block_px: int = 512,
                      max_array_mib: float = 256.0, jpeg_quality: int = 90) -> Path:
    """Write the imagery of GeoTIFF(s) (paths or open ``GeoRaster``) into folder ``out_dir`` atomically.

    Resumable: the imagery is written row of blocks by row of blocks into a work folder beside ``out_dir``
    whose name carries a hash of the sources and settings, each row committed before the next; a killed
    write continues at its first unfinished row when called again with the same arguments, and an
    ``out_dir`` already holding this imagery is kept as it is. Files and folders take the user's umask."""
    from tiles.raster import GeoRaster, open_raster

    if kind not in ("auto", "array", "blocks"):
        raise ValueError(f"kind must be 'auto', 'array' or 'blocks', got {kind!r}")
    if not gsd_m > 0:
        raise ValueError(f"gsd_m must be > 0 metres per pixel, got {gsd_m}")
    rasters = [r if isinstance(r, GeoRaster) else open_raster(r)
               for r in ([rasters] if isinstance(rasters, (str, os.PathLike)) else rasters)]
    crs, x0, y0, w, h = _grid(rasters, gsd_m)
    if kind == "auto":
        kind = "array" if w * h * 4 / 2**20 <= max_array_mib else "blocks"
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind, "crs": crs, "gsd_m": gsd_m,
            "origin_xy": [x0, y0], "size_px": [w, h], "block_px": int(block_px),
            "native_gsd_m": min(r.gsd_m for r in rasters),
            "sources": [{"name": r.path.name, "sha256": r.sha256()} for r in rasters]}
    if kind == "blocks":
        meta["jpeg_quality"] = int(jpeg_quality)
    meta["key"] = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]
    out_dir = Path(out_dir)
    if _holds(out_dir, meta["key"]):
        _log.info("map imagery %s is already written (same sources and settings)", out_dir)
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = out_dir.parent / f".{out_dir.name}.work-{meta['key']}"
    work.mkdir(mode=default_mode(directory=True), exist_ok=True)
    os.chmod(work, default_mode(directory=True))  # the folder is renamed into place: the service's user reads it
    _write_rows(rasters, work, meta, gsd_m, w, h)
    meta["files"] = {n: {"bytes": (work / n).stat().st_size, "sha256": file_sha256(work / n)}
                     for n in ((RGB, VALID) if kind == "array" else (BLOCKS,))}
    atomic_write_json(work / META, meta)
    (work / PROGRESS).unlink()
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(work, out_dir)
    _log.info("map imagery %s: %s %dx%d px at %.3g m/px", out_dir, kind, w, h, gsd_m)
    return out_dir


PROGRESS = "progress.json"


def _holds(out_dir: Path, key: str) -> bool:
    """``out_dir`` holds finished imagery of these sources and settings (its files of the recorded sizes)."""
    try:
        meta = json.loads((out_dir / META).read_text())
    except (OSError, ValueError):
        return False
    files = meta.get("files", {})
    return meta.get("key") == key and bool(files) and all(
        (out_dir / n).is_file() and (out_dir / n).stat().st_size == f["bytes"] for n, f in files.items())


def _write_rows(rasters, work: Path, meta: dict, gsd_m: float, w: int, h: int) -> None:
    """Rows of blocks into ``work``, from the first one its progress record says is missing."""
    b, kind = int(meta["block_px"]), meta["kind"]
    done = 0
    if (work / PROGRESS).is_file():
        done = int(json.loads((work / PROGRESS).read_text()).get("rows_done", 0))
    rows = math.ceil(h / b)
    if done:
        _log.info("map imagery: resuming at row of blocks %d of %d in %s", done, rows, work)
    if kind == "array":
        mode = "r+" if done and (work / RGB).is_file() and (work / VALID).is_file() else "w+"
        rgb = np.lib.format.open_memmap(work / RGB, mode, np.uint8, (h, w, 3))
        valid = np.lib.format.open_memmap(work / VALID, mode, np.uint8, (h, w))
        done = done if mode == "r+" else 0
    else:
        db = sqlite3.connect(work / BLOCKS)
        db.execute("CREATE TABLE IF NOT EXISTS blocks (brow INTEGER, bcol INTEGER, rgb BLOB, valid BLOB, "
                   "PRIMARY KEY (brow, bcol))")
    try:
        for br in range(done, rows):
            for bc in range(math.ceil(w / b)):
                bw, bh = min(b, w - bc * b), min(b, h - br * b)
                img, val = _read_block(rasters, meta["origin_xy"][0] + bc * b * gsd_m,
                                       meta["origin_xy"][1] - br * b * gsd_m, gsd_m, bw, bh)
                if kind == "array":
                    rgb[br * b:br * b + bh, bc * b:bc * b + bw] = img
                    valid[br * b:br * b + bh, bc * b:bc * b + bw] = val
                elif val.any():
                    db.execute("INSERT OR REPLACE INTO blocks VALUES (?, ?, ?, ?)",
                               (br, bc, *_encode_block(img, val, b, int(meta.get("jpeg_quality", 90)), (br, bc))))
            if kind == "array":
                rgb.flush()
                valid.flush()
            else:
                db.commit()
            atomic_write_json(work / PROGRESS, {"rows_done": br + 1, "of": rows})
    finally:
        if kind == "array":
            del rgb, valid
        else:
            db.close()


def _encode_block(img: np.ndarray, val: np.ndarray, b: int, jpeg_quality: int, where) -> tuple[bytes, bytes]:
    """A block padded to ``b`` x ``b``: its RGB as JPEG, its validity as PNG."""
    import cv2

    bh, bw = val.shape
    pad = np.zeros((b, b, 3), np.uint8)
    pad[:bh, :bw] = img
    vpad = np.zeros((b, b), np.uint8)
    vpad[:bh, :bw] = val * 255
    ok1, jpg = cv2.imencode(".jpg", pad[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
    ok2, png = cv2.imencode(".png", vpad)
    if not (ok1 and ok2):
        raise RuntimeError(f"OpenCV could not encode block {where}")
    return jpg.tobytes(), png.tobytes()


def attach_imagery(db_path, rasters, *, gsd_m: float, **kw) -> Path:
    """Write the imagery into ``<db_path>/imagery`` and record it in the database manifest, with the size
    and sha256 of each of its files (``TileDatabase.open`` verifies them as it verifies the arrays).

    The folder lands first and the manifest (rewritten atomically) names it last, so an interrupted
    attach leaves a database that still opens, retrieval only, and says its imagery is missing; calling
    this again (or re-running the export) completes it."""
    db_path = Path(db_path)
    mpath = db_path / "manifest.json"
    if not mpath.is_file():
        raise FileNotFoundError(f"{db_path} is not a tile database (no manifest.json); build it first")
    out = write_map_imagery(rasters, db_path / IMAGERY_DIR, gsd_m=gsd_m, **kw)
    meta = json.loads((out / META).read_text())
    files = {META: {"bytes": (out / META).stat().st_size, "sha256": file_sha256(out / META)}, **meta["files"]}
    manifest = json.loads(mpath.read_text())
    manifest["imagery"] = {"dir": IMAGERY_DIR, "kind": meta["kind"], "gsd_m": meta["gsd_m"],
                           "size_px": meta["size_px"], "bytes": sum(f["bytes"] for f in files.values()),
                           "files": files}
    atomic_write_json(mpath, manifest)
    return out


def attach_to_database(db_path, rasters, *, imagery_px: int = 512, gsd_m: float | None = None, **kw) -> Path:
    """Give an existing tile database its imagery, at ``gsd_m`` or the resolution its lowest layer needs
    (``imagery_gsd_m`` from the manifest's altitudes and hfov)."""
    from tiles.raster import open_raster

    mpath = Path(db_path) / "manifest.json"
    if not mpath.is_file():
        raise FileNotFoundError(f"{db_path} is not a tile database (no manifest.json); build it with "
                                "`python -m export ... --tiles MAP.tif`")
    manifest = json.loads(mpath.read_text())
    rasters = [open_raster(r) for r in rasters]
    if gsd_m is None:
        alts = [lay["altitude_m"] for lay in manifest["layers"] if lay.get("altitude_m")]
        hfov = manifest.get("extra", {}).get("hfov_deg") or manifest["layers"][0].get("hfov_deg")
        if not alts or not hfov:
            raise ValueError(f"{db_path} records no altitude/hfov (a gallery database?): give gsd_m (--gsd)")
        gsd_m = imagery_gsd_m(min(r.gsd_m for r in rasters), min(alts), hfov, imagery_px)
    return attach_imagery(db_path, rasters, gsd_m=gsd_m, **kw)


@dataclass
class ImageryOptions:
    db: str | None = option(None, "tile database folder (built by python -m export)", positional=True)
    tiles: list[str] | None = option(None, "the GeoTIFF(s) the database was cut from", positional=True)
    imagery_px: int = shared("imagery_px")
    gsd: float | None = option(None, "metres per pixel (overrides --imagery-px)", check=validate.positive_rule("m/px"))


def build_parser():
    import argparse

    ap = argparse.ArgumentParser(prog="python -m export.map_imagery",
                                 description="Add the map imagery registration needs to an existing tile database "
                                             "(resumable: a killed run continues where it stopped).")
    add_dataclass_options(ap, ImageryOptions)
    return ap


def main(argv=None) -> int:
    args = with_defaults(build_parser().parse_args(argv), ImageryOptions)
    setup_logging()
    return run_main(_attach, args, logger_name="export.map_imagery")


def _attach(args) -> int:
    print(attach_to_database(args.db, args.tiles, imagery_px=args.imagery_px, gsd_m=args.gsd))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
