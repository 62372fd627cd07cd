"""``python -m runtime replay {sues200,geotiff}``: the command line of the offline evaluation."""

from __future__ import annotations

import argparse
import logging
import os

from common.cli import add_dataclass_options, dataclass_values
from runtime.localisation.config import LocalizerConfig, add_localizer_options
from runtime.outputs.settings import OutputConfig
from runtime.replay.geotiff import FlightSpec

log = logging.getLogger(__name__)


def add_replay_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m runtime replay {sues200,geotiff} ...``."""
    sub = parser.add_subparsers(dest="replay_kind", required=True)

    def common(p):
        p.add_argument("--bundle", required=True, help="model bundle folder (python -m export)")
        p.add_argument("--out", default=None, help="folder for JSON, CSV and PNG results")
        p.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "int8"))
        p.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "tensorrt"))
        p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
        p.add_argument("--altitudes-m", "--altitudes", dest="altitudes_m", type=float, nargs="+", default=None,
                       help="altitudes in metres (default: every layer of the database / altitude of the data)")
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

    g = sub.add_parser("geotiff", help="flights rendered over a GeoTIFF through the service's Localizer")
    common(g)
    g.add_argument("--map", required=True, help="reference GeoTIFF (the tile database's map)")
    g.add_argument("--db", default=None,
                   help="required: the tile database of --map, built by `python -m export --bundle B --tiles MAP "
                        "--altitudes-m 150 200 250 300 --hfov-deg 60 --db-out DB`")
    g.add_argument("--flight-raster", default=None, help="GeoTIFF the frames are rendered from (default: --map)")
    add_dataclass_options(g, FlightSpec, group="the rendered flights")
    add_localizer_options(g)
    rec = g.add_argument_group("autopilot recordings (--record-autopilot)")
    rec.add_argument("--record-autopilot", action="store_true",
                     help="per flight under --out: the byte streams the autopilot outputs would send, timed on the "
                          "flight's clock (mavlink.tlog, mavlink_odometry.tlog, gnss_ubx.cap, gnss_nmea.cap), "
                          "with the output settings below")
    add_dataclass_options(rec, OutputConfig)


def run_replay(args: argparse.Namespace) -> int:
    """Entry point of ``python -m runtime replay``: run, write results, print the table; 0 on success."""
    from common.sues200_layout import SUES200LayoutError
    from runtime.engines.bundle import BundleError
    from runtime.replay.geotiff import autopilot_table, geotiff_table, replay_geotiff
    from runtime.replay.sues200 import replay_sues200, sues200_table
    from tiles.db import DatabaseError

    try:
        if args.replay_kind == "sues200":
            res = replay_sues200(
                args.data, args.bundle, altitudes=args.altitudes_m, db=args.db, out_dir=args.out,
                batch_size=args.batch_size, directions=("drone2sat", "sat2drone") if args.sat2drone else ("drone2sat",),
                latency_frames=args.latency_frames, plots=not args.no_plots, precision=args.precision,
                backend=args.backend, threads=args.threads)
            print(sues200_table(res))
        else:
            rec = None
            if args.record_autopilot:
                rec = OutputConfig(**dataclass_values(OutputConfig, args))
                rec.check_outputs()
            res = replay_geotiff(
                args.bundle, args.map, flight_raster=args.flight_raster, altitudes=args.altitudes_m, db=args.db,
                out_dir=args.out, hfov_deg=args.hfov_deg,
                localizer=LocalizerConfig(**dataclass_values(LocalizerConfig, args)),
                plots=not args.no_plots, precision=args.precision, backend=args.backend, threads=args.threads,
                record_autopilot=rec, **dataclass_values(FlightSpec, args))
            print(geotiff_table(res))
            if rec is not None:
                print(autopilot_table(res))
    except (SUES200LayoutError, BundleError, DatabaseError, FileNotFoundError, ValueError) as e:
        log.error("%s", str(e).splitlines()[0] if str(e) else type(e).__name__)
        return 2
    if res.get("files"):
        print("results: " + ", ".join(os.fspath(v) for v in res["files"].values()))
    return 0

