"""`python -m tiles`: look at a map before spending GPU time on it.

    python -m tiles describe MAP.tif
    python -m tiles describe-db DB [--json]     (a tile database: size, layers, memory footprint;
                                                 measured by the runtime: python -m runtime check --db DB)
    python -m tiles preview MAP.tif --altitude-m 150 [--hfov-deg 60] [--stride-frac 0.5] [--out grid.png]
    python -m tiles view MAP.tif --lat 47.02 --lon -99.15 --altitude-m 150 [--hfov-deg 60] [--heading-deg 30] [--out view.png]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common import validate
from common.cli import add_dataclass_options, with_defaults
from common.options import DEFAULT_HFOV_DEG, option, shared
from tiles.grid import footprint_m, grid_counts, tile_grid
from tiles.mapcheck import coarse_map_warning
from tiles.raster import RasterError, open_raster, square_corners
from tiles.views import CameraPose, render_view


@dataclass
class DescribeOptions:
    raster: str | None = option(None, "the GeoTIFF", positional=True)
    json: bool = shared("json")


@dataclass
class DescribeDbOptions:
    db: str | None = option(None, "the tile database folder", positional=True)
    json: bool = shared("json")


@dataclass
class PreviewOptions:
    raster: str | None = option(None, "the GeoTIFF", positional=True)
    altitude_m: float | None = shared("altitude_m", required=True)
    hfov_deg: float | None = shared("hfov_deg")
    stride_frac: float = shared("stride_frac")
    min_valid: float = option(0.9, "share of a tile's pixels that must hold data for the tile to be kept",
                              check=validate.fraction_rule(zero_ok=True))
    max_side: int = option(1400, "preview size in pixels", check=validate.int_rule(64, 20000))
    out: str | None = option(None, "PNG to write (default: <map>_grid_<altitude>m.png)")


@dataclass
class ViewOptions:
    raster: str | None = option(None, "the GeoTIFF", positional=True)
    lat: float | None = option(None, "WGS84 latitude of the camera", required=True, check=validate.range_rule(
        None, None))
    lon: float | None = option(None, "WGS84 longitude of the camera", required=True, check=validate.range_rule(
        None, None))
    altitude_m: float | None = shared("altitude_m", required=True)
    hfov_deg: float | None = shared("hfov_deg")
    heading_deg: float | None = shared("heading_deg")
    tilt_deg: float = shared("tilt_deg")
    size: int = shared("size")
    out: str | None = option(None, "PNG to write (default: view.png)")


COMMANDS = {"describe": (DescribeOptions, "CRS, resolution, size on the ground, valid fraction"),
            "describe-db": (DescribeDbOptions, "a tile database: rows, layers, indexes, memory footprint"),
            "preview": (PreviewOptions, "draw the tile grid for an altitude over the map (PNG)"),
            "view": (ViewOptions, "render the drone camera view at a position (PNG)")}


def _describe(args) -> int:
    with open_raster(args.raster) as r:
        d = r.describe()
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    print(f"{d['path']}")
    print(f"  CRS            {d['crs']} (ground geometry in {d['metric_crs']})")
    print(f"  size           {d['size_px'][0]} x {d['size_px'][1]} px, {d['bands']} bands {d['dtype']}, "
          f"colour from bands {d['rgb_bands']}" + (f", alpha band {d['alpha_band']}" if d["alpha_band"] else ""))
    print(f"  resolution     {d['gsd_m']} m/px")
    print(f"  on the ground  {d['extent_m'][0]:.0f} x {d['extent_m'][1]:.0f} m")
    print(f"  WGS84 bounds   lat {d['bounds_wgs84'][0]}..{d['bounds_wgs84'][2]}, "
          f"lon {d['bounds_wgs84'][1]}..{d['bounds_wgs84'][3]}")
    print(f"  valid          {100 * d['valid_fraction']:.1f}% (nodata={d['nodata']})")
    return 0


def _preview(args) -> int:
    import cv2

    fp = footprint_m(args.altitude_m, args.hfov_deg)
    stride = fp * args.stride_frac
    with open_raster(args.raster) as r:
        if warning := coarse_map_warning(r, fp, args.altitude_m):
            logging.getLogger("tiles").warning("%s", warning)
        tiles = tile_grid(r, fp, stride, args.min_valid, progress=True)
        ncols, nrows = grid_counts(*r.extent_m, fp, stride)
        rgb, valid, factor = r.overview(args.max_side)
        img = np.ascontiguousarray(rgb[:, :, ::-1])
        img[valid == 0] = (img[valid == 0] * 0.3).astype(np.uint8)
        fy = r.height / rgb.shape[0]
        # every centre as a dot; outlines only for a non-overlapping subset, so squares stay readable
        k = max(1, round(fp / stride))
        for t in tiles:
            pc, pr = r.metric_to_pixel(t.x, t.y)
            cv2.circle(img, (round(pc / factor), round(pr / fy)), 2, (0, 255, 255), -1, cv2.LINE_AA)
            if t.row % k == 0 and t.col % k == 0:
                c = square_corners(t.x, t.y, fp)
                qc, qr = r.metric_to_pixel(c[:, 0], c[:, 1])
                pts = np.round(np.stack([qc / factor, qr / fy], 1)).astype(np.int32)
                cv2.polylines(img, [pts], True, (255, 160, 0), 1, cv2.LINE_AA)
        label = (f"{args.altitude_m:g} m, hfov {args.hfov_deg:g} deg: tile {fp:.0f} m, stride {stride:.0f} m, "
                 f"{len(tiles)} tiles ({ncols}x{nrows} grid, {ncols * nrows - len(tiles)} skipped); "
                 "dots: tile centres, squares: every tile footprint without overlap")
        cv2.rectangle(img, (0, 0), (img.shape[1], 22), (0, 0, 0), -1)
        cv2.putText(img, label, (5, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    out = Path(args.out or f"{Path(args.raster).stem}_grid_{args.altitude_m:g}m.png")
    _write_png(out, img)
    print(label)
    print(f"preview written to {out}")
    return 0


def _inside(r, lat: float, lon: float) -> tuple[float, float]:
    """Metric (x, y) of (lat, lon), which must lie on the raster (a swapped pair is named as such)."""
    def on_map(la, lo):
        x, y = r.from_wgs84(la, lo)
        xmin, ymin, xmax, ymax = r.bounds_m
        return (x, y) if np.isfinite([x, y]).all() and xmin <= x <= xmax and ymin <= y <= ymax else None

    if (xy := on_map(lat, lon)) is not None:
        return xy
    la0, lo0, la1, lo1 = r.describe()["bounds_wgs84"]
    swapped = abs(lon) <= 90 and on_map(lon, lat) is not None
    hint = ("; --lat and --lon look swapped" if swapped
            else "; give a position on the map (see `python -m tiles describe`)")
    raise ValueError(f"lat {lat}, lon {lon} is outside {r.path.name} (lat {la0}..{la1}, lon {lo0}..{lo1}){hint}")


def _view(args) -> int:
    lat, lon = validate.lat_lon(args.lat, args.lon)
    with open_raster(args.raster) as r:
        x, y = _inside(r, lat, lon)
        pose = CameraPose(x, y, args.altitude_m, args.heading_deg, args.tilt_deg, args.hfov_deg)
        v = render_view(r, pose, (args.size, args.size))
    out = Path(args.out or "view.png")
    _write_png(out, v.image[:, :, ::-1])
    print(f"view at lat {args.lat}, lon {args.lon} ({x:.1f}, {y:.1f} m), {args.altitude_m:g} m: "
          f"{100 * v.valid_fraction:.0f}% on the map; written to {out}")
    return 0


def _describe_db(args) -> int:
    from tiles.db import TileDatabase
    from tiles.db_footprint import memory_footprint

    db = TileDatabase.open(args.db)
    fp = memory_footprint(db)
    if args.json:
        print(json.dumps(fp, indent=2))
        return 0
    mb = 2**20
    ann = db.manifest.get("ann")
    print(f"{db.path}")
    print(f"  rows           {fp['rows']} in {len(db.layers)} layers, {fp['embedding_dim']}-d {fp['dtype']} "
          f"({fp['bytes_per_row']} B a row), CRS {db.crs}")
    for lay in db.layers:
        print(f"  layer {lay['name']:<8} {lay['count']} rows" + (f", footprint {lay['footprint_m']:.0f} m"
                                                               if lay.get("footprint_m") else ""))
    print(f"  spatial grid   {'yes' if db.spatial_index is not None else 'no (radius search scans the layer)'}")
    print("  ANN index      " + (f"{ann['kind']} on {sum(1 for x in ann['layers'] if x)} layer(s), nprobe "
                                 f"{ann['nprobe']}, re-rank {ann['rerank']}" if ann else "none (global search is exact)"))
    print(f"  on disk        {fp['disk_bytes'] / mb:.1f} MB: " +
          ", ".join(f"{k} {v / mb:.1f}" for k, v in fp["files"].items()))
    r = fp["resident_bytes"]
    print(f"  resident       local search {r['local'] / mb:.1f} MB, + approximate global {r['approximate'] / mb:.1f}"
          f" MB, exact global {r['exact'] / mb:.1f} MB (memory-mapped: pages touched; see tiles.db_footprint.memory_footprint)")
    return 0


def _write_png(path: Path, bgr: np.ndarray) -> None:
    import cv2

    from tiles.io import atomic_write_bytes

    ok, buf = cv2.imencode(".png", bgr)
    if not ok:
        raise RuntimeError(f"could not encode {path}")
    try:
        atomic_write_bytes(path, buf.tobytes())
    except OSError as e:  # a one-line error, not a traceback: the folder or the disk is the user's to fix
        raise ValueError(f"cannot write {path}: {e.strerror}; choose another --out") from e


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m tiles", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, (options, helptext) in COMMANDS.items():
        add_dataclass_options(sub.add_parser(name, help=helptext), options)
    return ap


def main(argv=None) -> int:
    logging.getLogger("rasterio").setLevel(logging.WARNING)  # GDAL chatter; its errors are explained as ours
    args = build_parser().parse_args(argv)
    with_defaults(args, COMMANDS[args.cmd][0])
    if getattr(args, "hfov_deg", "absent") is None:
        args.hfov_deg = DEFAULT_HFOV_DEG
    if getattr(args, "heading_deg", "absent") is None:
        args.heading_deg = 0.0  # a rendered view faces north unless told
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return {"describe": _describe, "describe-db": _describe_db, "preview": _preview, "view": _view}[args.cmd](args)
    except (RasterError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
