"""``python -m runtime replay {sues200,geotiff}``: the command line of the offline evaluation."""

from __future__ import annotations

import argparse
import logging
import os

import numpy as np

log = logging.getLogger(__name__)


def _waypoints(text: str | None):
    if not text:
        return None
    try:
        pts = [tuple(float(v) for v in p.split(",")) for p in text.split(";") if p.strip()]
    except ValueError as e:
        raise ValueError(f"--waypoints {text!r}: expected 'x,y;x,y;...' in metres of the map's CRS") from e
    if len(pts) < 2 or any(len(p) != 2 for p in pts):
        raise ValueError(f"--waypoints {text!r}: expected at least two 'x,y' points separated by ';'")
    return np.array(pts)


def add_replay_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m runtime replay {sues200,geotiff} ...``."""
    sub = parser.add_subparsers(dest="replay_kind", required=True)

    def common(p):
        p.add_argument("--bundle", required=True, help="model bundle folder (python -m export)")
        p.add_argument("--out", default=None, help="folder for JSON, CSV and PNG results")
        p.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "int8"))
        p.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "tensorrt"))
        p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
        p.add_argument("--altitudes", type=int, nargs="+", default=None, help="altitudes in metres")
        p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")

    s = sub.add_parser("sues200", help="SUES-200 (raw or split layout): retrieval per altitude")
    common(s)
    s.add_argument("--data", required=True, help="SUES-200 root (raw archive or split layout)")
    s.add_argument("--db", default=None,
                   help="gallery database from `python -m export --bundle B --gallery ROOT --gallery-out DB` "
                        "(default: embed the satellite images on the fly)")
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--sat2drone", action="store_true", help="also evaluate satellite->drone")
    s.add_argument("--latency-frames", type=int, default=20, help="frames timed one by one (batch 1)")

    g = sub.add_parser("geotiff", help="flights rendered over a GeoTIFF: error in metres, fix rate")
    common(g)
    g.add_argument("--map", required=True, help="reference GeoTIFF (the tile database's map)")
    g.add_argument("--db", default=None,
                   help="required: the tile database of --map, built by `python -m export --bundle B --tiles MAP "
                        "--altitudes 150 200 250 300 --hfov 60 --db-out DB`")
    g.add_argument("--flight-raster", default=None, help="GeoTIFF the frames are rendered from (default: --map)")
    g.add_argument("--hfov-deg", type=float, default=60.0)
    g.add_argument("--pattern", default="curve", choices=("curve", "lawnmower", "line"))
    g.add_argument("--waypoints", default=None, help="'x,y;x,y;...' in metres (overrides --pattern)")
    g.add_argument("--speed-mps", type=float, default=15.0)
    g.add_argument("--fps", type=float, default=1.0)
    g.add_argument("--size-px", type=int, default=256, help="rendered frame side in pixels")
    g.add_argument("--tilt-deg", type=float, default=0.0)
    g.add_argument("--no-derotate", dest="derotate", action="store_false",
                   help="feed frames as the camera saw them, not turned north-up by their heading")
    g.add_argument("--photometric", type=float, default=None, help="appearance change strength (e.g. 0.5)")
    g.add_argument("--max-frames", type=int, default=None)
    g.add_argument("--k", type=int, default=5, help="top-k tiles per frame")
    g.add_argument("--radius-m", type=float, default=None, help="search only this far from the last fix")
    g.add_argument("--seed", type=int, default=0)


def run_replay(args: argparse.Namespace) -> int:
    """Entry point of ``python -m runtime replay``: run, write results, print the table; 0 on success."""
    from tiles.db import DatabaseError

    from ..bundle import BundleError
    from .geotiff import geotiff_table, replay_geotiff
    from .sues200 import replay_sues200, sues200_table
    from .sues200_layout import SUES200LayoutError

    try:
        if args.replay_kind == "sues200":
            res = replay_sues200(
                args.data, args.bundle, altitudes=args.altitudes, db=args.db, out_dir=args.out,
                batch_size=args.batch_size, directions=("drone2sat", "sat2drone") if args.sat2drone else ("drone2sat",),
                latency_frames=args.latency_frames, plots=not args.no_plots, precision=args.precision,
                backend=args.backend, threads=args.threads)
            print(sues200_table(res))
        else:
            res = replay_geotiff(
                args.bundle, args.map, flight_raster=args.flight_raster,
                altitudes=args.altitudes or (150, 200, 250, 300), db=args.db, out_dir=args.out,
                hfov_deg=args.hfov_deg, pattern=args.pattern, waypoints=_waypoints(args.waypoints),
                speed_mps=args.speed_mps, fps=args.fps, size_px=args.size_px, tilt_deg=args.tilt_deg,
                derotate=args.derotate,
                photometric=args.photometric, max_frames=args.max_frames, k=args.k, radius_m=args.radius_m,
                seed=args.seed, plots=not args.no_plots,
                precision=args.precision, backend=args.backend, threads=args.threads)
            print(geotiff_table(res))
    except (SUES200LayoutError, BundleError, DatabaseError, FileNotFoundError, ValueError) as e:
        log.error("%s", e)
        return 2
    if res.get("files"):
        print("results: " + ", ".join(os.fspath(v) for v in res["files"].values()))
    return 0

