"""``python -m runtime replay {sues200,geotiff}``: the command line of the offline evaluation.

Every option comes from a dataclass (:class:`ReplayOptions`, :class:`Sues200Options`, :class:`GeotiffOptions`,
the engine's :class:`common.options.EngineOptions`, the flights' :class:`runtime.replay.geotiff.FlightSpec`
and the chain's :class:`LocalizerConfig`), range-checked where it is parsed.

``--out`` holds this run's files only: a folder that holds an earlier replay's results has them removed
first, a folder holding anything else is refused. The results are written after each flight, so a replay
stopped by SIGTERM or Ctrl-C keeps the flights it finished (and exits 143 or 130).
"""

from __future__ import annotations

import argparse
import fnmatch
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from common import validate
from common.cli import (
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    Terminated,
    add_dataclass_options,
    dataclass_values,
    sigterm_raises,
    with_defaults,
)
from common.options import EngineOptions, option, shared
from runtime.localisation.config import LocalizerConfig, add_localizer_options
from runtime.outputs.settings import OutputConfig
from runtime.replay.geotiff import FlightSpec

log = logging.getLogger(__name__)

# what a replay writes into --out (and nothing else may be there when it starts)
RESULT_FILES = ("replay_geotiff.json", "replay_geotiff_frames.csv", "replay_geotiff_summary.csv", "track_*m.png",
                "error_*m.png", "geotiff_altitudes.png", "reliability.png", "replay_sues200.json",
                "replay_sues200.csv", "sues200_r1.png")


@dataclass
class ReplayOptions:
    """The options of both replays."""

    bundle: str | None = shared("bundle", required=True)
    out: str | None = option(None, "folder for the JSON, CSV and PNG results; it holds this run's files only (an "
                                   "earlier replay's are replaced; a folder holding other files is refused)")
    altitudes_m: list[float] | None = shared("altitudes_m")
    plots: bool = option(True, "write the PNG plots (--no-plots: skip them)")


@dataclass
class Sues200Options:
    data: str | None = option(None, "SUES-200 root (raw archive or split layout)", required=True)
    db: str | None = shared("db")
    batch_size: int | None = shared("batch_size")
    sat2drone: bool = option(False, "also evaluate satellite->drone")
    latency_frames: int = option(20, "frames timed one by one (batch 1)", check=validate.int_rule(0))


@dataclass
class GeotiffOptions:
    map: str | None = shared("map", required=True)
    db: str | None = shared("db")
    flight_raster: str | None = shared("flight_raster")
    record_autopilot: bool = option(False, "per flight under --out: the byte streams the autopilot outputs would "
                                           "send, timed on the flight's clock (mavlink.tlog, mavlink_odometry.tlog, "
                                           "gnss_ubx.cap, gnss_nmea.cap), with the output settings of their group")


def add_replay_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m runtime replay {sues200,geotiff} ...``."""
    sub = parser.add_subparsers(dest="replay_kind", required=True)
    s = sub.add_parser("sues200", help="SUES-200 (raw or split layout): retrieval per altitude")
    g = sub.add_parser("geotiff", help="flights rendered over a GeoTIFF through the service's Localizer")
    for p, own in ((s, Sues200Options), (g, GeotiffOptions)):
        add_dataclass_options(p, ReplayOptions)
        add_dataclass_options(p, own)
        add_dataclass_options(p, EngineOptions, group="the engine")
    add_dataclass_options(g, FlightSpec, group="the rendered flights")
    add_localizer_options(g)
    add_dataclass_options(g, OutputConfig, group="autopilot recordings (--record-autopilot)")


def prepare_out(out: str | os.PathLike | None) -> None:
    """Make ``--out`` hold only this run's files: an earlier replay's results are removed; anything else
    there is refused (a ValueError naming it), before any work."""
    if out is None:
        return
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file: give a folder for the results")
    if not out.is_dir():
        return
    entries = list(out.iterdir())
    foreign = [e.name for e in entries if not (e.is_file() and any(fnmatch.fnmatch(e.name, p) for p in RESULT_FILES))]
    if foreign:
        raise ValueError(f"--out {out} holds {foreign[0]!r}{f' and {len(foreign) - 1} more' if len(foreign) > 1 else ''}, "
                         "which no replay wrote: give a new or empty folder (a results folder holds one run's files)")
    for e in entries:
        e.unlink()
    if entries:
        log.info("removed %d files of an earlier replay from %s", len(entries), out)


def run_replay(args: argparse.Namespace) -> int:
    """Entry point of ``python -m runtime replay``: run, write results, print the table; 0 on success."""
    with sigterm_raises():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from runtime.replay.geotiff import replay_geotiff
    from runtime.replay.sues200 import replay_sues200, sues200_table
    from runtime.replay.tables import autopilot_table, geotiff_table

    with_defaults(args, ReplayOptions, EngineOptions, Sues200Options if args.replay_kind == "sues200" else
                  GeotiffOptions)
    engine = dict(precision=args.precision, backend=args.backend, threads=args.threads)
    if getattr(args, "batch_size", 0) is None:
        args.batch_size = 32
    if args.replay_kind == "geotiff":  # every value is checked before the results folder is touched
        localizer = LocalizerConfig(**dataclass_values(LocalizerConfig, args))
        flight = FlightSpec(**dataclass_values(FlightSpec, args))
        rec = None
        if args.record_autopilot:
            rec = OutputConfig(**dataclass_values(OutputConfig, args))
            rec.check_outputs()
    prepare_out(args.out)
    try:
        if args.replay_kind == "sues200":
            res = replay_sues200(
                args.data, args.bundle, altitudes=args.altitudes_m, db=args.db, out_dir=args.out,
                batch_size=args.batch_size, directions=("drone2sat", "sat2drone") if args.sat2drone else ("drone2sat",),
                latency_frames=args.latency_frames, plots=args.plots, **engine)
            print(sues200_table(res))
        else:
            res = replay_geotiff(
                args.bundle, args.map, flight_raster=args.flight_raster, altitudes=args.altitudes_m, db=args.db,
                out_dir=args.out, hfov_deg=args.hfov_deg, localizer=localizer, plots=args.plots, **engine,
                record_autopilot=rec, **vars(flight))
            print(geotiff_table(res))
            if rec is not None:
                print(autopilot_table(res))
    except (KeyboardInterrupt, Terminated) as e:
        kept = f"; the flights it finished are in {args.out}" if args.out and Path(args.out).is_dir() else ""
        log.error("stopped by %s%s", "SIGTERM" if isinstance(e, Terminated) else "Ctrl-C", kept)
        return EXIT_TERMINATED if isinstance(e, Terminated) else EXIT_INTERRUPTED
    if res.get("files"):
        print("results: " + ", ".join(os.fspath(v) for v in res["files"].values()))
    return 0
