"""The hard flights, through the service's own Localizer: a kidnapping, flights off the map, frames of nothing.

    python -m tools.eval_flights --bundle B --db DB [--years 2016 2020] [--altitudes 150 200 250 300]
        [--frames 60] [--out DIR] [--set KEY=VALUE ...] [--no-compass]

Per year and altitude (held-out years only: 2016, 2020), against the 2018 map's database:

- ``kidnap``: a flight whose second half is another flight over the same map (the drone is carried
  elsewhere between two frames): the posterior must spread, trust must drop, and it must re-converge;
- ``offmap``: a flight over the eastern part of the area against the western half of the database (the
  map does not hold where the drone is): no trusted fix may be more than a footprint off;
- ``nothing``: noise and uniform frames: never a trusted fix.

Every frame goes through :func:`runtime.replay.geotiff.replay_flight` (the Localizer the service runs);
figures per flight come from :func:`runtime.replay.figures.flight_figures`. ``--set`` changes a
:class:`runtime.localisation.localizer.LocalizerConfig` field (e.g. ``--set verify_lock=false``); ``--no-compass``
flies without the compass heading (the heading then comes from registration, :mod:`runtime.localisation.heading_track`).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from common import validate
from common.cli import options_parser, parse_options
from common.options import DEFAULT_ALTITUDES_M, option, shared
from tools.demo import naip

log = logging.getLogger("eval_flights")


def _config(pairs):
    from runtime.localisation.localizer import LocalizerConfig

    values = {}
    for p in pairs:
        k, v = p.split("=", 1)
        values[k] = {"true": True, "false": False}.get(v.lower(), v)
        if isinstance(values[k], str):
            values[k] = float(v) if "." in v else int(v) if v.isdigit() else v
    return LocalizerConfig(**values)


def _cases(years, altitudes, frames: int, hfov: float, west_db):
    from runtime.replay.flights import GeoTiffFlight, Kidnapping, curve_waypoints, frames_of_nothing
    from tiles.raster import open_raster

    common = dict(hfov_deg=hfov, speed_mps=40.0, fps=1.0, photometric=0.3, max_frames=frames)
    for year in years:
        for alt in altitudes:
            a = GeoTiffFlight(naip(year), alt, pattern="curve", seed=year, **common)
            b = GeoTiffFlight(naip(year), alt, pattern="curve", seed=year + 7, **common)
            yield f"{year}_{alt}_kidnap", "full", Kidnapping(a, b, frames // 2), True
            fp = 2 * alt * np.tan(np.radians(hfov / 2))
            xe = float(np.asarray(west_db.entries["x"]).max()) + 1.5 * fp
            with open_raster(naip(year)) as r:
                bnd = r.bounds_m
            wp = curve_waypoints((xe, bnd[1], bnd[2], bnd[3]), margin_m=0.75 * fp, seed=year)
            yield f"{year}_{alt}_offmap", "west", GeoTiffFlight(naip(year), alt, waypoints=wp, seed=year, **common), True
    for alt in altitudes:
        yield f"nothing_{alt}", "full", frames_of_nothing(frames, float(alt), int(alt)), False


@dataclass
class Options:
    """Defaults of the shared sizes here: --frames 60 (per flight)."""

    bundle: str | None = shared("bundle", required=True)
    db: str | None = shared("db", required=True)
    years: list[int] = option([2016, 2020], "held-out NAIP years the flights are rendered from",
                              check=validate.int_rule(1900, 2100))
    altitudes_m: list[float] | None = shared("altitudes_m")
    frames: int | None = shared("frames")
    precision: str = shared("precision")
    out: str = option("runs/eval_flights", "folder for the results")
    set: list[str] = shared("set")
    compass: bool = shared("compass")


def build_parser() -> argparse.ArgumentParser:
    return options_parser(Options, __doc__)


def main(argv=None) -> int:
    args = parse_options(build_parser(), argv, Options, altitudes_m=list(DEFAULT_ALTITUDES_M), frames=60)
    args.out = Path(args.out)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if set(args.years) & {2010, 2012, 2014, 2018}:
        raise SystemExit("evaluate on the held-out years only (2016, 2020)")

    from export.calibration_flights import half_database
    from runtime.engines.engine import load_engine
    from runtime.localisation.camera_view import database_hfov
    from runtime.localisation.localizer import Localizer
    from runtime.replay.figures import flight_figures
    from runtime.replay.geotiff import replay_flight
    from tiles.db import TileDatabase

    cfg = _config(args.set)
    engine = load_engine(args.bundle, precision=args.precision)
    db = TileDatabase.open(args.db)
    args.out.mkdir(parents=True, exist_ok=True)
    west_path = half_database(db, args.out / "west_db")
    dbs = {"full": db, "west": TileDatabase.open(west_path)}
    rows, t0 = [], time.perf_counter()
    for key, which, frames, has_truth in _cases(args.years, args.altitudes_m, args.frames, database_hfov(db),
                                                 dbs["west"]):
        recs = replay_flight(Localizer(engine, dbs[which], cfg), frames, compass=args.compass)
        if not has_truth:
            for r in recs:
                r["in_map"] = False
        fig = flight_figures(recs)
        errs = [r["error_m"] for r in recs if r["trusted"] and r["error_m"] is not None]
        fig.update(flight=key, frames=len(recs), error_median_m=float(np.median(errs)) if errs else None)
        rows.append(fig)
        log.info("%s: %s", key, fig)
    out = {"bundle": args.bundle, "db": args.db, "compass": args.compass, "localizer": asdict(cfg), "flights": rows,
           "wall_s": round(time.perf_counter() - t0, 1)}
    (args.out / "eval_flights.json").write_text(json.dumps(out, indent=1, default=str))
    print(f"{'flight':>20} | {'trusted':>7} {'wrong':>5} {'avail':>6} {'ttff':>5} {'err med':>8}")
    for r in rows:
        print(f"{r['flight']:>20} | {r['trusted']:>7} {r['wrong_trusted']:>5} {str(r['availability_pct']):>6} "
              f"{str(r['ttff_frames']):>5} {str(r['error_median_m'] and round(r['error_median_m'], 1)):>8}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
