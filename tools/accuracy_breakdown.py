"""Why the reported radius holds the truth as often as it does: calibration years against held-out years.

    python -m tools.accuracy_breakdown --bundle B --db DB [--calib-years 2010 2012 2014]
        [--held-out-years 2016 2020] [--height-sigma-m 3] [--out result.json]

Flies the export's calibration flights (:mod:`export.calibration_flights`: 40 frames per year and layer)
rendered from the calibration years, and 60-frame flights rendered from the held-out years, through the
Localizer with the reported radius unscaled; fits the radius's scale on the calibration flights as the
export does (:func:`export.calibrate_accuracy.fit_fix_scale`), and reports per flight the trusted fixes'
error (median, largest, its constant part: the mean east/north offset) against the radius, and the share of
held-out fixes inside the radius at 50, 68 and 95 % (the Gaussian radii of the reported r95). Each trusted
fix's error is that of the registration that last moved the track (rendered frames: the odometry carries it
almost without drift), and the radius is the registration's plus what the height's uncertainty
(``--height-sigma-m``) does to the ground carried since.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.cli import options_parser, parse_options
from common.options import option, shared
from runtime.localisation.config import LocalizerConfig
from runtime.localisation.geo import R95_PER_SIGMA

_HEIGHT = {f.name: f for f in dataclasses.fields(LocalizerConfig)}["height_sigma_m"]  # one definition
LEVELS = {"r50": 0.50, "r68": 0.32, "r95": 0.05}  # the probability outside each radius (1 - nominal)


@dataclass
class Options:
    bundle: str = shared("bundle", required=True)
    db: str = shared("db", required=True)
    calib_years: list[int] = option([2010, 2012, 2014], "years of data/naip the scale is fitted on")
    held_out_years: list[int] = option([2016, 2020], "years of data/naip measured")
    height_sigma_m: float = dataclasses.field(default=_HEIGHT.default, metadata=_HEIGHT.metadata)  # the Localizer's
    out: str | None = option(None, "write the result as JSON here")


def build_parser() -> argparse.ArgumentParser:
    return options_parser(Options, __doc__, "python -m tools.accuracy_breakdown")


def fly_years(engine, db, cfg, years, frames: int, seed: int) -> list[dict]:
    from export.calibration_flights import embed_flights, fly, render_flights
    from tools.demo import naip

    rasters = [naip(y) for y in years]
    flights = embed_flights(engine, db, cfg, render_flights(db, rasters, hfov_deg=cfg.hfov_deg, frames=frames,
                                                            seed=seed))
    return [r for f in flights for r in fly(engine, db, f, cfg, fix_r95_scale=1.0)]


def per_flight(records: list[dict]) -> dict:
    out = {}
    by = defaultdict(list)
    for r in records:
        if r["trusted"] and r["error_m"] is not None and r["r95_m"]:
            by[r["flight"]].append(r)
    for name, rs in by.items():
        e = np.array([r["error_m"] for r in rs])
        radius = np.array([r["r95_m"] for r in rs])
        dx = np.mean([r["fix_x"] - r["true_x"] for r in rs])
        dy = np.mean([r["fix_y"] - r["true_y"] for r in rs])
        out[name] = {"trusted": len(rs), "error_m_median": round(float(np.median(e)), 1),
                     "error_m_max": round(float(e.max()), 1), "mean_offset_m": round(float(np.hypot(dx, dy)), 1),
                     "r95_unscaled_median": round(float(np.median(radius)), 1),
                     "ratios": [round(float(v), 4) for v in e / radius]}
    return out


def coverage(flights: dict, scale: float) -> dict:
    q = np.concatenate([f["ratios"] for f in flights.values()]) / scale
    # the Gaussian radius holding p, as a share of the reported r95
    return {k: round(100.0 * float(np.mean(q <= math.sqrt(-2.0 * math.log(tail)) / R95_PER_SIGMA)), 1)
            for k, tail in LEVELS.items()}


def main(argv=None) -> int:
    args = parse_options(build_parser(), argv, Options)
    from export.calibrate_accuracy import fit_fix_scale
    from runtime.engines.engine import load_engine
    from runtime.localisation.camera_view import database_hfov
    from tiles.db import TileDatabase

    db = TileDatabase.open(args.db)
    engine = load_engine(args.bundle)
    cfg = LocalizerConfig(hfov_deg=database_hfov(db), height_sigma_m=args.height_sigma_m)
    cal = per_flight(fly_years(engine, db, cfg, args.calib_years, 40, 1000))
    held = per_flight(fly_years(engine, db, cfg, args.held_out_years, 60, 5000))
    scale, why = fit_fix_scale([f["ratios"] for f in cal.values()])
    result = {"command": "python -m tools.accuracy_breakdown " + " ".join(argv or sys.argv[1:]),
              "scale": round(scale, 4), "fit": why, "coverage_pct": {"calibration": coverage(cal, scale),
                                                                     "held_out": coverage(held, scale)},
              "flights": {"calibration": cal, "held_out": held}}
    for part, flights in result["flights"].items():
        for name, f in flights.items():
            print(f"{part:11s} {name:40s} n {f['trusted']:3d}  error median {f['error_m_median']:5.1f} max "
                  f"{f['error_m_max']:5.1f} offset {f['mean_offset_m']:5.1f}  r95 (x scale) "
                  f"{f['r95_unscaled_median'] * scale:5.1f}")
    print(json.dumps({k: v for k, v in result.items() if k != "flights"}, indent=1))
    if args.out:
        from tiles.io import atomic_write_json

        atomic_write_json(Path(args.out), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
